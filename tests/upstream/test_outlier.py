"""Outlier detection through the whole engine (sync and async, respx under it, a fake clock), and its arithmetic."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

import meshlib
from meshlib._config.resilience import OutlierDetectionConfig
from meshlib._errors import RequestTimeoutError, UpstreamConnectError, UpstreamResetError
from meshlib._upstream.cluster import ClusterState
from meshlib._upstream.endpoint import Endpoint, EndpointState
from meshlib._upstream.outlier import OutlierDetector
from meshlib.testing import MeshFactory
from tests.conftest import Caller, MeshCaller

pytestmark = pytest.mark.anyio

A, B, C = "http://127.0.0.1:9081", "http://127.0.0.1:9082", "http://127.0.0.1:9083"


class FakeClock:
    """A clock that moves only when told to; sleeping advances it at once."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0))

    async def asleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0))


ClockedMesh = Callable[..., tuple[meshlib.Mesh, FakeClock]]


@pytest.fixture
def clocked_mesh(mesh_factory: MeshFactory) -> ClockedMesh:
    """``clocked_mesh(config)`` → (a Mesh on a FakeClock with a seeded rng, the clock); closed after the test."""

    def make(config: dict[str, Any]) -> tuple[meshlib.Mesh, FakeClock]:
        clock = FakeClock(1000.0)
        return mesh_factory(config, clock=clock), clock

    return make


def _config(endpoints: list[str] | None = None, **outlier: Any) -> dict[str, Any]:
    detection = {"consecutive_5xx": 5, "interval": "10s", "base_ejection_time": "30s", "max_ejection_percent": 50}
    return {"clusters": {"reviews": {"endpoints": endpoints or [A, B], "outlier_detection": {**detection, **outlier}}}}


def _states(mesh: meshlib.Mesh, cluster: str = "reviews") -> dict[str, EndpointState]:
    return {e.url: e.state for e in mesh.snapshot.clusters[cluster].endpoints}


def _counters(mesh: meshlib.Mesh, cluster: str = "reviews") -> dict[str, int]:
    counters: dict[str, int] = mesh.stats()["clusters"][cluster]["counters"]
    return counters


async def _statuses(client: MeshCaller, n: int) -> list[int]:
    return [(await client.get("http://reviews/x")).status_code for _ in range(n)]


async def test_five_5xx_in_a_row_eject_the_endpoint_until_base_ejection_time(
    clocked_mesh: ClockedMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    bad = respx_mock.get(f"{A}/x").mock(return_value=httpx.Response(503))
    good = respx_mock.get(f"{B}/x").mock(return_value=httpx.Response(200))
    mesh, clock = clocked_mesh(_config())
    async with caller(mesh) as client:
        # Round robin alternates: A's fifth 503 comes with the ninth request.
        assert await _statuses(client, 10) == [503, 200] * 5
        assert _counters(mesh).get("ejections") == 1
        assert _states(mesh)[A].ejected_until == clock.now + 30
        assert await _statuses(client, 10) == [200] * 10
        assert (bad.call_count, good.call_count) == (5, 15)
        stats = mesh.stats()["clusters"]["reviews"]["endpoints"]
        assert (stats[A]["requests"], stats[B]["requests"]) == (5, 15)

        clock.advance(29)
        assert await _statuses(client, 2) == [200, 200]
        assert bad.call_count == 5
        clock.advance(1)
        assert sorted(await _statuses(client, 2)) == [200, 503]
        assert bad.call_count == 6


async def test_a_second_ejection_lasts_twice_as_long(
    clocked_mesh: ClockedMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    bad = respx_mock.get(f"{A}/x").mock(return_value=httpx.Response(503))
    respx_mock.get(f"{B}/x").mock(return_value=httpx.Response(200))
    mesh, clock = clocked_mesh(_config())
    async with caller(mesh) as client:
        await _statuses(client, 10)
        clock.advance(30)
        await _statuses(client, 10)  # back within one interval: its multiplier has not decayed
        assert bad.call_count == 10
        assert _counters(mesh)["ejections"] == 2
        assert _states(mesh)[A].times_ejected == 2
        clock.advance(59)
        await _statuses(client, 4)
        assert bad.call_count == 10
        clock.advance(1)
        await _statuses(client, 4)
        assert bad.call_count == 12


async def test_max_ejection_percent_keeps_half_of_two_endpoints_in(
    clocked_mesh: ClockedMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    """Both endpoints fail, but 50% of two is one: the second stays in and the caller sees its 503s."""
    a = respx_mock.get(f"{A}/x").mock(return_value=httpx.Response(503))
    b = respx_mock.get(f"{B}/x").mock(return_value=httpx.Response(503))
    mesh, _ = clocked_mesh(_config(max_ejection_percent=50))
    async with caller(mesh) as client:
        assert await _statuses(client, 10) == [503] * 10
        assert await _statuses(client, 10) == [503] * 10
    assert (a.call_count, b.call_count) == (5, 15)
    counters = _counters(mesh)
    # B reached five in a row three times (requests 10, 15 and 20): each time the cap said no.
    assert counters["ejections"] == 1
    assert counters["ejections_skipped_max_percent"] == 3


async def test_with_every_endpoint_ejected_the_caller_gets_no_healthy_upstream(
    clocked_mesh: ClockedMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    a = respx_mock.get(f"{A}/x").mock(return_value=httpx.Response(503))
    respx_mock.get(f"{B}/x").mock(return_value=httpx.Response(503))
    mesh, clock = clocked_mesh(_config(max_ejection_percent=100))
    async with caller(mesh) as client:
        await _statuses(client, 10)
        assert _counters(mesh)["ejections"] == 2
        with pytest.raises(meshlib.NoHealthyUpstreamError) as caught:
            await client.get("http://reviews/x")
        assert caught.value.cluster == "reviews"
        assert _counters(mesh)["no_healthy_upstream"] == 1
        clock.advance(30)
        a.mock(return_value=httpx.Response(200))
        assert 200 in await _statuses(client, 2)


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (httpx.ConnectError("refused"), UpstreamConnectError),
        (httpx.ReadError("connection reset"), UpstreamResetError),
        (httpx.ReadTimeout("timed out"), RequestTimeoutError),
    ],
    ids=["connect-failure", "reset", "timeout"],
)
async def test_connect_failures_resets_and_timeouts_count_as_failures(
    clocked_mesh: ClockedMesh,
    caller: Caller,
    respx_mock: respx.MockRouter,
    failure: Exception,
    error: type[Exception],
) -> None:
    bad = respx_mock.get(f"{A}/x").mock(side_effect=failure)
    respx_mock.get(f"{B}/x").mock(return_value=httpx.Response(200))
    mesh, _ = clocked_mesh(_config(consecutive_5xx=3))
    async with caller(mesh) as client:
        for _ in range(3):
            with pytest.raises(error):  # the filter lets the error through unchanged
                await client.get("http://reviews/x")
            assert (await client.get("http://reviews/x")).status_code == 200
        assert _counters(mesh)["ejections"] == 1
        assert await _statuses(client, 4) == [200] * 4
    assert bad.call_count == 3


async def test_a_success_resets_the_count(
    clocked_mesh: ClockedMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    codes = [503, 503, 503, 503, 200, 503, 503, 503, 503, 503]
    respx_mock.get(f"{A}/x").mock(side_effect=[httpx.Response(code) for code in codes])
    respx_mock.get(f"{B}/x").mock(return_value=httpx.Response(200))
    mesh, _ = clocked_mesh(_config())
    async with caller(mesh) as client:
        await _statuses(client, 18)  # A: four 503s, a 200, four 503s
        assert _states(mesh)[A].consecutive_failures == 4
        assert "ejections" not in _counters(mesh)
        await _statuses(client, 2)  # A's fifth 503 in a row
        assert _counters(mesh)["ejections"] == 1
        assert _states(mesh)[A].consecutive_failures == 0


async def test_every_try_counts_so_retries_eject_a_failing_endpoint_while_callers_see_200(
    clocked_mesh: ClockedMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    bad = respx_mock.get(f"{A}/x").mock(return_value=httpx.Response(503))
    good = respx_mock.get(f"{B}/x").mock(return_value=httpx.Response(200))
    config = _config()
    config["clusters"]["reviews"]["retry"] = {"attempts": 2, "retry_on": ["5xx"], "budget": None}
    mesh, _ = clocked_mesh(config)
    async with caller(mesh) as client:
        assert await _statuses(client, 20) == [200] * 20
    assert bad.call_count == 5
    assert good.call_count == 20
    assert _counters(mesh)["ejections"] == 1


async def test_an_error_that_says_nothing_about_the_endpoint_is_not_counted(
    clocked_mesh: ClockedMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    """An exception other than connect failure, reset or timeout passes through and neither fails nor resets."""
    respx_mock.get(f"{A}/x").mock(side_effect=[httpx.Response(503), RuntimeError("a bug"), httpx.Response(503)])
    mesh, _ = clocked_mesh(_config([A]))
    async with caller(mesh) as client:
        assert (await client.get("http://reviews/x")).status_code == 503
        with pytest.raises(RuntimeError, match="a bug"):
            await client.get("http://reviews/x")
        assert _states(mesh)[A].consecutive_failures == 1
        assert (await client.get("http://reviews/x")).status_code == 503
        assert _states(mesh)[A].consecutive_failures == 2


async def test_ejection_state_survives_a_reload_that_keeps_the_endpoint(
    clocked_mesh: ClockedMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    bad = respx_mock.get(f"{A}/x").mock(return_value=httpx.Response(503))
    respx_mock.get(f"{B}/x").mock(return_value=httpx.Response(200))
    mesh, clock = clocked_mesh(_config())
    async with caller(mesh) as client:
        await _statuses(client, 10)
        mesh.reload(_config(consecutive_5xx=3))  # a new detector, the same endpoint state
        assert await _statuses(client, 4) == [200] * 4
        clock.advance(30)
        await _statuses(client, 6)
        assert bad.call_count == 8  # back, and ejected again after three: the new threshold
        assert _states(mesh)[A].times_ejected == 2
    assert _counters(mesh)["ejections"] == 2


# The detector on its own: the arithmetic of multipliers, caps and percentages.


def _endpoints(n: int) -> list[Endpoint]:
    return [Endpoint(f"http://127.0.0.1:{9081 + i}", 1, httpx.URL(f"http://127.0.0.1:{9081 + i}")) for i in range(n)]


def _detector(clock: FakeClock, **config: Any) -> tuple[OutlierDetector, ClusterState]:
    cluster = ClusterState("reviews")
    values = {"consecutive_5xx": 1, "interval": "10s", "base_ejection_time": "30s", "max_ejection_percent": 100.0}
    return OutlierDetector(OutlierDetectionConfig(**{**values, **config}), cluster, clock), cluster


def _fail(detector: OutlierDetector, endpoints: list[Endpoint], endpoint: Endpoint, times: int = 1) -> None:
    for _ in range(times):
        detector.record(endpoints, endpoint, failed=True)


def test_multiplier_decays_by_one_per_interval_back_in_service() -> None:
    clock = FakeClock()
    detector, _ = _detector(clock)
    endpoints = _endpoints(1)
    (e,) = endpoints
    for expected in (1, 2, 3):
        _fail(detector, endpoints, e)
        assert e.state.times_ejected == expected
        clock.advance(detector.ejection_time(expected))
    assert e.state.ejected_until == clock.now  # back since this instant, multiplier 3
    clock.advance(19)
    detector.record(endpoints, e, failed=False)
    assert e.state.times_ejected == 2  # one whole interval
    clock.advance(1)
    detector.record(endpoints, e, failed=False)
    assert e.state.times_ejected == 1  # the second whole interval, counted from the end of the ejection
    clock.advance(9)
    _fail(detector, endpoints, e)  # decays to 1 before the ejection counts: 1 + 1
    assert e.state.times_ejected == 2
    assert e.state.ejected_until == clock.now + 60


def test_a_long_quiet_spell_forgives_every_ejection() -> None:
    clock = FakeClock()
    detector, _ = _detector(clock)
    endpoints = _endpoints(1)
    (e,) = endpoints
    _fail(detector, endpoints, e)
    clock.advance(30)
    _fail(detector, endpoints, e)
    clock.advance(60 + 1000)
    _fail(detector, endpoints, e)
    assert e.state.times_ejected == 1
    assert e.state.ejected_until == clock.now + 30


def test_ejection_time_is_capped_by_max_ejection_time() -> None:
    clock = FakeClock()
    detector, _ = _detector(clock, max_ejection_time="50s")
    endpoints = _endpoints(1)
    (e,) = endpoints
    durations = []
    for _ in range(4):
        _fail(detector, endpoints, e)
        durations.append(e.state.ejected_until - clock.now)
        clock.advance(durations[-1])
    assert durations == [30, 50, 50, 50]
    assert e.state.times_ejected == 2  # stops growing at the cap, so decay forgives it in two intervals


def test_max_ejection_time_below_base_means_base() -> None:
    clock = FakeClock()
    detector, _ = _detector(clock, max_ejection_time="5s")
    assert [detector.ejection_time(n) for n in (1, 2, 3)] == [30, 30, 30]


@pytest.mark.parametrize(
    ("n", "percent", "ejected"),
    [
        (2, 50, 1),
        (2, 100, 2),
        (10, 10, 1),
        (10, 30, 3),
        (10, 35, 3),
        (2, 10, 1),  # 10% of two rounds down to none, but one ejection is always allowed (Envoy)
        (3, 1, 1),
        (3, 0, 0),  # zero means never
    ],
)
def test_max_ejection_percent(n: int, percent: float, ejected: int) -> None:
    clock = FakeClock()
    detector, cluster = _detector(clock, max_ejection_percent=percent)
    endpoints = _endpoints(n)
    for e in endpoints:
        _fail(detector, endpoints, e)
    assert sum(1 for e in endpoints if e.state.ejected_until > clock.now) == ejected
    assert cluster.counters().get("ejections", 0) == ejected
    assert cluster.counters().get("ejections_skipped_max_percent", 0) == n - ejected


def test_the_cap_counts_only_endpoints_still_ejected() -> None:
    clock = FakeClock()
    detector, _ = _detector(clock, max_ejection_percent=50)
    endpoints = _endpoints(2)
    a, b = endpoints
    _fail(detector, endpoints, a)
    _fail(detector, endpoints, b)
    assert b.state.ejected_until == 0
    clock.advance(30)  # a is back
    _fail(detector, endpoints, b)
    assert b.state.ejected_until == clock.now + 30


def test_outcomes_of_tries_that_end_while_ejected_are_ignored() -> None:
    clock = FakeClock()
    detector, cluster = _detector(clock, consecutive_5xx=2)
    endpoints = _endpoints(2)
    a = endpoints[0]
    _fail(detector, endpoints, a, times=2)
    until = a.state.ejected_until
    _fail(detector, endpoints, a, times=5)  # tries that were in flight when it was ejected
    assert (a.state.ejected_until, a.state.times_ejected, a.state.consecutive_failures) == (until, 1, 0)
    assert cluster.counters()["ejections"] == 1


@pytest.mark.parametrize("key", ["interval", "base_ejection_time", "max_ejection_time"])
def test_zero_durations_are_refused_by_the_config(key: str) -> None:
    with pytest.raises(meshlib.ConfigError, match=f"outlier_detection.{key}: must be longer than 0s"):
        meshlib.MeshConfig.from_dict(
            {"clusters": {"c": {"endpoints": ["http://127.0.0.1:9081"], "outlier_detection": {key: "0s"}}}}
        )


# Logging


def _outlier_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "meshlib.outlier"]


async def test_an_ejection_and_the_return_are_logged_once_each(
    clocked_mesh: ClockedMesh, caller: Caller, respx_mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshlib")
    respx_mock.get(f"{A}/x").mock(side_effect=[httpx.Response(503)] * 5 + [httpx.Response(200)] * 20)
    respx_mock.get(f"{B}/x").mock(return_value=httpx.Response(200))
    mesh, clock = clocked_mesh(_config())
    async with caller(mesh) as client:
        assert await _statuses(client, 10) == [503, 200] * 5
        assert await _statuses(client, 20) == [200] * 20  # many requests while it is out: no more lines
        assert _outlier_records(caplog) == [
            (
                "WARNING",
                f"cluster 'reviews': endpoint {A} ejected for 30s after 5 failures in a row (ejection multiplier 1)",
            )
        ]
        clock.advance(30)
        assert await _statuses(client, 20) == [200] * 20
    assert _outlier_records(caplog)[1:] == [
        ("INFO", f"cluster 'reviews': endpoint {A} is back in service after its ejection")
    ]


def test_concurrent_failures_eject_and_log_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    detector, cluster = _detector(clock, consecutive_5xx=3)
    endpoints = _endpoints(2)
    caplog.set_level(logging.DEBUG, logger="meshlib.outlier")
    threads = [threading.Thread(target=_fail, args=(detector, endpoints, endpoints[0], 50)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert cluster.counters()["ejections"] == 1
    assert [level for level, _ in _outlier_records(caplog)] == ["WARNING"]
