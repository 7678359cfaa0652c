"""Timeouts through the whole engine with respx: the request deadline over all tries, per-try and connect limits.

The fake clock stands in for time passing at the upstream (a side effect
advances it), so the deadline arithmetic is exact and nothing waits. Real
stalls and sockets are in tests/integration/test_failures.py. Every timeout
error names the timeout that ran out (its ``kind``, ``timeout`` and message).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
import respx

import meshlib
from meshlib._errors import MeshError, RequestTimeoutError, UpstreamConnectError
from meshlib.testing import FakeClock, MeshFactory, assert_counters
from tests.conftest import Caller, MakeMesh, MeshCaller

pytestmark = pytest.mark.anyio

A, B = "http://127.0.0.1:9081", "http://127.0.0.1:9082"
URL = "http://reviews/x"
FAST_BACKOFF = {"base": "1ms", "max": "2ms"}
OF = "of route 'cluster:reviews', cluster 'reviews'"  # the implicit route every cluster gets for its own name


def assert_timeout(error: Exception, kind: str | None, timeout: float | None, message: str) -> None:
    """``error`` names the timeout that ran out: its kind, configured seconds and the one message format."""
    assert isinstance(error, RequestTimeoutError | UpstreamConnectError)
    assert (error.kind, error.timeout, str(error)) == (kind, timeout, message)


def mesh_config(*, endpoints: tuple[str, ...] = (A,), **cluster: Any) -> dict[str, Any]:
    return {"clusters": {"reviews": {"endpoints": list(endpoints), **cluster}}}


def slow_upstream(
    clock: FakeClock, seconds: float, outcome: Callable[[], httpx.Response | Exception], seen: list[dict[str, float]]
) -> Callable[[httpx.Request], httpx.Response]:
    """A respx side effect that records the try's timeouts, takes ``seconds`` of fake time, then answers or raises."""

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.extensions["timeout"]))
        clock.advance(seconds)
        result = outcome()
        if isinstance(result, Exception):
            raise result
        return result

    return respond


def endpoints_in_flight(mesh: meshlib.Mesh) -> int:
    return sum(e["in_flight"] for e in mesh.stats()["clusters"]["reviews"]["endpoints"].values())


async def test_the_request_deadline_spans_every_try_and_backoff(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, mesh_clock: FakeClock, caller: Caller
) -> None:
    """Tries of 0.3 s under a 1 s timeout: the 4th try gets only what is left, and then the request times out."""
    seen: list[dict[str, float]] = []
    upstream = respx_mock.get(f"{A}/x").mock(
        side_effect=slow_upstream(mesh_clock, 0.3, lambda: httpx.Response(503), seen)
    )
    retry = {"attempts": 10, "retry_on": ["5xx"], "backoff": FAST_BACKOFF, "budget": None}
    mesh = mesh_factory(mesh_config(timeout="1s", retry=retry))
    async with caller(mesh) as client:
        with pytest.raises(RequestTimeoutError) as raised:
            await client.get(URL)
    error = raised.value
    assert isinstance(error, httpx.TimeoutException)
    assert isinstance(error, MeshError)
    assert error.per_try is False  # the whole request's timeout ran out, not one try's
    assert_timeout(error, "request", 1.0, f"request timeout (1s) ran out before try 5 {OF}")
    assert (error.route, error.cluster) == ("cluster:reviews", "reviews")
    assert upstream.call_count == 4
    # Each try may use only what is left of the deadline: 1 s, then about 0.7, 0.4 and 0.1 s.
    reads = [t["read"] for t in seen]
    for read, expected in zip(reads, [1.0, 0.7, 0.4, 0.1], strict=True):
        assert expected - 0.01 <= read <= expected
    assert_counters(mesh, "reviews", retries=3, retried_requests=1)
    assert endpoints_in_flight(mesh) == 0  # the 503 in hand when time ran out was closed


async def test_a_backoff_that_would_overrun_the_deadline_fails_at_once(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, mesh_clock: FakeClock, caller: Caller
) -> None:
    """A Retry-After of 1 s cannot fit in a 500 ms timeout: no pointless sleep, a timeout error now."""
    upstream = respx_mock.get(f"{A}/x").mock(return_value=httpx.Response(503, headers={"Retry-After": "1"}))
    retry = {"attempts": 3, "retry_on": ["5xx"], "backoff": {"base": "10ms", "max": "2s"}}
    mesh = mesh_factory(mesh_config(timeout="500ms", retry=retry))
    async with caller(mesh) as client:
        with pytest.raises(RequestTimeoutError) as raised:
            await client.get(URL)
    assert raised.value.per_try is False
    assert_timeout(raised.value, "request", 0.5, f"request timeout (500ms) ran out before try 2 {OF}")
    assert upstream.call_count == 1
    assert mesh_clock.sleeps == []
    assert endpoints_in_flight(mesh) == 0


async def test_a_timeout_without_retries_still_bounds_the_try(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, mesh_clock: FakeClock, caller: Caller
) -> None:
    seen: list[dict[str, float]] = []
    respx_mock.get(f"{A}/x").mock(
        side_effect=slow_upstream(mesh_clock, 0.25, lambda: httpx.ReadTimeout("timed out"), seen)
    )
    mesh = mesh_factory(mesh_config(timeout="250ms"))
    async with caller(mesh) as client:
        with pytest.raises(RequestTimeoutError) as raised:
            await client.get(URL)
    assert raised.value.per_try is False
    assert_timeout(raised.value, "request", 0.25, f"request timeout (250ms) ran out during try 1 {OF} (endpoint {A})")
    assert seen == [{"connect": 0.25, "read": 0.25, "write": 0.25, "pool": 0.25}]


async def test_per_try_timeout_bounds_each_try_within_the_deadline(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, mesh_clock: FakeClock, caller: Caller
) -> None:
    """Each try times out after 0.5 s and is retried (per-try-timeout) until the 2 s deadline runs out."""
    seen: list[dict[str, float]] = []
    upstream = respx_mock.get(f"{A}/x").mock(
        side_effect=slow_upstream(mesh_clock, 0.5, lambda: httpx.ReadTimeout("timed out"), seen)
    )
    retry = {"attempts": 10, "per_try_timeout": "500ms", "retry_on": ["per-try-timeout"], "backoff": FAST_BACKOFF}
    mesh = mesh_factory(mesh_config(timeout="2s", retry=retry))
    async with caller(mesh) as client:
        with pytest.raises(RequestTimeoutError) as raised:
            await client.get(URL)
    # Tries 1-3 ran out of their own 0.5 s and were retried; try 4 had less than 0.5 s left and ended the request:
    # its per-try budget was cut short by the deadline, so the request timeout is what ran out.
    assert raised.value.per_try is False
    assert_timeout(raised.value, "request", 2.0, f"request timeout (2s) ran out during try 4 {OF} (endpoint {A})")
    assert upstream.call_count == 4
    reads = [t["read"] for t in seen]
    assert reads[:3] == [0.5, 0.5, 0.5]
    assert 0.49 <= reads[3] < 0.5
    assert_counters(mesh, "reviews", retries=3)


@pytest.mark.parametrize("retried", [True, False], ids=["with-per-try-timeout", "without"])
async def test_a_per_try_timeout_is_retried_only_under_per_try_timeout(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, mesh_clock: FakeClock, caller: Caller, retried: bool
) -> None:
    upstream = respx_mock.get(f"{A}/x").mock(side_effect=[httpx.ReadTimeout("timed out"), httpx.Response(200)])
    retry_on = ["per-try-timeout"] if retried else ["connect-failure", "reset", "5xx"]
    retry = {"attempts": 2, "per_try_timeout": "200ms", "retry_on": retry_on}
    mesh = mesh_factory(mesh_config(timeout="2s", retry=retry))
    async with caller(mesh) as client:
        if retried:
            assert (await client.get(URL)).status_code == 200
        else:
            with pytest.raises(RequestTimeoutError) as raised:
                await client.get(URL)
            assert raised.value.per_try is True  # only this try ran out; the request had time left
            assert_timeout(
                raised.value, "per_try", 0.2, f"per-try timeout (200ms) ran out during try 1 {OF} (endpoint {A})"
            )
    assert upstream.call_count == (2 if retried else 1)


async def test_connect_timeout_bounds_the_connection_and_is_a_connect_failure(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    """connect_timeout limits connecting only; a connect timeout never reached the upstream, so it is retried."""
    seen: list[dict[str, float]] = []

    def timing_out(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.extensions["timeout"]))
        raise httpx.ConnectTimeout("connect timed out")

    respx_mock.post(f"{A}/x").mock(side_effect=timing_out)
    working = respx_mock.post(f"{B}/x").mock(return_value=httpx.Response(201))
    retry = {"attempts": 2, "per_try_timeout": "500ms", "retry_on": ["connect-failure"]}
    mesh = mesh_factory(mesh_config(endpoints=(A, B), connect_timeout="250ms", retry=retry))
    async with caller(mesh) as client:
        # Round robin starts on A, which times out connecting; even a POST is retried, on B.
        assert (await client.request("POST", URL, content=b"order")).status_code == 201
    assert seen == [{"connect": 0.25, "read": 0.5, "write": 0.5, "pool": 0.5}]
    assert working.call_count == 1
    assert_counters(mesh, "reviews", retries=1)


async def test_connect_timeout_alone_raises_a_connect_error(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    respx_mock.get(f"{A}/x").mock(side_effect=httpx.ConnectTimeout("connect timed out"))
    mesh = mesh_factory(mesh_config(connect_timeout="250ms", retry={"attempts": 1}))
    async with caller(mesh) as client:
        with pytest.raises(UpstreamConnectError) as raised:
            await client.get(URL)
    assert isinstance(raised.value, httpx.ConnectError)
    assert isinstance(raised.value.__cause__, httpx.ConnectTimeout)
    assert_timeout(raised.value, "connect", 0.25, f"connect timeout (250ms) ran out during try 1 {OF} (endpoint {A})")


@pytest.mark.parametrize(("client_timeout", "read"), [(0.1, 0.1), (5.0, 0.5)], ids=["client-tighter", "mesh-tighter"])
async def test_a_try_is_never_given_more_time_than_the_clients_own_timeout(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller, client_timeout: float, read: float
) -> None:
    seen: list[dict[str, float]] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.extensions["timeout"]))
        return httpx.Response(200)

    respx_mock.get(f"{A}/x").mock(side_effect=record)
    mesh = mesh_factory(mesh_config(retry={"attempts": 2, "per_try_timeout": "500ms"}))
    async with caller(mesh, timeout=client_timeout) as client:
        assert (await client.get(URL)).status_code == 200
    assert seen[0]["read"] == read


async def test_a_routes_timeout_replaces_the_clusters(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    seen: list[dict[str, float]] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.extensions["timeout"]))
        return httpx.Response(200)

    respx_mock.get(url__startswith=A).mock(side_effect=record)
    config = mesh_config(timeout="2s")
    config["routes"] = [{"match": {"host": "reviews", "path": "/quick"}, "cluster": "reviews", "timeout": "100ms"}]
    mesh = mesh_factory(config)
    async with caller(mesh) as client:
        await client.get("http://reviews/quick")
        await client.get("http://reviews/other")
    assert [t["read"] for t in seen] == [0.1, 2.0]


async def test_a_connect_cut_short_by_the_per_try_timeout_names_the_per_try_timeout(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    """connect_timeout 1 s but per_try_timeout 200 ms: the try's limit is what ran out, so a request timeout (UT)."""
    respx_mock.get(f"{A}/x").mock(side_effect=httpx.ConnectTimeout("connect timed out"))
    mesh = mesh_factory(mesh_config(connect_timeout="1s", retry={"attempts": 1, "per_try_timeout": "200ms"}))
    async with caller(mesh) as client:
        with pytest.raises(RequestTimeoutError) as raised:
            await client.get(URL)
    assert_timeout(raised.value, "per_try", 0.2, f"per-try timeout (200ms) ran out during try 1 {OF} (endpoint {A})")


async def test_the_clients_own_tighter_timeout_is_named_as_the_clients(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    """httpx's timeout= is a limit of its own: when it is the tightest, the error says so (kind "client")."""
    respx_mock.get(f"{A}/x").mock(side_effect=httpx.ReadTimeout("timed out"))
    mesh = mesh_factory(mesh_config(retry={"attempts": 1, "per_try_timeout": "500ms"}))
    async with caller(mesh, timeout=0.1) as client:
        with pytest.raises(RequestTimeoutError) as raised:
            await client.get(URL)
    assert raised.value.per_try is True
    assert_timeout(raised.value, "client", 0.1, f"client timeout (100ms) ran out during try 1 {OF} (endpoint {A})")


async def test_a_timeout_without_a_known_limit_still_names_the_try(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    """No mesh timeout and a client without one: the kind is unknown, and the message still says where."""
    respx_mock.get(f"{A}/x").mock(side_effect=httpx.ReadTimeout(""))
    mesh = mesh_factory(mesh_config(retry={"attempts": 1}))
    async with caller(mesh, timeout=None) as client:
        with pytest.raises(RequestTimeoutError) as raised:
            await client.get(URL)
    assert raised.value.per_try is True
    assert_timeout(raised.value, None, None, f"timeout ran out during try 1 {OF} (endpoint {A})")


async def test_a_timeout_names_the_route_that_set_it(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, mesh_clock: FakeClock, caller: Caller
) -> None:
    """A route's own timeout replaces the cluster's: the error names that route and its value."""
    seen: list[dict[str, float]] = []
    respx_mock.get(url__startswith=A).mock(
        side_effect=slow_upstream(mesh_clock, 0.1, lambda: httpx.ReadTimeout("timed out"), seen)
    )
    config = mesh_config(timeout="2s", retry={"attempts": 1})
    config["routes"] = [
        {
            "name": "reviews-quick",
            "match": {"host": "reviews", "path": "/quick"},
            "cluster": "reviews",
            "timeout": "100ms",
        }
    ]
    mesh = mesh_factory(config)
    async with caller(mesh) as client:
        with pytest.raises(RequestTimeoutError) as raised:
            await client.get("http://reviews/quick")
    assert (raised.value.route, raised.value.cluster) == ("reviews-quick", "reviews")
    assert_timeout(
        raised.value,
        "request",
        0.1,
        f"request timeout (100ms) ran out during try 1 of route 'reviews-quick', cluster 'reviews' (endpoint {A})",
    )


# --- the response body: both timeouts span it (Envoy), and a body read that would end past them raises -----------


class Drip(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A streamed body whose chunks each take their seconds of fake time to come, as an upstream's would."""

    def __init__(self, clock: FakeClock, chunks: list[tuple[float, bytes]]) -> None:
        self.clock = clock
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        for seconds, chunk in self.chunks:
            self.clock.advance(seconds)
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self:
            yield chunk


def dripping(clock: FakeClock, chunks: list[tuple[float, bytes]]) -> Callable[[httpx.Request], httpx.Response]:
    """A respx side effect: a 200 head at once, then the :class:`Drip` body."""
    return lambda request: httpx.Response(200, stream=Drip(clock, chunks))


async def read_chunks(client: MeshCaller, response: httpx.Response, into: list[bytes]) -> None:
    """Read ``response``'s body chunk by chunk into ``into`` (what the caller got before any error)."""
    if client.sync_client is not None:
        for chunk in response.iter_raw():
            into.append(chunk)
    else:
        async for chunk in response.aiter_raw():
            into.append(chunk)


RETRY_PER_TRY = {"attempts": 3, "retry_on": ["per-try-timeout", "5xx"], "backoff": FAST_BACKOFF}


@pytest.mark.parametrize(
    ("cluster", "kind", "seconds", "got"),
    [
        ({"timeout": "1s", "retry": {**RETRY_PER_TRY, "per_try_timeout": "500ms"}}, "per_try", 0.5, b"xxxx"),
        ({"timeout": "300ms", "retry": RETRY_PER_TRY}, "request", 0.3, b"xx"),
    ],
    ids=["per-try-timeout-first", "request-timeout-first"],
)
async def test_a_body_that_outlasts_a_timeout_fails_when_it_runs_out(
    respx_mock: respx.MockRouter,
    mesh_factory: MeshFactory,
    mesh_clock: FakeClock,
    caller: Caller,
    cluster: dict[str, Any],
    kind: str,
    seconds: float,
    got: bytes,
) -> None:
    """A byte every 100 ms for 50 bytes: every read is quick, the whole is not. The head went out, so no retry."""
    upstream = respx_mock.get(f"{A}/x").mock(side_effect=dripping(mesh_clock, [(0.1, b"x")] * 50))
    mesh = mesh_factory(mesh_config(**cluster))
    received: list[bytes] = []
    async with caller(mesh) as client:
        response = await client.open_stream("GET", URL)
        assert response.status_code == 200
        with pytest.raises(RequestTimeoutError) as raised:
            await read_chunks(client, response, received)
        # Closed at once, before the caller closes it: the endpoint is free, the connection dropped.
        assert endpoints_in_flight(mesh) == 0
        await client.close_response(response)
    label = "per-try timeout (500ms)" if kind == "per_try" else "request timeout (300ms)"
    assert_timeout(raised.value, kind, seconds, f"{label} ran out during try 1 {OF} (endpoint {A})")
    # The chunk that came at the deadline is not passed on: the timeout had run out by then.
    assert b"".join(received) == got
    assert upstream.call_count == 1


async def test_a_body_that_ends_in_time_is_read_whole(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, mesh_clock: FakeClock, caller: Caller
) -> None:
    respx_mock.get(f"{A}/x").mock(side_effect=dripping(mesh_clock, [(0.1, b"x")] * 4))
    mesh = mesh_factory(mesh_config(timeout="1s", retry={"attempts": 1, "per_try_timeout": "500ms"}))
    async with caller(mesh) as client:
        assert (await client.get(URL)).text == "xxxx"
    assert endpoints_in_flight(mesh) == 0


async def test_a_body_past_the_per_try_timeout_names_it_though_the_clients_read_timeout_is_tighter(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, mesh_clock: FakeClock, caller: Caller
) -> None:
    """The client's 250 ms bounds each read, and none takes that long: the per-try timeout is what ran out."""
    respx_mock.get(f"{A}/x").mock(side_effect=dripping(mesh_clock, [(0.1, b"x")] * 50))
    mesh = mesh_factory(mesh_config(retry={"attempts": 1, "per_try_timeout": "500ms"}))
    async with caller(mesh, timeout=0.25) as client:
        with pytest.raises(RequestTimeoutError) as raised:
            await client.get(URL)
    assert_timeout(raised.value, "per_try", 0.5, f"per-try timeout (500ms) ran out during try 1 {OF} (endpoint {A})")


class Sleepy(httpx.AsyncByteStream):
    """A body whose second chunk takes 5 s (real time, on any anyio backend)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"a"
        await anyio.sleep(5)
        yield b"b"  # pragma: no cover - cut off before


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_body_is_bounded_under_trio_too(
    respx_mock: respx.MockRouter, make_mesh: MakeMesh, anyio_backend: str
) -> None:
    """asyncio's alarms are not trio's: there each read of the body gets a cancel scope of what is left."""
    respx_mock.get(f"{A}/x").mock(side_effect=lambda request: httpx.Response(200, stream=Sleepy()))
    mesh = make_mesh(mesh_config(retry={"attempts": 1, "per_try_timeout": "200ms"}))
    async with mesh.async_client() as client:
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError) as raised:
            await client.get(URL)
        assert time.monotonic() - started < 1.0
    assert_timeout(raised.value, "per_try", 0.2, f"per-try timeout (200ms) ran out during try 1 {OF} (endpoint {A})")
