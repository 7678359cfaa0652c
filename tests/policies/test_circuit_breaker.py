"""``circuit_breaker`` in memory, through the whole engine: opening, failing fast, the one trial, overflow.

The breaker's recovery is timed by the mesh's clock, so a FakeClock moves it along without sleeping.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import anyio
import httpx
import pybreaker
import pytest
import respx

import meshlib
from meshlib.testing import FakeClock
from tests.conftest import Caller, MakeMesh, outcomes

pytestmark = pytest.mark.anyio

ENDPOINT = "http://127.0.0.1:9081"
URL = "http://reviews/"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _config(**breaker: Any) -> dict[str, Any]:
    settings = {"failure_threshold": 3, "recovery_timeout": "30s", **breaker}
    return {"clusters": {"reviews": {"endpoints": [ENDPOINT], "circuit_breaker": settings}}}


def _stats(mesh: meshlib.Mesh) -> dict[str, Any]:
    stats: dict[str, Any] = mesh.stats()["clusters"]["reviews"]
    return stats


def _counters(mesh: meshlib.Mesh, *keys: str) -> dict[str, int]:
    counters = _stats(mesh)["counters"]
    return {key: counters.get(key, 0) for key in keys}


async def _outcomes(client: Any, n: int, url: str = URL) -> list[int | str]:
    return await outcomes(client, url, n)


@pytest.mark.parametrize(
    ("failure", "seen"),
    [
        (httpx.Response(503), 503),
        (httpx.Response(500), 500),
        (httpx.ConnectError("refused"), "upstream_connect_failure"),
        (httpx.ReadTimeout("stalled"), "timeout"),
        (httpx.RemoteProtocolError("closed mid-response"), "upstream_reset"),
    ],
    ids=["503", "500", "connect", "timeout", "reset"],
)
async def test_opens_after_threshold_consecutive_failures_then_fails_fast_offline(
    make_mesh: MakeMesh,
    caller: Caller,
    respx_mock: respx.MockRouter,
    clock: FakeClock,
    failure: httpx.Response | Exception,
    seen: int | str,
) -> None:
    route = respx_mock.get(f"{ENDPOINT}/")
    upstream = route.mock(side_effect=failure) if isinstance(failure, Exception) else route.mock(return_value=failure)
    mesh = make_mesh(_config(), clock=clock)
    async with caller(mesh) as client:
        # The tripping try's own outcome is what its caller sees.
        assert await _outcomes(client, 3) == [seen] * 3
        assert _stats(mesh)["circuit_breaker"]["state"] == "open"
        with pytest.raises(meshlib.CircuitOpenError) as refused:
            await client.get(URL)
        assert await _outcomes(client, 4) == ["circuit_open"] * 4
    error = refused.value
    assert isinstance(error, meshlib.MeshError)
    assert isinstance(error, httpx.TransportError)
    assert (error.code, error.cluster) == ("circuit_open", "reviews")
    assert upstream.call_count == 3
    assert _counters(mesh, "breaker_open", "breaker_rejected") == {"breaker_open": 1, "breaker_rejected": 5}


async def test_only_consecutive_failures_count(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, clock: FakeClock
) -> None:
    statuses = [503, 503, 200, 503, 503, 404, 404, 200, 503, 503]
    upstream = respx_mock.get(f"{ENDPOINT}/").mock(side_effect=[httpx.Response(s) for s in statuses])
    mesh = make_mesh(_config(), clock=clock)
    async with caller(mesh) as client:
        # A success resets the count; a 4xx is the caller's problem and counts as a success.
        assert await _outcomes(client, len(statuses)) == statuses
    assert _stats(mesh)["circuit_breaker"]["state"] == "closed"
    assert upstream.call_count == len(statuses)
    assert _counters(mesh, "breaker_open") == {"breaker_open": 0}


async def test_good_trial_after_recovery_timeout_closes_it(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, clock: FakeClock
) -> None:
    answers = [httpx.Response(503)] * 3 + [httpx.Response(200)] * 3
    upstream = respx_mock.get(f"{ENDPOINT}/").mock(side_effect=answers)
    mesh = make_mesh(_config(), clock=clock)
    async with caller(mesh) as client:
        assert await _outcomes(client, 4) == [503, 503, 503, "circuit_open"]
        clock.advance(29.9)
        assert await _outcomes(client, 1) == ["circuit_open"]
        clock.advance(0.1)
        assert await _outcomes(client, 3) == [200, 200, 200]
    assert _stats(mesh)["circuit_breaker"]["state"] == "closed"
    assert upstream.call_count == 6
    assert _counters(mesh, "breaker_open", "breaker_half_open", "breaker_closed", "breaker_rejected") == {
        "breaker_open": 1,
        "breaker_half_open": 1,
        "breaker_closed": 1,
        "breaker_rejected": 2,
    }


async def test_bad_trial_reopens_it_for_another_recovery_timeout(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, clock: FakeClock
) -> None:
    answers: list[httpx.Response | Exception] = [httpx.Response(503)] * 3
    answers += [httpx.ConnectError("refused"), httpx.Response(200), httpx.Response(200)]
    upstream = respx_mock.get(f"{ENDPOINT}/").mock(side_effect=answers)
    mesh = make_mesh(_config(), clock=clock)
    async with caller(mesh) as client:
        assert await _outcomes(client, 3) == [503] * 3
        clock.advance(30)
        assert await _outcomes(client, 2) == ["upstream_connect_failure", "circuit_open"]
        assert _stats(mesh)["circuit_breaker"]["state"] == "open"
        # Open again, for a whole recovery_timeout from the failed trial.
        clock.advance(29)
        assert await _outcomes(client, 1) == ["circuit_open"]
        clock.advance(1)
        assert await _outcomes(client, 2) == [200, 200]
    assert upstream.call_count == 6
    assert _counters(mesh, "breaker_open", "breaker_half_open", "breaker_closed") == {
        "breaker_open": 2,
        "breaker_half_open": 2,
        "breaker_closed": 1,
    }


async def test_one_trial_at_a_time_others_fail_fast_async(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, clock: FakeClock
) -> None:
    release = anyio.Event()
    arrived = anyio.Event()
    calls = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        """503 three times, then a 200 that waits for ``release``."""
        nonlocal calls
        calls += 1
        if calls <= 3:
            return httpx.Response(503)
        arrived.set()
        await release.wait()
        return httpx.Response(200)

    upstream = respx_mock.get(f"{ENDPOINT}/").mock(side_effect=answer)
    mesh = make_mesh(_config(), clock=clock)
    async with mesh.async_client() as client:
        assert await _outcomes(client, 3) == [503] * 3
        clock.advance(30)
        results: list[int] = []

        async def trial() -> None:
            results.append((await client.get(URL)).status_code)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(trial)
                await arrived.wait()
                assert _stats(mesh)["circuit_breaker"]["state"] == "half-open"
                # While the trial is out, everyone else fails fast, without touching the network.
                assert await _outcomes(client, 3) == ["circuit_open"] * 3
                release.set()
        assert results == [200]
        assert _stats(mesh)["circuit_breaker"]["state"] == "closed"
    assert upstream.call_count == 4


def test_one_trial_at_a_time_others_fail_fast_sync(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, clock: FakeClock
) -> None:
    release = threading.Event()
    arrived = threading.Event()
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        """503 three times, then 200s; the first 200 waits for ``release``."""
        nonlocal calls
        calls += 1
        if calls <= 3:
            return httpx.Response(503)
        if calls == 4:
            arrived.set()
            release.wait(5)
        return httpx.Response(200)

    upstream = respx_mock.get(f"{ENDPOINT}/").mock(side_effect=answer)
    mesh = make_mesh(_config(), clock=clock)
    with mesh.client() as client:
        assert [client.get(URL).status_code for _ in range(3)] == [503] * 3
        clock.advance(30)
        results: list[int] = []
        worker = threading.Thread(target=lambda: results.append(client.get(URL).status_code))
        worker.start()
        try:
            assert arrived.wait(5)
            for _ in range(3):
                with pytest.raises(meshlib.CircuitOpenError):
                    client.get(URL)
        finally:
            release.set()
            worker.join(5)
        assert results == [200]
        assert client.get(URL).status_code == 200
    assert upstream.call_count == 5


async def test_cancelled_trial_leaves_the_next_request_to_decide(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, clock: FakeClock
) -> None:
    started: list[httpx.Request] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        """503 three times, then one answer that never comes, then 200s."""
        started.append(request)
        if len(started) <= 3:
            return httpx.Response(503)
        if len(started) == 4:
            await anyio.sleep_forever()
        return httpx.Response(200)

    upstream = respx_mock.get(f"{ENDPOINT}/").mock(side_effect=answer)
    mesh = make_mesh(_config(), clock=clock)
    async with mesh.async_client() as client:
        assert await _outcomes(client, 3) == [503] * 3
        clock.advance(30)
        with anyio.move_on_after(0.02) as scope:
            await client.get(URL)
        assert scope.cancelled_caught
        # The caller gave up: no verdict on the upstream, and the trial's slot is free again.
        assert _stats(mesh)["circuit_breaker"] == {"state": "half-open", "in_flight": 0}
        assert await _outcomes(client, 2) == [200, 200]
    # respx records a call once it has answered: the cancelled trial shows in ``started`` only.
    assert (upstream.call_count, len(started)) == (5, 6)


async def test_overflow_fails_fast_until_a_streamed_body_closes(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, clock: FakeClock
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/").respond(200, content=b"x" * 1000)
    mesh = make_mesh(_config(max_concurrent_requests=2), clock=clock)
    async with caller(mesh) as client:
        first = await client.open_stream("GET", URL)
        second = await client.open_stream("GET", URL)
        assert _stats(mesh)["circuit_breaker"]["in_flight"] == 2
        with pytest.raises(meshlib.OverloadedError) as refused:
            await client.get(URL)
        assert (refused.value.code, refused.value.cluster) == ("overloaded", "reviews")
        assert isinstance(refused.value, httpx.TransportError)
        assert upstream.call_count == 2
        await client.close_response(first)
        assert _stats(mesh)["circuit_breaker"]["in_flight"] == 1
        third = await client.open_stream("GET", URL)
        assert await _outcomes(client, 1) == ["overloaded"]
        assert await client.read_response(second) == b"x" * 1000
        assert await client.read_response(third) == b"x" * 1000
        assert await _outcomes(client, 3) == [200] * 3
    assert _stats(mesh)["circuit_breaker"] == {"state": "closed", "in_flight": 0}
    assert upstream.call_count == 6
    # Overflow is no failure of the upstream: the breaker stays closed however much it happens.
    assert _counters(mesh, "overflow", "breaker_open") == {"overflow": 2, "breaker_open": 0}


async def test_failed_try_releases_its_slot(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, clock: FakeClock
) -> None:
    respx_mock.get(f"{ENDPOINT}/").mock(side_effect=httpx.ConnectError("refused"))
    mesh = make_mesh(_config(max_concurrent_requests=1, failure_threshold=10), clock=clock)
    async with caller(mesh) as client:
        for _ in range(3):
            with pytest.raises(meshlib.UpstreamConnectError):
                await client.get(URL)
    assert _stats(mesh)["circuit_breaker"]["in_flight"] == 0


async def test_each_try_of_a_retried_request_goes_through_the_breaker(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, clock: FakeClock
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/").respond(503)
    config = _config()
    config["clusters"]["reviews"]["retry"] = {"attempts": 5, "retry_on": ["5xx"]}
    mesh = make_mesh(config, clock=clock)
    async with caller(mesh) as client:
        # The third try opens the breaker, which refuses the fourth: the caller gets an error, not a retry storm.
        assert await _outcomes(client, 1) == ["circuit_open"]
    assert upstream.call_count == 3


async def test_reload_keeps_the_breaker_while_its_config_is_unchanged(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, clock: FakeClock
) -> None:
    respx_mock.get(f"{ENDPOINT}/").mock(side_effect=[httpx.Response(503)] * 3 + [httpx.Response(200)])
    mesh = make_mesh(_config(), clock=clock)
    async with caller(mesh) as client:
        assert await _outcomes(client, 4) == [503, 503, 503, "circuit_open"]
        changed_elsewhere = _config()
        changed_elsewhere["clusters"]["reviews"]["timeout"] = "5s"
        mesh.reload(changed_elsewhere)
        assert await _outcomes(client, 1) == ["circuit_open"]
        # A changed breaker config is a new breaker: closed.
        mesh.reload(_config(failure_threshold=4))
        assert await _outcomes(client, 1) == [200]


# Logging and listeners


def _breaker_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "meshlib.circuit_breaker"]


async def test_each_change_of_state_is_logged_once_however_many_requests(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    respx_mock.get(f"{ENDPOINT}/").mock(side_effect=[httpx.Response(503)] * 3 + [httpx.Response(200)] * 50)
    caplog.set_level(logging.DEBUG, logger="meshlib")
    mesh = make_mesh(_config(), clock=clock)
    async with mesh.async_client() as client:
        assert await _outcomes(client, 3) == [503] * 3
        assert await _many(client, 40) == ["circuit_open"] * 40
        clock.advance(30)
        assert 200 in await _many(client, 40)  # one trial, then closed (or refused while it ran)
        assert await _outcomes(client, 5) == [200] * 5
    expected = [
        ("WARNING", "cluster 'reviews': circuit breaker opened after 3 failures in a row"),
        ("INFO", "cluster 'reviews': circuit breaker half-open"),
        ("INFO", "cluster 'reviews': circuit breaker closed"),
    ]
    records = _breaker_records(caplog)
    assert len(records) == len(expected), records
    pairs = zip(records, expected, strict=True)
    assert [(level, message[: len(start)]) for (level, message), (_, start) in pairs] == expected


async def _many(client: httpx.AsyncClient, n: int) -> list[int | str]:
    """``n`` concurrent GETs: each one's status, or the code of the MeshError it raised."""
    out: list[int | str] = []

    async def one() -> None:
        try:
            out.append((await client.get(URL)).status_code)
        except meshlib.MeshError as error:
            out.append(error.code)

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return out


class Recorder(pybreaker.CircuitBreakerListener):
    """A pybreaker listener, as a pybreaker user writes one."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str | None, str]] = []

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.changes.append((cb.name, old_state.name if old_state else None, new_state.name))


async def test_breaker_listeners_hear_every_change_across_reloads(
    respx_mock: respx.MockRouter, clock: FakeClock, caller: Caller
) -> None:
    respx_mock.get(f"{ENDPOINT}/").mock(
        side_effect=[httpx.Response(503)] * 3 + [httpx.Response(200)] + [httpx.Response(503)] * 2
    )
    recorder = Recorder()
    with meshlib.Mesh.from_dict(_config(), clock=clock, breaker_listeners=[recorder]) as mesh:
        async with caller(mesh) as client:
            assert await _outcomes(client, 4) == [503, 503, 503, "circuit_open"]
            clock.advance(30)
            assert await _outcomes(client, 1) == [200]
            # A changed breaker config builds a new breaker: it has the mesh's listeners too.
            mesh.reload(_config(failure_threshold=2))
            assert await _outcomes(client, 3) == [503, 503, "circuit_open"]
    assert recorder.changes == [
        ("reviews", "closed", "open"),
        ("reviews", "open", "half-open"),
        ("reviews", "half-open", "closed"),
        ("reviews", "closed", "open"),
    ]


async def test_a_listener_that_raises_fails_no_request(
    respx_mock: respx.MockRouter, clock: FakeClock, caller: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    respx_mock.get(f"{ENDPOINT}/").respond(503)

    class Broken(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
            raise RuntimeError("listener bug")

    with meshlib.Mesh.from_dict(_config(), clock=clock, breaker_listeners=[Broken()]) as mesh:
        async with caller(mesh) as client:
            assert await _outcomes(client, 4) == [503, 503, 503, "circuit_open"]
    [failed] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "listener" in failed.getMessage()
    assert failed.exc_info is not None
