"""``fault``: delays on the mesh clock and local aborts, each drawn independently per request, by percent."""

from __future__ import annotations

import random
import time
from typing import Any

import httpx
import pytest
import respx

import meshlib
from meshlib._config.resilience import FaultConfig
from meshlib._policies.fault import ABORT_BODY, FaultPolicy
from meshlib.testing import FakeClock, MeshFactory
from tests.conftest import Caller

pytestmark = pytest.mark.anyio

ENDPOINT = "http://127.0.0.1:9081"
SHADOW = "http://127.0.0.1:9091"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _mesh(mesh_factory: MeshFactory, clock: FakeClock, fault: dict[str, Any], **route: Any) -> meshlib.Mesh:
    config = {
        "clusters": {"reviews": {"endpoints": [ENDPOINT], **route.pop("cluster", {})}},
        "routes": [{"match": {"host": "reviews"}, "cluster": "reviews", "fault": fault, **route}],
    }
    return mesh_factory(config, clock=clock)


def _counters(mesh: meshlib.Mesh, cluster: str = "reviews") -> dict[str, int]:
    counters: dict[str, int] = mesh.stats()["clusters"][cluster]["counters"]
    return counters


def test_policy_draws_delay_and_abort_independently_by_percent() -> None:
    config = FaultConfig.model_validate(
        {"delay": {"duration": "2s", "percent": 20}, "abort": {"status": 503, "percent": 30}}
    )
    policy = FaultPolicy.from_config(config, random.Random(0))
    n = 20_000
    rolls = [policy.roll() for _ in range(n)]
    delayed = sum(1 for f in rolls if f.delay)
    aborted = sum(1 for f in rolls if f.abort is not None)
    both = sum(1 for f in rolls if f.delay and f.abort is not None)
    assert abs(delayed / n - 0.20) < 0.02
    assert abs(aborted / n - 0.30) < 0.02
    assert abs(both / n - 0.20 * 0.30) < 0.02  # independent draws: both happen to about 6% of requests
    assert {f.delay for f in rolls} == {0.0, 2.0}
    assert {f.abort for f in rolls} == {None, 503}


@pytest.mark.parametrize(("percent", "expected"), [(0, None), (100, 500)])
def test_zero_and_hundred_percent_are_exact(percent: float, expected: int | None) -> None:
    config = FaultConfig.model_validate({"abort": {"status": 500, "percent": percent}})
    policy = FaultPolicy.from_config(config, random.Random(0))
    assert {policy.roll().abort for _ in range(1000)} == {expected}


async def test_delays_and_aborts_hit_their_share_of_requests(
    mesh_factory: MeshFactory, clock: FakeClock, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/x").mock(return_value=httpx.Response(200))
    fault = {"delay": {"duration": "1s", "percent": 20}, "abort": {"status": 503, "percent": 30}}
    mesh = _mesh(mesh_factory, clock, fault)
    n = 3000
    async with caller(mesh) as client:
        statuses = [(await client.get("http://reviews/x")).status_code for _ in range(n)]
    aborted = statuses.count(503)
    assert abs(aborted / n - 0.30) < 0.02
    assert abs(len(clock.sleeps) / n - 0.20) < 0.02
    assert set(clock.sleeps) == {1.0}
    assert upstream.call_count == n - aborted == statuses.count(200)
    assert _counters(mesh) == {"faults_aborted": aborted, "faults_delayed": len(clock.sleeps)}


async def test_an_abort_answers_locally_and_reaches_no_mirror_retry_or_breaker(
    mesh_factory: MeshFactory, clock: FakeClock, caller: Caller
) -> None:
    resilient = {
        "retry": {"attempts": 3, "retry_on": ["5xx"]},
        "circuit_breaker": {"failure_threshold": 1},
    }
    config = {
        "clusters": {"reviews": {"endpoints": [ENDPOINT], **resilient}, "shadow": {"endpoints": [SHADOW]}},
        "routes": [
            {
                "match": {"host": "reviews"},
                "cluster": "reviews",
                "fault": {"abort": {"status": 503, "percent": 100}},
                "mirror": {"cluster": "shadow"},
            }
        ],
    }
    mesh = mesh_factory(config, clock=clock)
    with respx.mock(assert_all_called=False) as router:
        upstream = router.route(host="127.0.0.1").mock(return_value=httpx.Response(200))
        async with caller(mesh) as client:
            responses = [await client.get("http://reviews/x") for _ in range(3)]
    assert upstream.call_count == 0
    for response in responses:
        assert response.status_code == 503
        assert response.content == ABORT_BODY == b"fault filter abort"
        assert response.headers["content-type"] == "text/plain"
        assert response.headers["x-meshlib-fault"] == "abort"
    stats = mesh.stats()["clusters"]
    assert stats["reviews"]["counters"] == {"faults_aborted": 3}  # no retries, no breaker transition
    assert stats["reviews"]["circuit_breaker"]["state"] == "closed"
    assert stats["shadow"]["counters"] == {}  # nothing was mirrored
    assert clock.sleeps == []


async def test_head_abort_has_no_body(mesh_factory: MeshFactory, clock: FakeClock, caller: Caller) -> None:
    mesh = _mesh(mesh_factory, clock, {"abort": {"status": 418}})
    async with caller(mesh) as client:
        response = await client.request("HEAD", "http://reviews/x")
    assert response.status_code == 418
    assert response.content == b""
    assert response.headers["content-length"] == str(len(ABORT_BODY))


async def test_a_delay_sleeps_on_the_mesh_clock(
    mesh_factory: MeshFactory, clock: FakeClock, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/x").mock(return_value=httpx.Response(200, text="ok"))
    mesh = _mesh(mesh_factory, clock, {"delay": {"duration": "30s"}})
    started = time.monotonic()
    async with caller(mesh) as client:
        response = await client.get("http://reviews/x")
    assert time.monotonic() - started < 5  # the fake clock records the sleep; nothing really waits 30 s
    assert response.text == "ok"
    assert clock.sleeps == [30.0]
    assert upstream.call_count == 1
    assert _counters(mesh) == {"faults_delayed": 1}


async def test_delay_then_abort_on_the_same_request(
    mesh_factory: MeshFactory, clock: FakeClock, caller: Caller
) -> None:
    mesh = _mesh(mesh_factory, clock, {"delay": {"duration": "250ms"}, "abort": {"status": 500}})
    async with caller(mesh) as client:
        response = await client.get("http://reviews/x")
    assert response.status_code == 500
    assert clock.sleeps == [0.25]
    assert _counters(mesh) == {"faults_aborted": 1, "faults_delayed": 1}


async def test_the_delay_does_not_count_against_the_route_timeout(
    mesh_factory: MeshFactory, clock: FakeClock, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    """The timeout starts in the cluster leg, below the fault filter (as Envoy's starts at the router)."""
    respx_mock.get(f"{ENDPOINT}/x").mock(return_value=httpx.Response(200))
    mesh = _mesh(mesh_factory, clock, {"delay": {"duration": "5s"}}, cluster={"timeout": "1s"})
    async with caller(mesh) as client:
        assert (await client.get("http://reviews/x")).status_code == 200
    assert clock.sleeps == [5.0]


async def test_faults_are_counted_on_every_cluster_of_a_split_route(
    mesh_factory: MeshFactory, clock: FakeClock, caller: Caller
) -> None:
    config = {
        "clusters": {"v1": {"endpoints": [ENDPOINT]}, "v2": {"endpoints": [SHADOW]}, "other": {"endpoints": [SHADOW]}},
        "routes": [
            {
                "match": {"host": "reviews"},
                "split": [{"cluster": "v1", "weight": 50}, {"cluster": "v2", "weight": 50}],
                "fault": {"abort": {"status": 503}},
            }
        ],
    }
    mesh = mesh_factory(config, clock=clock)
    async with caller(mesh) as client:
        for _ in range(4):
            assert (await client.get("http://reviews/x")).status_code == 503
    stats = mesh.stats()["clusters"]
    assert stats["v1"]["counters"] == stats["v2"]["counters"] == {"faults_aborted": 4}
    assert stats["other"]["counters"] == {}
