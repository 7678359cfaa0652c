"""Hedging with real sockets: the sync hedge runs its first try inline and interrupts it when a hedge wins.

respx has no sockets, so under it a sync hedge runs every try on a worker thread
(test_hedge.py); these tests use real servers, where the first try runs in the
caller's thread and a hedge that wins shuts the blocked try's socket down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

import meshlib
from tests.conftest import (
    Caller,
    MakeMesh,
    Receive,
    RunningServer,
    Scope,
    Send,
    StallRecorder,
    echo_app,
    eventually,
    raw_server,
    start_server,
    wait_for,
)

pytestmark = pytest.mark.anyio


def _stats(mesh: meshlib.Mesh) -> dict[str, Any]:
    stats: dict[str, Any] = mesh.stats()["clusters"]["reviews"]
    return stats


def _in_flight(mesh: meshlib.Mesh) -> int:
    return sum(e["in_flight"] for e in _stats(mesh)["endpoints"].values())


@pytest.fixture
def fast() -> Iterator[RunningServer]:
    server = start_server(echo_app("fast"), "fast")
    yield server
    server.stop()


def _hedged(endpoints: list[str], **cluster: Any) -> dict[str, Any]:
    return {"clusters": {"reviews": {"endpoints": endpoints, "hedge": {"after": "50ms"}, **cluster}}}


def test_a_winning_hedge_interrupts_the_inline_try_blocked_in_a_read(make_mesh: MakeMesh, fast: RunningServer) -> None:
    """The first try stalls forever; the hedge answers; the caller gets it at once and the stalled socket closes."""
    stalled = StallRecorder()
    with raw_server(stalled) as slow:
        mesh = make_mesh(
            _hedged(
                [slow.url, fast.url],
                # Both would trip on one failure: the interrupted try must not count as one.
                outlier_detection={"consecutive_5xx": 1, "base_ejection_time": "30s", "max_ejection_percent": 100},
                circuit_breaker={"failure_threshold": 1, "recovery_timeout": "30s"},
            )
        )
        with mesh.client() as client:
            started = time.monotonic()
            response = client.get("http://reviews/x")
            elapsed = time.monotonic() - started
            assert response.status_code == 200
            assert response.json()["name"] == "fast"
            assert elapsed < 1.0  # the stalled server never answers: only the interrupt ends that try
            assert stalled.hung_up.wait(2.0), "the interrupted try's connection was not closed"
            wait_for(lambda: _in_flight(mesh) == 0)
            stats = _stats(mesh)
            assert stats["counters"] == {"hedges": 1, "hedge_wins": 1}
            assert stats["circuit_breaker"]["state"] == "closed"
            assert not any(e["ejected"] for e in stats["endpoints"].values())


def test_the_client_keeps_working_after_interrupts(make_mesh: MakeMesh, fast: RunningServer) -> None:
    """Interrupted connections are dropped from the pool, not reused: every later request succeeds."""
    with raw_server(StallRecorder()) as slow:
        mesh = make_mesh(_hedged([slow.url, fast.url]))
        with mesh.client() as client:
            names = [client.get("http://reviews/x").json()["name"] for _ in range(4)]
        assert names == ["fast"] * 4
        # Round robin moves on twice per request (the first try, the hedge): every first try hits the stall.
        assert _stats(mesh)["counters"] == {"hedges": 4, "hedge_wins": 4}


def test_an_answer_in_time_takes_no_worker_thread(make_mesh: MakeMesh, fast: RunningServer) -> None:
    """Idle hedging is one timer: the first try runs in the caller's thread, no try pool is even created."""
    mesh = make_mesh(_hedged([fast.url]))
    with mesh.client() as client:
        caller_thread = threading.current_thread()
        seen: list[threading.Thread] = []
        inner = client._transport.inner  # type: ignore[attr-defined]
        original = inner.handle_request

        def spy(request: httpx.Request) -> httpx.Response:
            seen.append(threading.current_thread())
            response: httpx.Response = original(request)
            return response

        inner.handle_request = spy
        for _ in range(3):
            assert client.get("http://reviews/x").status_code == 200
    assert seen == [caller_thread] * 3
    assert mesh._runtime.background._try_executor is None
    assert _stats(mesh)["counters"] == {}


def _answer_after(seconds: float, status: int, name: str) -> Any:
    inner = echo_app(name)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await anyio.sleep(seconds)
        if status == 200:
            await inner(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    return app


async def test_when_the_first_try_fails_a_pending_hedge_can_still_win(make_mesh: MakeMesh, caller: Caller) -> None:
    """First try: 503 after 150 ms. Hedge (sent at 50 ms): 200 after 200 ms. The caller gets the hedge's 200."""
    servers = [start_server(_answer_after(0.15, 503, "failing"), "failing")]
    try:
        servers.append(start_server(_answer_after(0.2, 200, "late"), "late"))
        mesh = make_mesh(_hedged([s.url for s in servers]))
        async with caller(mesh) as client:
            response = await client.get("http://reviews/x")
            assert response.status_code == 200
            assert response.json()["name"] == "late"
            await eventually(lambda: _in_flight(mesh) == 0)
        assert _stats(mesh)["counters"] == {"hedges": 1, "hedge_wins": 1}
    finally:
        for server in servers:
            server.stop()


async def test_when_every_try_fails_slowly_the_last_failure_is_returned(make_mesh: MakeMesh, caller: Caller) -> None:
    servers = [start_server(_answer_after(0.1, 503, "first"), "first")]
    try:
        servers.append(start_server(_answer_after(0.15, 502, "second"), "second"))
        mesh = make_mesh(_hedged([s.url for s in servers]))
        async with caller(mesh) as client:
            response = await client.get("http://reviews/x")
            assert response.status_code == 502  # the hedge's, which came last
            await eventually(lambda: _in_flight(mesh) == 0)
        assert _stats(mesh)["counters"] == {"hedges": 1}
    finally:
        for server in servers:
            server.stop()


class ByArrival:
    """Upstreams sharing one count of requests: the n-th request overall waits and answers as ``plan[n - 1]`` says.

    ``seen`` lists the name of the upstream each request reached, in order.
    """

    def __init__(self, plan: list[tuple[float, int]]) -> None:
        self.plan = plan
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def app(self, name: str) -> Any:
        inner = echo_app(name)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return
            with self._lock:
                self.seen.append(name)
                seconds, status = self.plan[len(self.seen) - 1]
            await anyio.sleep(seconds)
            if status == 200:
                await inner(scope, receive, send)
                return
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})

        return app


async def test_a_retry_after_a_failed_hedge_avoids_the_endpoints_of_every_try(
    make_mesh: MakeMesh, caller: Caller
) -> None:
    """First try: 503 after 150 ms; its hedge (sent at 50 ms): 502 after 250 ms, the last failure; then a retry.

    The caller's context learns the failed hedge's try too (its endpoint, and
    the endpoints tried), as after a win: the retry goes to the one endpoint no
    try used. With ring_hash, a retry that knew only the inline try's endpoint
    would walk the ring to where the hedge went.
    """
    upstreams = ByArrival([(0.15, 503), (0.25, 502), (0.0, 200)])
    servers = [start_server(upstreams.app(name), name) for name in ("a", "b", "c")]
    try:
        cluster = {
            "endpoints": [s.url for s in servers],
            "lb": "ring_hash",
            "hash_on": {"header": "x-user"},
            "hedge": {"after": "50ms"},
            "retry": {"attempts": 2, "retry_on": ["5xx"], "backoff": {"base": "1ms", "max": "2ms"}},
        }
        mesh = make_mesh({"clusters": {"reviews": cluster}})
        async with caller(mesh) as client:
            response = await client.get("http://reviews/x", headers={"x-user": "alice"})
            assert response.status_code == 200
            await eventually(lambda: _in_flight(mesh) == 0)
        assert len(upstreams.seen) == 3
        assert len(set(upstreams.seen)) == 3, upstreams.seen
        assert response.json()["name"] == upstreams.seen[2]
        assert _stats(mesh)["counters"] == {"hedges": 1, "retries": 1, "retried_requests": 1}
    finally:
        for server in servers:
            server.stop()
