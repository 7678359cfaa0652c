"""The issue's example config, end to end through the engine with respx under it."""

from __future__ import annotations

from typing import Any

import pytest
import respx

from tests.conftest import Caller, MakeMesh

pytestmark = pytest.mark.anyio


ISSUE_CONFIG: dict[str, Any] = {
    "service": "frontend",
    "outbound_policy": "allow_any",
    "clusters": {
        "reviews-v1": {"endpoints": ["http://127.0.0.1:9081", "http://127.0.0.1:9082"], "lb": "round_robin"},
        "reviews-v2": {
            "endpoints": [{"url": "http://127.0.0.1:9083", "weight": 3}, {"url": "http://127.0.0.1:9084", "weight": 1}],
            "lb": "ring_hash",
            "hash_on": {"header": "x-user"},
        },
        "ratings": {"endpoints": ["http://127.0.0.1:9090"]},
    },
    "routes": [
        {
            "name": "reviews-android",
            "match": {
                "host": "reviews",
                "path_prefix": "/api/",
                "method": ["GET", "HEAD"],
                "headers": {"user-agent": {"regex": ".*Android.*"}},
                "query": {"beta": {"exact": "1"}},
            },
            "cluster": "reviews-v2",
        },
        {
            "name": "reviews-canary",
            "match": {"host": "reviews"},
            "split": [{"cluster": "reviews-v1", "weight": 95}, {"cluster": "reviews-v2", "weight": 5}],
            "rewrite": {"path_prefix": "/", "host": "reviews.internal"},
            "headers": {
                "request": {"set": {"x-canary": "true"}, "remove": ["x-debug"]},
                "response": {"set": {"x-served-by": "mesh"}},
            },
        },
        {
            "name": "maintenance",
            "match": {"host": "reviews", "path_prefix": "/admin"},
            "direct_response": {"status": 503, "body": "down for maintenance"},
        },
    ],
}

ANDROID = {"user-agent": "Mozilla/5.0 (Linux; Android 14)", "x-user": "alice"}


def _headers(echo: dict[str, Any]) -> dict[str, str]:
    return dict(echo["headers"])


async def test_android_beta_users_go_to_v2_and_stay_on_one_endpoint(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(ISSUE_CONFIG)
    async with caller(mesh) as client:
        echoes = [(await client.get("http://reviews/api/reviews/1?beta=1", headers=ANDROID)).json() for _ in range(10)]
    assert {e["port"] for e in echoes} in ({9083}, {9084})
    assert {e["path"] for e in echoes} == {"/api/reviews/1"}
    assert {_headers(e)["host"] for e in echoes} == {"reviews"}
    assert all("x-canary" not in _headers(e) for e in echoes)


async def test_other_reviews_traffic_takes_the_canary_with_its_rewrite_and_header_edits(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(ISSUE_CONFIG, seed=1)
    async with caller(mesh) as client:
        responses = [
            await client.request("POST", "http://reviews/api/reviews/1?beta=1", headers={**ANDROID, "x-debug": "1"})
            for _ in range(200)
        ]
    echoes = [r.json() for r in responses]
    assert {r.headers["x-served-by"] for r in responses} == {"mesh"}
    assert {_headers(e)["host"] for e in echoes} == {"reviews.internal"}
    assert {_headers(e)["x-canary"] for e in echoes} == {"true"}
    assert all("x-debug" not in _headers(e) for e in echoes)
    assert {(e["path"], e["query"]) for e in echoes} == {("/api/reviews/1", "beta=1")}
    ports = [e["port"] for e in echoes]
    assert ports.count(9081) + ports.count(9082) >= 180


async def test_maintenance_route_is_shadowed_by_the_canary_before_it(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    """First match wins: the canary route claims every request for host reviews, so /admin never gets the 503."""
    mesh = make_mesh(ISSUE_CONFIG)
    async with caller(mesh) as client:
        response = await client.get("http://reviews/admin")
    assert response.status_code == 200
    assert response.headers["x-served-by"] == "mesh"
    assert mesh.snapshot.routes.routes[2].name == "maintenance"


async def test_ratings_is_reachable_by_its_cluster_name(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(ISSUE_CONFIG)
    async with caller(mesh) as client:
        echo = (await client.get("http://ratings/api/ratings/1")).json()
    assert echo["url"] == "http://127.0.0.1:9090/api/ratings/1"
