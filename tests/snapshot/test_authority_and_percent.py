"""``match.authority`` (what xDS listeners are named by), ``match.percent`` (runtime_fraction), and a breaker
with ``failure_threshold: null`` (Envoy's circuit breakers: a cap, never tripped by failures)."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest
import respx

import meshlib
from meshlib import ConfigError, MeshConfig
from tests.conftest import MakeMesh


def _clusters(*names: str) -> dict[str, Any]:
    return {name: {"endpoints": [f"http://127.0.0.1:{9001 + i}"]} for i, name in enumerate(names)}


def _route(mesh: meshlib.Mesh, url: str) -> str | None:
    route = mesh.snapshot.routes.match(httpx.Request("GET", url))
    return None if route is None else route.name


def test_authority_matches_host_and_port_exactly(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(
        {
            "clusters": _clusters("a", "b", "c"),
            "routes": [
                {"name": "9080", "match": {"authority": "Reviews:9080"}, "cluster": "a"},
                {"name": "no-port", "match": {"authority": "reviews"}, "cluster": "b"},
                {"name": "v6", "match": {"authority": "[::1]:8080"}, "cluster": "c"},
            ],
        }
    )
    assert _route(mesh, "http://reviews:9080/x") == "9080"
    assert _route(mesh, "http://REVIEWS:9080/x") == "9080"
    assert _route(mesh, "http://reviews/x") == "no-port"
    assert _route(mesh, "http://reviews:80/x") == "no-port", "a default port is no port, as httpx writes it"
    assert _route(mesh, "http://reviews:9081/x") is None
    assert _route(mesh, "http://[::1]:8080/") == "v6"


@pytest.mark.parametrize(
    ("match", "path", "message"),
    [
        ({"authority": "reviews:80"}, "routes[0].match.authority", "no default port 80"),
        ({"authority": "a/b"}, "routes[0].match.authority", "invalid authority 'a/b'"),
        ({"authority": "user@reviews:1"}, "routes[0].match.authority", "invalid authority 'user@reviews:1'"),
        ({"authority": "reviews:9080", "host": "ratings"}, "routes[0].match.host", "must be the host of authority"),
        ({"percent": 101}, "routes[0].match.percent", "less than or equal to 100"),
        ({"percent": -1}, "routes[0].match.percent", "greater than or equal to 0"),
    ],
)
def test_bad_authority_and_percent_are_refused_at_their_path(match: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        MeshConfig.from_dict({"clusters": _clusters("a"), "routes": [{"match": match, "cluster": "a"}]})
    assert any(p == path and message in m for p, m in info.value.errors), info.value.errors


def test_percent_applies_the_route_to_that_share_and_lets_the_rest_fall_through() -> None:
    config = MeshConfig.from_dict(
        {
            "clusters": _clusters("canary", "stable"),
            "routes": [
                {"name": "canary", "match": {"host": "reviews", "percent": 25}, "cluster": "canary"},
                {"name": "stable", "match": {"host": "reviews"}, "cluster": "stable"},
            ],
        }
    )
    with meshlib.Mesh(config, rng=random.Random(7)) as mesh:
        picks = [_route(mesh, "http://reviews/") for _ in range(4000)]
    share = picks.count("canary") / len(picks)
    assert 0.23 < share < 0.27
    assert set(picks) == {"canary", "stable"}


@pytest.mark.parametrize(("percent", "expected"), [(0, "stable"), (100, "canary")])
def test_percent_0_never_and_100_always(make_mesh: MakeMesh, percent: float, expected: str) -> None:
    mesh = make_mesh(
        {
            "clusters": _clusters("canary", "stable"),
            "routes": [
                {"name": "canary", "match": {"host": "reviews", "percent": percent}, "cluster": "canary"},
                {"name": "stable", "match": {"host": "reviews"}, "cluster": "stable"},
            ],
        }
    )
    assert {_route(mesh, "http://reviews/") for _ in range(200)} == {expected}


def test_a_breaker_without_a_failure_threshold_never_opens_but_caps_in_flight(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter
) -> None:
    failing = respx_mock.get("http://127.0.0.1:9001/").respond(503)
    mesh = make_mesh(
        {"clusters": {"a": {"endpoints": ["http://127.0.0.1:9001"], "circuit_breaker": {"failure_threshold": None}}}}
    )
    with mesh.client() as client:
        statuses = {client.get("http://a/").status_code for _ in range(50)}
    assert statuses == {503}, "fifty 5xx in a row and every request still went through"
    assert failing.call_count == 50
    assert mesh.stats()["clusters"]["a"]["circuit_breaker"]["state"] == "closed"
