"""Load balancing through the whole engine, sync and async: respx routes on endpoint URLs show each pick."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import respx

from tests.conftest import Caller, MakeMesh, MeshCaller

pytestmark = pytest.mark.anyio

A, B, C = "http://127.0.0.1:9081", "http://127.0.0.1:9082", "http://127.0.0.1:9083"


def _mesh_config(**cluster: Any) -> dict[str, Any]:
    return {"clusters": {"reviews": cluster}}


async def _ports(client: MeshCaller, n: int, **kwargs: Any) -> list[int]:
    return [(await client.get("http://reviews/", **kwargs)).json()["port"] for _ in range(n)]


async def test_round_robin_alternates_endpoints(make_mesh: MakeMesh, caller: Caller, loopback: respx.Route) -> None:
    mesh = make_mesh(_mesh_config(endpoints=[A, B], lb="round_robin"))
    async with caller(mesh) as client:
        assert await _ports(client, 6) == [9081, 9082] * 3


async def test_weighted_round_robin_through_the_engine(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(_mesh_config(endpoints=[{"url": A, "weight": 3}, B], lb="round_robin"))
    async with caller(mesh) as client:
        ports = await _ports(client, 40)
    assert Counter(ports) == {9081: 30, 9082: 10}
    assert all(ports[i : i + 4].count(9082) == 1 for i in range(0, 40, 4))


async def test_random_through_the_engine_is_weighted(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(_mesh_config(endpoints=[{"url": A, "weight": 4}, B], lb="random"), seed=1)
    async with caller(mesh) as client:
        counts = Counter(await _ports(client, 500))
    assert abs(counts[9081] / 500 - 0.8) <= 0.08


async def test_least_request_avoids_an_endpoint_with_an_open_response(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    """A streamed response held open keeps its endpoint busy, so the next requests go to the other one."""
    mesh = make_mesh(_mesh_config(endpoints=[A, B], lb="least_request"), seed=2)
    async with caller(mesh) as client:
        held = await client.open_stream("GET", "http://reviews/")
        in_flight = {url: e["in_flight"] for url, e in mesh.stats()["clusters"]["reviews"]["endpoints"].items()}
        (busy,) = (url for url, n in in_flight.items() if n == 1)
        (free,) = {A, B} - {busy}
        assert set(await _ports(client, 20)) == {int(free.rsplit(":", 1)[1])}
        await client.close_response(held)
        assert set(await _ports(client, 40)) == {9081, 9082}
    assert all(e["in_flight"] == 0 for e in mesh.stats()["clusters"]["reviews"]["endpoints"].values())


async def test_least_request_steers_most_traffic_away_from_busy_endpoints(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    """With three endpoints, two held busy: two random choices include the idle one two times in three."""
    mesh = make_mesh(_mesh_config(endpoints=[A, B, C], lb="least_request"), seed=3)
    async with caller(mesh) as client:
        held = [await client.open_stream("GET", "http://reviews/") for _ in range(2)]
        endpoints = mesh.stats()["clusters"]["reviews"]["endpoints"]
        assert sorted(e["in_flight"] for e in endpoints.values()) == [0, 1, 1]
        (free,) = (url for url, e in endpoints.items() if e["in_flight"] == 0)
        counts = Counter(await _ports(client, 300))
        for response in held:
            await client.close_response(response)
    assert abs(counts[int(free.rsplit(":", 1)[1])] / 300 - 2 / 3) <= 0.1


async def test_ring_hash_keeps_each_user_on_one_endpoint(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(_mesh_config(endpoints=[A, B, C], lb="ring_hash", hash_on={"header": "x-user"}))
    async with caller(mesh) as client:
        homes = {user: set(await _ports(client, 5, headers={"x-user": user})) for user in map(str, range(30))}
    assert all(len(ports) == 1 for ports in homes.values())
    assert set().union(*homes.values()) == {9081, 9082, 9083}


async def test_ring_hash_on_a_cookie_through_the_engine(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(_mesh_config(endpoints=[A, B, C], lb="ring_hash", hash_on={"cookie": "session"}))
    async with caller(mesh) as client:
        homes = {
            s: set(await _ports(client, 5, headers={"cookie": f"theme=dark; session={s}"})) for s in map(str, range(30))
        }
    assert all(len(ports) == 1 for ports in homes.values())
    assert len(set().union(*homes.values())) == 3


async def test_sync_and_async_ring_hash_agree(make_mesh: MakeMesh, loopback: respx.Route) -> None:
    config = _mesh_config(endpoints=[A, B, C], lb="ring_hash", hash_on={"header": "x-user"})
    users = [f"u{i}" for i in range(40)]
    with make_mesh(config).client() as client:
        sync_homes = [client.get("http://reviews/", headers={"x-user": u}).json()["port"] for u in users]
    async with make_mesh(config).async_client() as aclient:
        async_homes = [(await aclient.get("http://reviews/", headers={"x-user": u})).json()["port"] for u in users]
    assert sync_homes == async_homes
