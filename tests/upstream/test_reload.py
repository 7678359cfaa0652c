"""Reload: new requests see the new config; live state of clusters and endpoints that remain is kept."""

from __future__ import annotations

from typing import Any

import pytest
import respx

import meshlib
from tests.conftest import Caller, MakeMesh

pytestmark = pytest.mark.anyio

A, B, C = "http://127.0.0.1:9081", "http://127.0.0.1:9082", "http://127.0.0.1:9083"


def _config(route_to: str, **clusters: list[str]) -> dict[str, Any]:
    return {
        "clusters": {name: {"endpoints": endpoints} for name, endpoints in clusters.items()},
        "routes": [{"match": {"host": "reviews"}, "cluster": route_to}],
    }


def _requests(mesh: meshlib.Mesh, cluster: str) -> dict[str, int]:
    return {url: e["requests"] for url, e in mesh.stats()["clusters"][cluster]["endpoints"].items()}


async def test_reload_changes_routing_for_new_requests_of_existing_clients(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(_config("v1", v1=[A], v2=[B]))
    async with caller(mesh) as client:
        assert (await client.get("http://reviews/")).json()["port"] == 9081
        snapshot = mesh.reload(_config("v2", v1=[A], v2=[B]))
        assert mesh.snapshot is snapshot
        assert snapshot.version == 2
        assert (await client.get("http://reviews/")).json()["port"] == 9082


async def test_reload_keeps_endpoint_state_of_clusters_that_remain(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(_config("v1", v1=[A, B], v2=[C]))
    async with caller(mesh) as client:
        for _ in range(4):
            await client.get("http://reviews/")
        await client.get("http://v2/")
        mesh.reload(_config("v1", v1=[A, B]))
        assert _requests(mesh, "v1") == {A: 2, B: 2}
        assert "v2" not in mesh.stats()["clusters"]
        await client.get("http://reviews/")
        assert sum(_requests(mesh, "v1").values()) == 5


async def test_state_of_a_removed_cluster_is_dropped(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(_config("v1", v1=[A], v2=[C]))
    async with caller(mesh) as client:
        await client.get("http://v2/")
        assert _requests(mesh, "v2") == {C: 1}
        mesh.reload(_config("v1", v1=[A]))
        mesh.reload(_config("v1", v1=[A], v2=[C]))
        assert _requests(mesh, "v2") == {C: 0}


async def test_endpoint_removed_from_a_cluster_loses_its_state(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(_config("v1", v1=[A, B]))
    async with caller(mesh) as client:
        for _ in range(2):
            await client.get("http://reviews/")
        mesh.reload(_config("v1", v1=[A]))
        mesh.reload(_config("v1", v1=[A, B]))
    assert _requests(mesh, "v1") == {A: 1, B: 0}


async def test_a_response_open_across_a_reload_is_released_on_the_kept_state(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(_config("v1", v1=[A]))
    async with caller(mesh) as client:
        held = await client.open_stream("GET", "http://reviews/")
        mesh.reload(_config("v1", v1=[A], v2=[B]))
        assert mesh.stats()["clusters"]["v1"]["endpoints"][A]["in_flight"] == 1
        await client.close_response(held)
    assert {"in_flight": 0, "requests": 1}.items() <= mesh.stats()["clusters"]["v1"]["endpoints"][A].items()


def test_invalid_reload_raises_config_error_and_keeps_the_current_config(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(_config("v1", v1=[A]))
    before = mesh.snapshot
    with pytest.raises(meshlib.ConfigError, match=r"routes\[0\]\.cluster"):
        mesh.reload(_config("missing", v1=[A]))
    assert mesh.snapshot is before
    assert mesh.stats()["version"] == 1


def test_reload_accepts_a_mesh_config(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(_config("v1", v1=[A]))
    config = meshlib.MeshConfig.from_dict(_config("v2", v1=[A], v2=[B]))
    mesh.reload(config)
    assert mesh.config is config
    assert set(mesh.stats()["clusters"]) == {"v1", "v2"}
