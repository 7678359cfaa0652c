"""``rate_limit`` in memory, through the whole engine: refusals before any I/O, scopes, strategies, windows, reloads.

limits reads the wall clock (``time.time``), so time_machine moves it instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
import time_machine

import meshlib
from meshlib.testing import FakeClock
from tests.conftest import Caller, MakeMesh, outcomes

pytestmark = pytest.mark.anyio

ENDPOINT = "http://127.0.0.1:9081"
# A whole minute since the epoch: limits' sliding windows are aligned to multiples of their period.
START = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def traveller() -> Iterator[time_machine.Traveller]:
    """The wall clock frozen at START (on the minute); ``traveller.shift(s)`` moves it."""
    with time_machine.travel(START, tick=False) as coordinates:
        yield coordinates


def _config(rate_limit: dict[str, Any] | None = None, routes: list[dict[str, Any]] | None = None, **cluster: Any):
    reviews: dict[str, Any] = {"endpoints": [ENDPOINT], **cluster}
    if rate_limit is not None:
        reviews["rate_limit"] = rate_limit
    return {"clusters": {"reviews": reviews}, "routes": routes or []}


def _counters(mesh: meshlib.Mesh) -> dict[str, int]:
    counters: dict[str, int] = mesh.stats()["clusters"]["reviews"]["counters"]
    return counters


_outcomes = outcomes


async def test_requests_over_the_rate_are_refused_without_touching_the_network(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, traveller: time_machine.Traveller
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/x").respond(200)
    mesh = make_mesh(_config({"rate": "3/minute"}))
    async with caller(mesh) as client:
        for _ in range(3):
            assert (await client.get("http://reviews/x")).status_code == 200
        with pytest.raises(meshlib.RateLimitedError) as refused:
            await client.get("http://reviews/x")
    error = refused.value
    assert isinstance(error, httpx.TransportError)
    assert isinstance(error, meshlib.MeshError)
    assert (error.code, error.cluster, error.route) == ("rate_limited", "reviews", "cluster:reviews")
    assert "3/minute" in str(error)
    assert upstream.call_count == 3
    assert _counters(mesh)["rate_limited"] == 1


async def test_limit_recovers_after_the_window(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, traveller: time_machine.Traveller
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/").respond(200)
    mesh = make_mesh(_config({"rate": "2/minute"}))
    async with caller(mesh) as client:
        assert await _outcomes(client, "http://reviews/", 3) == [200, 200, "rate_limited"]
        traveller.shift(59)
        assert await _outcomes(client, "http://reviews/", 1) == ["rate_limited"]
        traveller.shift(2)
        assert await _outcomes(client, "http://reviews/", 3) == [200, 200, "rate_limited"]
    assert upstream.call_count == 4
    assert _counters(mesh)["rate_limited"] == 3


@pytest.mark.parametrize(
    ("strategy", "passed_at_62s"),
    [
        # Its window began with the first hit (1 s) and ended at 61 s: the whole rate again.
        ("fixed-window", 10),
        # The 5 hits of 1 s have left the last 60 s, the 5 of 31 s have not.
        ("moving-window", 5),
        # All 10 hits were in the previous aligned window [0, 60), which still weighs 58/60: 9.67, so 1 is left.
        ("sliding-window-counter", 1),
    ],
)
async def test_each_strategy_counts_its_own_way(
    make_mesh: MakeMesh,
    caller: Caller,
    respx_mock: respx.MockRouter,
    traveller: time_machine.Traveller,
    strategy: str,
    passed_at_62s: int,
) -> None:
    respx_mock.get(f"{ENDPOINT}/").respond(200)
    mesh = make_mesh(_config({"rate": "10/minute", "strategy": strategy}))
    async with caller(mesh) as client:
        traveller.shift(1)
        assert await _outcomes(client, "http://reviews/", 5) == [200] * 5
        traveller.shift(30)
        assert await _outcomes(client, "http://reviews/", 6) == [200] * 5 + ["rate_limited"]
        traveller.shift(31)
        assert await _outcomes(client, "http://reviews/", 11) == [200] * passed_at_62s + ["rate_limited"] * (
            11 - passed_at_62s
        )
        # Two whole periods later every strategy has forgotten all of it.
        traveller.shift(125)
        assert await _outcomes(client, "http://reviews/", 11) == [200] * 10 + ["rate_limited"]


async def test_every_rate_of_a_limit_applies(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, traveller: time_machine.Traveller
) -> None:
    respx_mock.get(f"{ENDPOINT}/").respond(200)
    mesh = make_mesh(_config({"rate": "2/minute;3/hour"}))
    async with caller(mesh) as client:
        assert await _outcomes(client, "http://reviews/", 3) == [200, 200, "rate_limited"]
        traveller.shift(61)
        # The minute's rate is back, but only one request is left of the hour's.
        assert await _outcomes(client, "http://reviews/", 2) == [200, "rate_limited"]


async def test_routes_into_one_cluster_share_its_limit(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, traveller: time_machine.Traveller
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/").respond(200)
    routes = [{"match": {"host": host}, "cluster": "reviews"} for host in ("a.example", "b.example")]
    mesh = make_mesh(_config({"rate": "3/minute"}, routes))
    async with caller(mesh) as client:
        assert await _outcomes(client, "http://a.example/", 2) == [200, 200]
        assert await _outcomes(client, "http://b.example/", 2) == [200, "rate_limited"]
        # The cluster's own implicit route (its name as host) is one more way in, under the same limit.
        assert await _outcomes(client, "http://reviews/", 1) == ["rate_limited"]
        assert await _outcomes(client, "http://a.example/", 1) == ["rate_limited"]
    assert upstream.call_count == 3


async def test_route_limit_overrides_the_clusters_and_counts_apart(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, traveller: time_machine.Traveller
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/").respond(200)
    routes = [
        {
            "name": "search",
            "match": {"host": "search.example"},
            "cluster": "reviews",
            "rate_limit": {"rate": "3/minute"},
        },
        {"name": "plain", "match": {"host": "plain.example"}, "cluster": "reviews"},
    ]
    mesh = make_mesh(_config({"rate": "1/minute"}, routes))
    async with caller(mesh) as client:
        # The route's 3/minute replaces the cluster's 1/minute for that route...
        assert await _outcomes(client, "http://search.example/", 4) == [200, 200, 200, "rate_limited"]
        # ... and did not spend the cluster's limit, which the other route still has whole.
        assert await _outcomes(client, "http://plain.example/", 2) == [200, "rate_limited"]
        with pytest.raises(meshlib.RateLimitedError) as refused:
            await client.get("http://search.example/")
    assert refused.value.route == "search"
    assert "route:search" in str(refused.value)
    assert upstream.call_count == 4
    assert _counters(mesh)["rate_limited"] == 3


async def test_a_request_costs_one_hit_however_many_tries_it_takes(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, traveller: time_machine.Traveller
) -> None:
    flaky = [httpx.Response(503), httpx.Response(503), httpx.Response(200)]
    upstream = respx_mock.get(f"{ENDPOINT}/").mock(side_effect=flaky * 2)
    config = _config({"rate": "2/minute"}, retry={"attempts": 3, "retry_on": ["5xx"]})
    mesh = make_mesh(config, clock=FakeClock())
    async with caller(mesh) as client:
        assert await _outcomes(client, "http://reviews/", 3) == [200, 200, "rate_limited"]
    assert upstream.call_count == 6
    counters = _counters(mesh)
    assert (counters["retries"], counters["rate_limited"]) == (4, 1)


async def test_sync_and_async_clients_of_one_mesh_share_its_limit(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, traveller: time_machine.Traveller
) -> None:
    respx_mock.get(f"{ENDPOINT}/").respond(200)
    mesh = make_mesh(_config({"rate": "3/minute"}))
    with mesh.client() as sync_client:
        async with mesh.async_client() as async_client:
            assert sync_client.get("http://reviews/").status_code == 200
            assert (await async_client.get("http://reviews/")).status_code == 200
            assert sync_client.get("http://reviews/").status_code == 200
            with pytest.raises(meshlib.RateLimitedError):
                await async_client.get("http://reviews/")
            with pytest.raises(meshlib.RateLimitedError):
                sync_client.get("http://reviews/")


async def test_two_meshes_in_memory_count_apart(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, traveller: time_machine.Traveller
) -> None:
    respx_mock.get(f"{ENDPOINT}/").respond(200)
    first, second = make_mesh(_config({"rate": "1/minute"})), make_mesh(_config({"rate": "1/minute"}))
    with first.client() as one, second.client() as two:
        assert one.get("http://reviews/").status_code == 200
        assert two.get("http://reviews/").status_code == 200
        with pytest.raises(meshlib.RateLimitedError):
            one.get("http://reviews/")


async def test_reload_keeps_the_count_while_the_limit_is_unchanged_and_starts_over_when_it_changes(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, traveller: time_machine.Traveller
) -> None:
    respx_mock.get(f"{ENDPOINT}/").respond(200)
    mesh = make_mesh(_config({"rate": "2/minute"}))
    async with caller(mesh) as client:
        assert await _outcomes(client, "http://reviews/", 3) == [200, 200, "rate_limited"]
        # Another setting of the cluster changes; the limit does not: its count goes on.
        mesh.reload(_config({"rate": "2/minute"}, timeout="5s"))
        assert await _outcomes(client, "http://reviews/", 1) == ["rate_limited"]
        # Same rate, another strategy: a new limiter, which starts from zero.
        mesh.reload(_config({"rate": "2/minute", "strategy": "fixed-window"}, timeout="5s"))
        assert await _outcomes(client, "http://reviews/", 3) == [200, 200, "rate_limited"]
        # Back to the first limit: also new, also from zero.
        mesh.reload(_config({"rate": "2/minute"}))
        assert await _outcomes(client, "http://reviews/", 3) == [200, 200, "rate_limited"]
    assert _counters(mesh)["rate_limited"] == 4


async def test_no_rate_limit_no_filter(make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    respx_mock.get(f"{ENDPOINT}/").respond(200)
    mesh = make_mesh(_config())
    with mesh.client() as client:
        assert [client.get("http://reviews/").status_code for _ in range(50)] == [200] * 50
    assert "rate_limit" not in mesh.snapshot.routes.routes[0].legs["reviews"].filter_names
