"""``hedge``: one more try for an idempotent request that has not answered after ``after``; first good answer wins."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
import respx

import meshlib
import meshlib._policies.hedge as hedge_module
from meshlib import UpstreamConnectError
from tests.conftest import (
    Caller,
    MakeMesh,
    Receive,
    RunningServer,
    Scope,
    Send,
    echo_app,
    eventually,
    start_server,
)

pytestmark = pytest.mark.anyio

ENDPOINTS = ["http://127.0.0.1:9081", "http://127.0.0.1:9082", "http://127.0.0.1:9083"]
Handler = Callable[[httpx.Request], Any]


def _config(endpoints: int = 2, after: str = "20ms", max_extra: int = 1, **cluster: Any) -> dict[str, Any]:
    hedge = {"after": after, "max_extra": max_extra}
    return {"clusters": {"reviews": {"endpoints": ENDPOINTS[:endpoints], "hedge": hedge, **cluster}}}


def _counters(mesh: meshlib.Mesh) -> dict[str, int]:
    counters: dict[str, int] = mesh.stats()["clusters"]["reviews"]["counters"]
    return counters


def _in_flight(mesh: meshlib.Mesh) -> int:
    return sum(e["in_flight"] for e in mesh.stats()["clusters"]["reviews"]["endpoints"].values())


def stall_first(seconds: float) -> Callable[[int], float]:
    """How long each port stalls: ``seconds`` for the first port that is called, no time for the others."""
    first: list[int] = []

    def stall(port: int) -> float:
        if not first:
            first.append(port)
        return seconds if port == first[0] else 0.0

    return stall


class Upstream:
    """A respx side effect for the mode under test: after ``stall(port)`` seconds, answer ``status`` or raise.

    ``ports`` lists the ports called, in order.
    """

    def __init__(
        self, mode: str, stall: Callable[[int], float], status: int = 200, error: Exception | None = None
    ) -> None:
        self.mode = mode
        self.stall = stall
        self.status = status
        self.error = error
        self.ports: list[int] = []
        self._lock = threading.Lock()

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if self.error is not None:
            raise self.error
        return httpx.Response(self.status, json={"port": request.url.port})

    def _begin(self, request: httpx.Request) -> float:
        port = request.url.port
        assert port is not None
        with self._lock:
            self.ports.append(port)
            return self.stall(port)

    def sync(self, request: httpx.Request) -> httpx.Response:
        time.sleep(self._begin(request))
        return self._answer(request)

    async def async_(self, request: httpx.Request) -> httpx.Response:
        await anyio.sleep(self._begin(request))
        return self._answer(request)

    @property
    def side_effect(self) -> Handler:
        return self.sync if self.mode == "sync" else self.async_


@pytest.fixture(params=["sync", "async-inline", "async-task-group"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each case once per driver: sync over respx (every try on a thread), and async's two drivers, asyncio's
    inline one and the task-group race other anyio backends use. (Overrides tests/conftest.py's ``mode``.)"""
    if request.param == "async-task-group":
        monkeypatch.setattr(hedge_module, "_inline_possible", lambda: False)
    return "sync" if request.param == "sync" else "async"


def _background_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("meshlib")}


def _other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


async def test_a_stalled_try_is_hedged_to_another_endpoint(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    upstream = Upstream(mode, stall_first(0.3))
    respx_mock.route(host="127.0.0.1").mock(side_effect=upstream.side_effect)
    threads, tasks = _background_threads(), _other_tasks()
    mesh = make_mesh(_config())
    async with caller(mesh) as client:
        started = time.monotonic()
        response = await client.get("http://reviews/x")
        elapsed = time.monotonic() - started
        slow, fast = upstream.ports
        assert elapsed < 0.2  # well under the stalled endpoint's 300 ms
        assert response.json() == {"port": fast}
        assert slow != fast
        assert _counters(mesh) == {"hedges": 1, "hedge_wins": 1}
        # The stalled try's answer is dropped and closed: async cancels it, sync closes it when it comes.
        await eventually(lambda: _in_flight(mesh) == 0)
    mesh.close()
    await eventually(lambda: _background_threads() <= threads and _other_tasks() <= tasks)
    assert upstream.ports == [slow, fast]


async def test_a_fast_answer_sends_no_hedge(make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter) -> None:
    upstream = respx_mock.route(host="127.0.0.1").mock(return_value=httpx.Response(200))
    mesh = make_mesh(_config(after="1s"))
    async with caller(mesh) as client:
        for _ in range(5):
            assert (await client.get("http://reviews/x")).status_code == 200
    assert upstream.call_count == 5
    assert _counters(mesh) == {}
    assert _in_flight(mesh) == 0


@pytest.mark.parametrize("method", ["POST", "PATCH", "PUT-streaming"])
async def test_only_idempotent_requests_with_a_replayable_body_are_hedged(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, mode: str, method: str
) -> None:
    upstream = Upstream(mode, lambda port: 0.06)
    respx_mock.route(host="127.0.0.1").mock(side_effect=upstream.side_effect)
    mesh = make_mesh(_config(after="10ms"))

    def chunks() -> Iterator[bytes]:
        yield b"body"

    async def achunks() -> AsyncIterator[bytes]:
        yield b"body"

    content: Any = b"body"
    if method == "PUT-streaming":
        method, content = "PUT", chunks() if mode == "sync" else achunks()
    async with caller(mesh) as client:
        assert (await client.request(method, "http://reviews/x", content=content)).status_code == 200
    assert len(upstream.ports) == 1
    assert _counters(mesh) == {}


async def test_max_extra_bounds_the_tries_and_each_goes_to_a_new_endpoint(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    upstream = Upstream(mode, lambda port: 0.2)
    respx_mock.route(host="127.0.0.1").mock(side_effect=upstream.side_effect)
    mesh = make_mesh(_config(endpoints=3, after="15ms", max_extra=2))
    async with caller(mesh) as client:
        response = await client.get("http://reviews/x")
        await eventually(lambda: _in_flight(mesh) == 0)
    assert response.status_code == 200
    # Without the bound, tries would go out every 15 ms until the first answer at 200 ms.
    assert len(upstream.ports) == 3
    assert len(set(upstream.ports)) == 3
    assert response.json() == {"port": upstream.ports[0]}  # the first try answered first
    assert _counters(mesh) == {"hedges": 2}


async def test_when_every_try_fails_the_last_failure_is_returned(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    upstream = Upstream(mode, stall_first(0.15), status=503)
    respx_mock.route(host="127.0.0.1").mock(side_effect=upstream.side_effect)
    mesh = make_mesh(_config(after="10ms"))
    async with caller(mesh) as client:
        response = await client.get("http://reviews/x")
    slow, _ = upstream.ports
    # The hedge failed fast; the race waited for the first try, whose 503 came last.
    assert response.status_code == 503
    assert response.json() == {"port": slow}
    assert _counters(mesh) == {"hedges": 1}
    assert _in_flight(mesh) == 0  # the earlier 503 was closed


async def test_when_every_try_raises_the_last_error_is_raised(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    upstream = Upstream(mode, stall_first(0.15), error=httpx.ConnectError("refused"))
    respx_mock.route(host="127.0.0.1").mock(side_effect=upstream.side_effect)
    mesh = make_mesh(_config(after="10ms"))
    async with caller(mesh) as client:
        with pytest.raises(UpstreamConnectError) as caught:
            await client.get("http://reviews/x")
    slow, _ = upstream.ports
    assert str(caught.value).endswith(f"(endpoint http://127.0.0.1:{slow})")  # the stalled try failed last
    assert _counters(mesh) == {"hedges": 1}
    assert _in_flight(mesh) == 0


async def test_a_failure_with_no_other_try_running_ends_the_race_at_once(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    """A fast failure is the retry filter's to judge (with its budget), not a reason to hedge."""
    upstream = respx_mock.route(host="127.0.0.1").mock(return_value=httpx.Response(503))
    mesh = make_mesh(_config(after="1s"))
    async with caller(mesh) as client:
        started = time.monotonic()
        assert (await client.get("http://reviews/x")).status_code == 503
        assert time.monotonic() - started < 0.5  # not held until the hedge was due
    assert upstream.call_count == 1
    assert _counters(mesh) == {}


async def test_a_retry_after_a_failed_hedge_avoids_the_endpoints_of_every_try(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    """The hedge's 502 is the last failure: the caller's context learns its try, so the retry goes to a third endpoint.

    Every driver does so (tests/policies/test_hedge_inline.py has the sync
    inline one). ring_hash walks the ring from one point for every try of a
    request: a retry that knew only the first try's endpoint would go where
    the hedge went.
    """
    plan = iter([(0.15, 503), (0.25, 502), (0.0, 200)])
    ports: list[int] = []
    lock = threading.Lock()

    def begin(request: httpx.Request) -> tuple[float, int]:
        assert request.url.port is not None
        with lock:
            ports.append(request.url.port)
            return next(plan)

    def sync(request: httpx.Request) -> httpx.Response:
        seconds, status = begin(request)
        time.sleep(seconds)
        return httpx.Response(status, json={"port": request.url.port})

    async def async_(request: httpx.Request) -> httpx.Response:
        seconds, status = begin(request)
        await anyio.sleep(seconds)
        return httpx.Response(status, json={"port": request.url.port})

    respx_mock.route(host="127.0.0.1").mock(side_effect=sync if mode == "sync" else async_)
    retry = {"attempts": 2, "retry_on": ["5xx"], "backoff": {"base": "1ms", "max": "2ms"}}
    mesh = make_mesh(_config(endpoints=3, after="50ms", lb="ring_hash", hash_on={"header": "x-user"}, retry=retry))
    async with caller(mesh) as client:
        response = await client.get("http://reviews/x", headers={"x-user": "alice"})
        await eventually(lambda: _in_flight(mesh) == 0)
    assert response.status_code == 200
    assert len(ports) == 3
    assert len(set(ports)) == 3, ports
    assert response.json() == {"port": ports[2]}
    assert _counters(mesh) == {"hedges": 1, "retries": 1, "retried_requests": 1}


def _slow_app(seconds: float) -> Callable[[Scope, Receive, Send], Any]:
    inner = echo_app("slow")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(seconds)
        await inner(scope, receive, send)

    return app


async def test_hedging_between_real_servers(make_mesh: MakeMesh, caller: Caller) -> None:
    servers: list[RunningServer] = []
    try:
        servers.append(start_server(_slow_app(0.3), "slow"))
        servers.append(start_server(echo_app("fast"), "fast"))
        mesh = make_mesh({"clusters": {"reviews": {"endpoints": [s.url for s in servers], "hedge": {"after": "50ms"}}}})
        async with caller(mesh) as client:
            for _ in range(2):  # round robin: each request's first try goes to the slow server
                started = time.monotonic()
                response = await client.get("http://reviews/x")
                assert time.monotonic() - started < 0.25
                assert response.json()["name"] == "fast"
            await eventually(lambda: _in_flight(mesh) == 0)
        assert _counters(mesh) == {"hedges": 2, "hedge_wins": 2}
    finally:
        for server in servers:
            server.server.should_exit = True
        for server in servers:
            server.stop()
