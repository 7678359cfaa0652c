"""Real sockets on loopback: an upstream that stalls, one that closes mid-response, a closed port; sync and async.

The servers are plain sockets in threads (tests/conftest.py ``raw_server``),
because a well-behaved server can't misbehave on cue. The real clock runs
here: timeouts are 100-300 ms and the elapsed-time bounds are loose. Each
failure's message is asserted exactly: the same text in both modes.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from meshlib._errors import MeshError, RequestTimeoutError, UpstreamConnectError, UpstreamResetError
from meshlib.testing import assert_counters, stats_of
from tests.conftest import (
    Caller,
    ConnectionHandler,
    MakeMesh,
    answer_ok,
    close_before_response,
    close_mid_body,
    raw_server,
    stall,
)
from tests.failing_upstreams import (
    drip_head,
    drip_then_stall,
    reset_before_response,
    reset_mid_body,
    stall_mid_body,
    unaccepting_endpoint,
)

pytestmark = pytest.mark.anyio


FAST_BACKOFF = {"base": "1ms", "max": "2ms"}
OF = "of route 'cluster:up', cluster 'up'"  # the implicit route of cluster "up"


def mesh_config(*endpoints: str, **cluster: Any) -> dict[str, Any]:
    return {"clusters": {"up": {"endpoints": list(endpoints), **cluster}}}


@pytest.mark.parametrize("handler", [stall, drip_head], ids=["silent", "head-trickling-in"])
async def test_a_stalled_upstream_is_cut_off_by_per_try_timeout(
    make_mesh: MakeMesh, caller: Caller, handler: ConnectionHandler
) -> None:
    """No answer, or a head whose lines come 50 ms apart for 2 s: no read waits long, the try still ends in time."""
    with raw_server(handler) as stalled:
        mesh = make_mesh(mesh_config(stalled.url, retry={"attempts": 1, "per_try_timeout": "150ms"}))
        async with caller(mesh) as client:
            started = time.monotonic()
            with pytest.raises(RequestTimeoutError) as raised:
                await client.get("http://up/x")
            elapsed = time.monotonic() - started
    assert raised.value.per_try is True
    assert isinstance(raised.value, httpx.TimeoutException)
    assert (raised.value.kind, raised.value.timeout) == ("per_try", 0.15)
    assert str(raised.value) == f"per-try timeout (150ms) ran out during try 1 {OF} (endpoint {stalled.url})"
    assert 0.12 <= elapsed < 1.5


async def test_a_stalled_upstream_is_cut_off_by_the_request_timeout(make_mesh: MakeMesh, caller: Caller) -> None:
    with raw_server(stall) as stalled:
        mesh = make_mesh(mesh_config(stalled.url, timeout="150ms", retry={"attempts": 1}))
        async with caller(mesh) as client:
            started = time.monotonic()
            with pytest.raises(RequestTimeoutError) as raised:
                await client.get("http://up/x")
            elapsed = time.monotonic() - started
    assert raised.value.per_try is False
    assert (raised.value.kind, raised.value.timeout) == ("request", 0.15)
    assert str(raised.value) == f"request timeout (150ms) ran out during try 1 {OF} (endpoint {stalled.url})"
    assert 0.12 <= elapsed < 1.5


async def test_a_try_cut_short_by_the_request_timeout_names_the_request_timeout(
    make_mesh: MakeMesh, caller: Caller
) -> None:
    """Per-try 200 ms under a 300 ms timeout: try 1 runs out of its own time, try 2 of the request's."""
    with raw_server(stall) as stalled:
        retry = {"attempts": 3, "per_try_timeout": "200ms", "retry_on": ["per-try-timeout"], "backoff": FAST_BACKOFF}
        mesh = make_mesh(mesh_config(stalled.url, timeout="300ms", retry=retry))
        async with caller(mesh) as client:
            started = time.monotonic()
            with pytest.raises(RequestTimeoutError) as raised:
                await client.get("http://up/x")
            elapsed = time.monotonic() - started
        assert stalled.connections == 2
    assert (raised.value.kind, raised.value.timeout, raised.value.per_try) == ("request", 0.3, False)
    assert str(raised.value) == f"request timeout (300ms) ran out during try 2 {OF} (endpoint {stalled.url})"
    assert 0.27 <= elapsed < 1.5


async def test_an_endpoint_that_never_accepts_is_a_connect_timeout(make_mesh: MakeMesh, caller: Caller) -> None:
    with unaccepting_endpoint() as hanging:
        mesh = make_mesh(mesh_config(hanging, connect_timeout="100ms", retry={"attempts": 1}))
        async with caller(mesh) as client:
            started = time.monotonic()
            with pytest.raises(UpstreamConnectError) as raised:
                await client.get("http://up/x")
            elapsed = time.monotonic() - started
    assert isinstance(raised.value.__cause__, httpx.ConnectTimeout)
    assert (raised.value.kind, raised.value.timeout) == ("connect", 0.1)
    assert str(raised.value) == f"connect timeout (100ms) ran out during try 1 {OF} (endpoint {hanging})"
    assert 0.08 <= elapsed < 1.5


@pytest.mark.parametrize(
    ("handler", "error", "what"),
    [
        (close_before_response, UpstreamResetError, "server disconnected without sending a response"),
        (reset_before_response, UpstreamResetError, "connection reset by peer"),
        (
            close_mid_body,
            UpstreamResetError,
            "peer closed connection without sending complete message body (received 10 bytes, expected 1000)",
        ),
        (reset_mid_body, UpstreamResetError, "connection reset by peer"),
        (stall_mid_body, RequestTimeoutError, "per-try timeout (150ms) ran out"),
    ],
    ids=["closed-before-response", "reset-before-response", "closed-mid-body", "reset-mid-body", "stalled-mid-body"],
)
async def test_every_failure_names_what_happened_in_the_same_words_in_both_modes(
    make_mesh: MakeMesh, caller: Caller, handler: ConnectionHandler, error: type[MeshError], what: str
) -> None:
    """httpx's async errors often have no text of their own: the message still says what happened, as sync's does."""
    with raw_server(handler) as failing:
        mesh = make_mesh(mesh_config(failing.url, retry={"attempts": 1, "per_try_timeout": "150ms"}))
        async with caller(mesh) as client:
            with pytest.raises(error) as raised:
                await client.get("http://up/x")  # reads the body too
    assert str(raised.value) == f"{what} during try 1 {OF} (endpoint {failing.url})"


@pytest.mark.parametrize("client_timeout", [None, 0.28], ids=["mesh-timeouts", "tighter-client-read-timeout"])
async def test_a_body_that_stalls_midway_ends_at_the_deadline_not_a_read_timeout_later(
    make_mesh: MakeMesh, caller: Caller, client_timeout: float | None
) -> None:
    """Bytes for 250 ms, then none: the try ends at 300 ms, where a read timeout alone would wait till 550 ms.

    The client's own 280 ms bounds each read (httpx's meaning), so it alone would fire at 530 ms.
    """
    with raw_server(drip_then_stall) as stalling:
        mesh = make_mesh(mesh_config(stalling.url, retry={"attempts": 1, "per_try_timeout": "300ms"}))
        async with caller(mesh, timeout=client_timeout) as client:
            started = time.monotonic()
            response = await client.open_stream("GET", "http://up/x")
            with pytest.raises(RequestTimeoutError) as raised:
                await client.read_response(response)
            elapsed = time.monotonic() - started
            await client.close_response(response)
    assert str(raised.value) == f"per-try timeout (300ms) ran out during try 1 {OF} (endpoint {stalling.url})"
    assert 0.28 <= elapsed < 0.45
    assert mesh.stats()["clusters"]["up"]["endpoints"][stalling.url]["in_flight"] == 0


@pytest.mark.parametrize("retried", [True, False], ids=["per-try-timeout-listed", "not-listed"])
async def test_a_try_that_stalls_is_retried_on_the_other_endpoint_only_under_per_try_timeout(
    make_mesh: MakeMesh, caller: Caller, retried: bool
) -> None:
    retry_on = ["per-try-timeout"] if retried else ["connect-failure", "reset", "5xx"]
    with raw_server(stall) as stalled, raw_server(answer_ok) as working:
        retry = {"attempts": 2, "per_try_timeout": "100ms", "retry_on": retry_on, "backoff": FAST_BACKOFF}
        mesh = make_mesh(mesh_config(stalled.url, working.url, timeout="2s", retry=retry))
        async with caller(mesh) as client:
            started = time.monotonic()
            if retried:
                assert (await client.get("http://up/x")).text == "ok"  # round robin starts on the stalled one
            else:
                with pytest.raises(RequestTimeoutError):
                    await client.get("http://up/x")
            elapsed = time.monotonic() - started
        assert (stalled.connections, working.connections) == (1, 1 if retried else 0)
    assert 0.08 <= elapsed < 1.5


async def test_a_connection_closed_before_the_response_is_a_reset_retried_for_get(
    make_mesh: MakeMesh, caller: Caller
) -> None:
    with raw_server(close_before_response) as closing, raw_server(answer_ok) as working:
        mesh = make_mesh(
            mesh_config(closing.url, working.url, retry={"attempts": 2, "retry_on": ["reset"], "backoff": FAST_BACKOFF})
        )
        async with caller(mesh) as client:
            assert (await client.get("http://up/x")).text == "ok"
            # A POST may have been acted on before the connection dropped: not retried.
            with pytest.raises(UpstreamResetError) as raised:
                await client.request("POST", "http://up/x", content=b"order")
        assert (closing.connections, working.connections) == (2, 1)
    assert isinstance(raised.value, httpx.NetworkError)
    assert_counters(mesh, "up", retries=1)


async def test_a_connection_closed_mid_body_is_a_reset_and_is_not_retried(make_mesh: MakeMesh, caller: Caller) -> None:
    """The response head was already handed to the caller, so reading the body fails; no second try is made."""
    with raw_server(close_mid_body) as closing, raw_server(answer_ok) as working:
        retry = {"attempts": 2, "retry_on": ["reset"], "backoff": FAST_BACKOFF}
        mesh = make_mesh(mesh_config(closing.url, working.url, retry=retry))
        async with caller(mesh) as client:
            with pytest.raises(UpstreamResetError, match="received 10 bytes, expected 1000") as raised:
                await client.get("http://up/x")
        assert (closing.connections, working.connections) == (1, 0)
    assert isinstance(raised.value.__cause__, httpx.RemoteProtocolError)
    assert mesh.stats()["clusters"]["up"]["endpoints"][closing.url]["in_flight"] == 0


async def test_a_closed_port_is_a_connect_error_retried_on_the_other_endpoint(
    make_mesh: MakeMesh, caller: Caller, free_port: int
) -> None:
    closed = f"http://127.0.0.1:{free_port}"
    with raw_server(answer_ok) as working:
        mesh = make_mesh(
            mesh_config(
                closed, working.url, retry={"attempts": 2, "retry_on": ["connect-failure"], "backoff": FAST_BACKOFF}
            )
        )
        async with caller(mesh) as client:
            # Even a POST: a refused connection never reached the upstream.
            responses = [await client.request("POST", "http://up/x", content=b"order") for _ in range(2)]
        assert working.connections == 2
    assert [r.text for r in responses] == ["ok", "ok"]
    retries = stats_of(mesh, "up")["retries"]
    assert retries >= 1  # the balancer starts at least the first request on the closed port
    assert_counters(mesh, "up", retried_requests=retries)


async def test_a_closed_port_alone_raises_upstream_connect_error(
    make_mesh: MakeMesh, caller: Caller, free_port: int
) -> None:
    mesh = make_mesh(
        mesh_config(
            f"http://127.0.0.1:{free_port}",
            retry={"attempts": 2, "retry_on": ["connect-failure"], "backoff": FAST_BACKOFF},
        )
    )
    async with caller(mesh) as client:
        with pytest.raises(UpstreamConnectError) as raised:
            await client.get("http://up/x")
    assert isinstance(raised.value, httpx.ConnectError)
    assert isinstance(raised.value.__cause__, httpx.ConnectError)
    # Sync httpx says "[Errno 111] Connection refused", async "All connection attempts failed": one message here.
    assert str(raised.value) == f"connection refused during try 2 {OF} (endpoint http://127.0.0.1:{free_port})"
    assert (raised.value.kind, raised.value.timeout) == (None, None)
    assert_counters(mesh, "up", retries=1, retried_requests=1)
