"""Active health checks with respx under the probes: thresholds, probe details, the thread, reloads."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import pytest
import respx

import meshlib
from meshlib._clock import SystemClock
from meshlib._config.resilience import HealthCheckConfig
from meshlib._upstream.cluster import ClusterState
from meshlib._upstream.endpoint import Endpoint, EndpointState
from meshlib._upstream.health import HealthChecker
from tests.conftest import Caller, MakeMesh, MeshCaller, wait_for

pytestmark = pytest.mark.anyio

A, B = "http://127.0.0.1:9081", "http://127.0.0.1:9082"


def _config(endpoints: list[str] | None = None, **health: Any) -> dict[str, Any]:
    check = {"interval": "1h", "timeout": "1s", "unhealthy_threshold": 3, "healthy_threshold": 2, **health}
    return {"clusters": {"reviews": {"endpoints": endpoints or [A, B], "health_check": check}}}


def _checker(mesh: meshlib.Mesh, cluster: str = "reviews") -> HealthChecker:
    checker = mesh._runtime.registry.get("health_check", cluster)
    assert isinstance(checker, HealthChecker)
    return checker


def _states(mesh: meshlib.Mesh, cluster: str = "reviews") -> dict[str, EndpointState]:
    return {e.url: e.state for e in mesh.snapshot.clusters[cluster].endpoints}


def _counters(mesh: meshlib.Mesh, cluster: str = "reviews") -> dict[str, int]:
    counters: dict[str, int] = mesh.stats()["clusters"][cluster]["counters"]
    return counters


async def _ports(client: MeshCaller, n: int) -> list[int]:
    return [(await client.get("http://reviews/x")).json()["port"] for _ in range(n)]


@pytest.fixture
def traffic(respx_mock: respx.MockRouter) -> respx.Route:
    """Requests to /x on either endpoint answer 200 with the endpoint's port."""
    return respx_mock.get(path="/x").mock(side_effect=lambda r: httpx.Response(200, json={"port": r.url.port}))


async def test_an_endpoint_leaves_after_unhealthy_threshold_failed_rounds_and_returns_after_healthy_threshold(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, traffic: respx.Route
) -> None:
    probe_a = respx_mock.get(f"{A}/healthz").mock(return_value=httpx.Response(503))
    respx_mock.get(f"{B}/healthz").mock(return_value=httpx.Response(200))
    mesh = make_mesh(_config())
    checker = _checker(mesh)
    async with caller(mesh) as client:
        for _ in range(2):
            checker.check_once()
        assert sorted(await _ports(client, 4)) == [9081, 9081, 9082, 9082]
        checker.check_once()
        assert not _states(mesh)[A].healthy
        assert await _ports(client, 4) == [9082] * 4

        probe_a.mock(return_value=httpx.Response(200))
        checker.check_once()
        assert await _ports(client, 2) == [9082] * 2
        checker.check_once()
        assert _states(mesh)[A].healthy
        assert sorted(await _ports(client, 4)) == [9081, 9081, 9082, 9082]
    assert probe_a.call_count == 5
    counters = _counters(mesh)
    assert {k: v for k, v in counters.items() if "health" in k} == {
        "health_checks": 10,
        "health_check_failures": 3,
        "endpoints_marked_unhealthy": 1,
        "endpoints_marked_healthy": 1,
    }


async def test_a_pass_resets_the_failure_count(make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    codes = [503, 503, 200, 503, 503]
    respx_mock.get(f"{A}/healthz").mock(side_effect=[httpx.Response(c) for c in codes])
    mesh = make_mesh(_config([A]))
    checker = _checker(mesh)
    for _ in codes:
        checker.check_once()
        assert _states(mesh)[A].healthy


async def test_the_probe_uses_path_query_get_and_a_user_agent(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter
) -> None:
    probe = respx_mock.get(f"{A}/status/ready", params={"full": "1"}).mock(return_value=httpx.Response(200))
    mesh = make_mesh(_config([A], path="/status/ready?full=1"))
    _checker(mesh).check_once()
    request = probe.calls.last.request
    assert request.method == "GET"
    assert str(request.url) == f"{A}/status/ready?full=1"
    assert request.headers["user-agent"].startswith("meshlib-health-check/")


async def test_expected_statuses_pass_and_anything_else_fails_redirects_included(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{A}/healthz").mock(return_value=httpx.Response(204))
    # Not followed: a redirect's target is not mocked, so following it would fail the test loudly.
    respx_mock.get(f"{B}/healthz").mock(return_value=httpx.Response(301, headers={"location": "/elsewhere"}))
    mesh = make_mesh(_config(expected_statuses=[200, 204], unhealthy_threshold=1))
    _checker(mesh).check_once()
    assert (_states(mesh)[A].healthy, _states(mesh)[B].healthy) == (True, False)


async def test_connect_errors_and_timeouts_fail_probes_and_no_endpoint_left_means_no_healthy_upstream(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{A}/healthz").mock(side_effect=httpx.ConnectError("refused"))
    respx_mock.get(f"{B}/healthz").mock(side_effect=httpx.ReadTimeout("timed out"))
    mesh = make_mesh(_config(unhealthy_threshold=1))
    _checker(mesh).check_once()
    assert _counters(mesh)["health_check_failures"] == 2
    async with caller(mesh) as client:
        with pytest.raises(meshlib.NoHealthyUpstreamError):
            await client.get("http://reviews/x")
    assert _counters(mesh)["no_healthy_upstream"] == 1


async def test_one_endpoint_ejected_and_the_other_unhealthy_means_no_healthy_upstream(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{A}/healthz").mock(return_value=httpx.Response(200))
    respx_mock.get(f"{B}/healthz").mock(return_value=httpx.Response(503))
    respx_mock.get(f"{A}/x").mock(return_value=httpx.Response(500))
    config = _config(unhealthy_threshold=1)
    config["clusters"]["reviews"]["outlier_detection"] = {"consecutive_5xx": 1, "max_ejection_percent": 100}
    mesh = make_mesh(config)
    _checker(mesh).check_once()
    async with caller(mesh) as client:
        assert (await client.get("http://reviews/x")).status_code == 500  # A, ejected by this answer
        with pytest.raises(meshlib.NoHealthyUpstreamError, match="2 of 2 ejected or unhealthy"):
            await client.get("http://reviews/x")


async def test_the_background_thread_probes_every_interval_and_stops_on_close(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter
) -> None:
    probe_a = respx_mock.get(f"{A}/healthz").mock(return_value=httpx.Response(503))
    respx_mock.get(f"{B}/healthz").mock(return_value=httpx.Response(200))
    mesh = make_mesh(_config(interval="20ms", unhealthy_threshold=2, healthy_threshold=1))
    checker = _checker(mesh)
    assert checker.running
    wait_for(lambda: not _states(mesh)[A].healthy)
    probe_a.mock(return_value=httpx.Response(200))
    wait_for(lambda: _states(mesh)[A].healthy)

    started = time.monotonic()
    checker.close()
    assert time.monotonic() - started < 0.5  # woken from its wait, not left to finish it
    assert not checker.running
    checks = _counters(mesh)["health_checks"]
    checker.check_once()  # closed: does nothing
    checker.close()  # idempotent
    assert _counters(mesh)["health_checks"] == checks


async def test_close_returns_the_endpoints_it_judged_to_the_load_balancer(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{A}/healthz").mock(return_value=httpx.Response(503))
    mesh = make_mesh(_config([A], unhealthy_threshold=1))
    checker = _checker(mesh)
    checker.check_once()
    assert not _states(mesh)[A].healthy
    checker.close()
    assert _states(mesh)[A].healthy


async def test_a_reload_that_removes_the_cluster_closes_its_checker(make_mesh: MakeMesh) -> None:
    config = _config(interval="20ms")
    config["clusters"]["ratings"] = {"endpoints": [B]}
    mesh = make_mesh(config)
    checker = _checker(mesh)
    assert checker.running
    mesh.reload({"clusters": {"ratings": {"endpoints": [B]}}})
    assert not checker.running


async def test_a_reload_that_removes_the_health_check_brings_unhealthy_endpoints_back(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, traffic: respx.Route
) -> None:
    respx_mock.get(f"{A}/healthz").mock(return_value=httpx.Response(503))
    respx_mock.get(f"{B}/healthz").mock(return_value=httpx.Response(200))
    mesh = make_mesh(_config(unhealthy_threshold=1))
    checker = _checker(mesh)
    checker.check_once()
    # Outlier detection stays on, so the pick still looks at health: only the reload can bring A back.
    mesh.reload({"clusters": {"reviews": {"endpoints": [A, B], "outlier_detection": {}}}})
    assert not checker.running
    async with caller(mesh) as client:
        assert sorted(await _ports(client, 2)) == [9081, 9082]


async def test_a_reload_that_changes_the_health_check_keeps_the_verdicts(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, traffic: respx.Route
) -> None:
    probe_a = respx_mock.get(f"{A}/healthz").mock(return_value=httpx.Response(503))
    respx_mock.get(f"{B}/healthz").mock(return_value=httpx.Response(200))
    mesh = make_mesh(_config(unhealthy_threshold=1))
    old = _checker(mesh)
    old.check_once()
    mesh.reload(_config(unhealthy_threshold=1, healthy_threshold=3))
    new = _checker(mesh)
    assert new is not old
    assert not old.running
    assert new.running
    async with caller(mesh) as client:
        assert await _ports(client, 2) == [9082] * 2
        probe_a.mock(return_value=httpx.Response(200))
        for _ in range(3):
            assert not _states(mesh)[A].healthy
            new.check_once()
        assert sorted(await _ports(client, 2)) == [9081, 9082]


async def test_a_reload_that_keeps_the_health_check_keeps_the_checker(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(_config())
    checker = _checker(mesh)
    mesh.reload({**_config(), "routes": [{"match": {"host": "reviews.example"}, "cluster": "reviews"}]})
    assert _checker(mesh) is checker
    assert checker.running


def _direct_checker(endpoints: list[Endpoint], cluster: ClusterState) -> HealthChecker:
    config = HealthCheckConfig(interval="1h", unhealthy_threshold=1, healthy_threshold=1)
    return HealthChecker(config, cluster, endpoints, SystemClock())


async def test_a_newer_checker_takes_the_endpoints_over(respx_mock: respx.MockRouter) -> None:
    """The old checker may neither judge nor, on close, reset an endpoint that a newer one judges."""
    respx_mock.get(f"{A}/healthz").mock(return_value=httpx.Response(503))
    endpoints = [Endpoint(A, 1, httpx.URL(A))]
    state = endpoints[0].state
    old_cluster, new_cluster = ClusterState("reviews"), ClusterState("reviews")
    old = _direct_checker(endpoints, old_cluster)
    new = _direct_checker(endpoints, new_cluster)
    try:
        old.start()
        new.start()  # started last: the endpoints are the new one's to judge
        old.check_once()
        assert state.healthy
        assert old_cluster.counters() == {}
        new.check_once()
        assert not state.healthy
        old.close()
        assert not state.healthy
    finally:
        old.close()
        new.close()
    assert state.healthy


async def test_each_flip_is_logged_once_warning_out_info_back(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshlib.health")
    probe = respx_mock.get(f"{A}/healthz").mock(return_value=httpx.Response(503))
    mesh = make_mesh(_config([A]))
    checker = _checker(mesh)
    for _ in range(6):  # three rounds past the threshold: still one line
        checker.check_once()
    probe.mock(return_value=httpx.Response(200))
    for _ in range(4):
        checker.check_once()
    flips = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert flips == [
        ("WARNING", f"cluster 'reviews': endpoint {A} is unhealthy: out of the load balancer"),
        ("INFO", f"cluster 'reviews': endpoint {A} is healthy again: back in the load balancer"),
    ]
