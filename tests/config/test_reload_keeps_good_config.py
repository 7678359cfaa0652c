"""A config that fails validation never replaces a good one: reload raises and the mesh keeps routing as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

import meshlib
from meshlib import ConfigError, Mesh, MeshConfig
from meshlib._config.models import EMPTY_CONFIG
from tests.conftest import MakeMesh

V1 = "http://127.0.0.1:9081"
V2 = "http://127.0.0.1:9082"


def _config(endpoint: str) -> dict[str, Any]:
    return {"service": "frontend", "clusters": {"reviews": {"endpoints": [endpoint]}}}


BAD_RELOADS = [
    pytest.param({**_config(V2), "bogus": True}, [("bogus", "unknown key 'bogus'")], id="unknown-key"),
    pytest.param(
        {**_config(V2), "routes": [{"match": {"host": "reviews"}, "cluster": "reviews-v3"}]},
        [("routes[0].cluster", "unknown cluster 'reviews-v3'")],
        id="unknown-cluster",
    ),
    pytest.param(
        {"clusters": {"reviews": {"endpoints": []}}},
        [("clusters.reviews.endpoints", "must not be empty")],
        id="no-endpoints",
    ),
    pytest.param(
        {"clusters": {"reviews": {"endpoints": [V2 + "/api"]}}},
        [("clusters.reviews.endpoints[0].url", f"URL '{V2}/api' must be scheme://host[:port] only")],
        id="endpoint-with-path",
    ),
    pytest.param([_config(V2)], [("", "the config must be a mapping, got list")], id="not-a-mapping"),
    # Dropping every route and cluster at once is far likelier a truncated file than a wish.
    pytest.param({}, [("", EMPTY_CONFIG)], id="empty"),
    pytest.param(
        {"service": "frontend", "outbound_policy": "registry_only"}, [("", EMPTY_CONFIG)], id="nothing-to-route"
    ),
    pytest.param({"clusters": {}, "routes": []}, [("", EMPTY_CONFIG)], id="no-clusters-no-routes"),
    pytest.param(None, [("", "the config must be a mapping, got null")], id="null"),
]


@pytest.mark.parametrize(("bad", "errors"), BAD_RELOADS)
def test_a_bad_reload_raises_and_the_old_config_keeps_routing(
    bad: Any, errors: list[tuple[str, str]], make_mesh: MakeMesh
) -> None:
    mesh = make_mesh(_config(V1))
    with respx.mock, mesh.client() as client:
        v1 = respx.get(f"{V1}/x").mock(return_value=httpx.Response(200, text="v1"))
        v2 = respx.get(f"{V2}/x").mock(return_value=httpx.Response(200, text="v2"))
        assert client.get("http://reviews/x").text == "v1"
        config, snapshot = mesh.config, mesh.snapshot

        with pytest.raises(ConfigError) as info:
            mesh.reload(bad)

        assert [path for path, _ in info.value.errors] == [path for path, _ in errors]
        for (_, message), (_, start) in zip(info.value.errors, errors, strict=True):
            assert message.startswith(start)
        assert mesh.config is config
        assert mesh.snapshot is snapshot
        assert mesh.stats()["version"] == 1
        assert client.get("http://reviews/x").text == "v1"
        assert v1.call_count == 2
        assert not v2.called


def test_a_good_reload_takes_effect_and_a_later_bad_one_keeps_it(make_mesh: MakeMesh) -> None:
    """The control case: reload does swap configs, so the test above shows the bad one was refused, not ignored."""
    mesh = make_mesh(_config(V1))
    with respx.mock, mesh.client() as client:
        v1 = respx.get(f"{V1}/x").mock(return_value=httpx.Response(200, text="v1"))
        v2 = respx.get(f"{V2}/x").mock(return_value=httpx.Response(200, text="v2"))
        assert client.get("http://reviews/x").text == "v1"

        mesh.reload(MeshConfig.from_dict(_config(V2)))
        assert client.get("http://reviews/x").text == "v2"
        assert mesh.stats()["version"] == 2

        with pytest.raises(ConfigError):
            mesh.reload({"clusters": {"reviews": {"endpoints": [V1], "lb": "fastest"}}})
        assert client.get("http://reviews/x").text == "v2"
        assert mesh.stats()["version"] == 2
        assert (v1.call_count, v2.call_count) == (1, 2)


@pytest.mark.anyio
async def test_a_bad_reload_keeps_the_async_client_routing(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(_config(V1))
    with respx.mock:
        v1 = respx.get(f"{V1}/x").mock(return_value=httpx.Response(200, text="v1"))
        async with mesh.async_client() as client:
            assert (await client.get("http://reviews/x")).text == "v1"
            with pytest.raises(ConfigError):
                mesh.reload({"clusters": {"reviews": {"endpoints": ["ftp://127.0.0.1:9082"]}}})
            assert (await client.get("http://reviews/x")).text == "v1"
        assert v1.call_count == 2


def test_a_bad_reload_keeps_registry_only_refusing_unknown_hosts(make_mesh: MakeMesh) -> None:
    """What the old config refused stays refused too."""
    mesh = make_mesh({**_config(V1), "outbound_policy": "registry_only"})
    with respx.mock, mesh.client() as client:
        with pytest.raises(ConfigError):
            mesh.reload({"outbound_policy": "allow_everything"})
        with pytest.raises(meshlib.RouteNotFoundError):
            client.get("http://elsewhere/x")


def test_mesh_from_a_bad_file_raises_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "clusters:\n  reviews:\n    endpoints: [http://127.0.0.1:9081]\n    lb: fastest\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        Mesh.from_file(path)
    assert info.value.source == str(path)
    assert info.value.errors == [
        ("clusters.reviews.lb", "Input should be 'round_robin', 'random', 'least_request' or 'ring_hash'")
    ]


def test_mesh_from_a_missing_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Mesh.from_file(tmp_path / "missing.yaml")
    assert info.value.errors == [("", "cannot read config file: No such file or directory")]


def test_a_reload_to_an_empty_config_is_taken_when_it_says_allow_empty(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(_config(V1))
    with respx.mock:
        snapshot = mesh.reload({"allow_empty": True})
        assert mesh.snapshot is snapshot
        assert (mesh.config.clusters, mesh.config.routes, mesh.stats()["version"]) == ({}, [], 2)


def test_a_mesh_from_an_empty_dict_or_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Mesh.from_dict({})
    assert info.value.errors == [("", EMPTY_CONFIG)]
    path = tmp_path / "mesh.yaml"
    path.write_text("# to be written\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Mesh.from_file(path)
    assert (info.value.errors, info.value.source) == ([("", "the config file is empty")], str(path))


def test_a_mesh_with_no_config_still_passes_everything_through() -> None:
    with respx.mock, Mesh() as mesh, mesh.client() as client:
        upstream = respx.get("http://elsewhere/x").mock(return_value=httpx.Response(200))
        assert client.get("http://elsewhere/x").status_code == 200
        assert upstream.call_count == 1
        assert mesh.config.allow_empty
