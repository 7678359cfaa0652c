"""The response body's deadline on asyncio: one timer per try for head and body, and cancellations kept apart.

The body wrapper (``_engine/streams.py``) cuts a read off when the try's time
is up by cancelling the reading task, as the per-try timeout does for the
head: it must take back only its own cancellation, and it reuses the try's
timer rather than setting a second one per response.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx

from meshlib._engine import alarms, streams
from meshlib._errors import RequestTimeoutError
from meshlib.testing import FakeClock, MeshFactory, SystemClock
from tests.conftest import Caller, MakeMesh
from tests.policies.test_timeout import dripping

pytestmark = pytest.mark.anyio

A = "http://127.0.0.1:9081"
URL = "http://reviews/x"


def config(**retry: Any) -> dict[str, Any]:
    return {"clusters": {"reviews": {"endpoints": [A], "retry": {"attempts": 1, **retry}}}}


def own_timers(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays of the loop timers alarms take of their own from now on (a queue's shared timer not counted).

    A timer of an alarm's own rings that one alarm (the queues of shared delays ring many): counted at the
    loop, which works the same where the engine is compiled and calls schedule() directly.
    """
    armed: list[float] = []
    loop = asyncio.get_running_loop()
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if callback is alarms._ring_own:
            armed.append(round(when - loop.time(), 3))
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting)
    return armed


async def test_the_body_takes_its_tries_timer_over(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, mesh_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-try timer is due when the body must end too: the body sets none of its own, unless the
    try's timer was the client's tighter read timeout (a limit per read, not on the body)."""
    armed = own_timers(monkeypatch)
    respx_mock.get(f"{A}/x").mock(side_effect=dripping(mesh_clock, [(0.1, b"x")] * 50))
    mesh = mesh_factory(config(per_try_timeout="500ms"))
    async with mesh.async_client() as client:
        with pytest.raises(RequestTimeoutError):
            await client.get(URL)
    assert armed == []
    async with mesh.async_client(timeout=0.25) as client:
        with pytest.raises(RequestTimeoutError):
            await client.get(URL)
    # The try's timer, due at the client's read timeout, waits in that delay's queue (a delay that repeats:
    # no loop timer of its own); the body's own, due at the per-try timeout, is one.
    assert armed == [pytest.approx(0.5)]


class Stubborn(httpx.AsyncByteStream):
    """A body whose second read takes 5 s and, cancelled, swallows it and answers anyway."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"a"
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(5)
        yield b"late"


async def test_a_read_that_swallows_the_timeouts_cancellation_still_times_out(
    respx_mock: respx.MockRouter, make_mesh: MakeMesh
) -> None:
    respx_mock.get(f"{A}/x").mock(side_effect=lambda request: httpx.Response(200, stream=Stubborn()))
    mesh = make_mesh(config(per_try_timeout="100ms"))
    async with mesh.async_client() as client:
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError) as raised:
            await client.get(URL)
        assert time.monotonic() - started < 1.0
    assert raised.value.kind == "per_try"
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # the cancellation was taken back
    await asyncio.sleep(0)


async def test_a_caller_cancelled_while_reading_the_body_is_cancelled_not_timed_out(
    respx_mock: respx.MockRouter, make_mesh: MakeMesh
) -> None:
    never: asyncio.Event = asyncio.Event()

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"a"
            await never.wait()
            yield b"b"  # pragma: no cover - never reached

    respx_mock.get(f"{A}/x").mock(side_effect=lambda request: httpx.Response(200, stream=Endless()))
    mesh = make_mesh(config(per_try_timeout="5s"))
    async with mesh.async_client() as client:
        reading = asyncio.ensure_future(client.get(URL))
        await asyncio.sleep(0.05)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
    stats = mesh.stats()["clusters"]["reviews"]["endpoints"][A]
    assert stats["in_flight"] == 0


async def test_time_up_while_the_caller_does_something_else_fails_the_next_read_not_the_caller(
    respx_mock: respx.MockRouter, make_mesh: MakeMesh
) -> None:
    """Between the head and the body the try's timer cancels nothing: only a read of the body is cut off."""
    respx_mock.get(f"{A}/x").mock(side_effect=lambda request: httpx.Response(200, stream=Stubborn()))
    mesh = make_mesh(config(per_try_timeout="100ms"))
    async with mesh.async_client() as client, client.stream("GET", URL) as response:
        await asyncio.sleep(0.2)  # the caller's own await, past the deadline: not cancelled
        with pytest.raises(RequestTimeoutError):
            await response.aread()


class Whole(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """An inner transport that answers with a body it holds whole (an in-memory stream, not yet read)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(b"whole"))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return self.handle_request(request)


async def test_a_body_held_whole_is_past_the_timeouts(
    mesh_factory: MeshFactory, mesh_clock: FakeClock, caller: Caller
) -> None:
    """Nothing is left to come from the upstream, so, as Envoy disarms its timers then, reading late is fine."""
    mesh = mesh_factory(config(per_try_timeout="500ms"))
    async with caller(mesh, transport=Whole()) as client:
        response = await client.open_stream("GET", URL)
        mesh_clock.advance(1.0)
        assert await client.read_response(response) == b"whole"
        await client.close_response(response)


class _Said(httpx.AsyncByteStream):
    """A body that says whether it is all here, as the mesh's HTTP/1.1 client's bodies do."""

    def __init__(self, complete: bool) -> None:
        self.complete = complete

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"ok"


@pytest.mark.parametrize(
    ("inner", "complete"),
    [(httpx.ByteStream(b"ok"), True), (_Said(True), True), (_Said(False), False)],
    ids=["in-memory", "says-complete", "still-arriving"],
)
async def test_the_wrapper_says_whether_its_body_is_all_here(inner: httpx.AsyncByteStream, complete: bool) -> None:
    """A listener writes a complete body with its head at once, also through the engine's wrapper."""
    closed: list[bool] = []
    body = streams.OnCloseStream(inner, lambda: closed.append(True))
    assert body.complete is complete
    assert [chunk async for chunk in body] == [b"ok"]
    assert body.received == 2
    await body.aclose()
    assert closed == [True]


async def test_first_tries_under_a_route_timeout_share_its_queue(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is left of the timeout on a first try is the timeout less a few microseconds: on the millisecond
    grid it is the same delay every time, an append to its queue, not a loop timer per request."""
    own = own_timers(monkeypatch)
    respx_mock.get(f"{A}/x").mock(return_value=httpx.Response(200, content=b"ok"))
    mesh = mesh_factory({"clusters": {"reviews": {"endpoints": [A], "timeout": "1s"}}}, clock=SystemClock())
    async with mesh.async_client() as client:
        for _ in range(20):
            assert (await client.get(URL)).status_code == 200
    assert own == []
    assert 1.0 in alarms._queues[asyncio.get_running_loop()]
