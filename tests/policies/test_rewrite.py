"""``rewrite``: the matched path prefix and the Host header, as the upstream sees them."""

from __future__ import annotations

from typing import Any

import pytest
import respx

from tests.conftest import Caller, MakeMesh

pytestmark = pytest.mark.anyio


def _config(match: dict[str, Any], rewrite: dict[str, Any]) -> dict[str, Any]:
    return {
        "clusters": {"reviews": {"endpoints": ["http://127.0.0.1:9081"]}},
        "routes": [{"match": {"host": "reviews", **match}, "cluster": "reviews", "rewrite": rewrite}],
    }


@pytest.mark.parametrize(
    ("match", "rewrite", "path", "upstream_path"),
    [
        # The example: /api/ → /
        ({"path_prefix": "/api/"}, {"path_prefix": "/"}, "/api/reviews/1", "/reviews/1"),
        ({"path_prefix": "/api/"}, {"path_prefix": "/"}, "/api/reviews/1?page=2&x=a%20b", "/reviews/1?page=2&x=a%20b"),
        ({"path_prefix": "/api/"}, {"path_prefix": "/v2/"}, "/api/", "/v2/"),
        # Only the matched prefix at the start is replaced, once.
        ({"path_prefix": "/api/"}, {"path_prefix": "/"}, "/api/api/x", "/api/x"),
        # The path stays percent-encoded.
        ({"path_prefix": "/api/"}, {"path_prefix": "/"}, "/api/a%20b", "/a%20b"),
        # An exact-path match is replaced whole.
        ({"path": "/old"}, {"path_prefix": "/new"}, "/old", "/new"),
        ({"path": "/old"}, {"path_prefix": "/new"}, "/old?keep=1", "/new?keep=1"),
        # Without a path condition the matched prefix is "/".
        ({}, {"path_prefix": "/v2/"}, "/x/y", "/v2/x/y"),
        ({}, {"path_prefix": "/"}, "/x/y", "/x/y"),
    ],
)
async def test_path_prefix_rewrite(
    make_mesh: MakeMesh,
    caller: Caller,
    loopback: respx.Route,
    match: dict[str, Any],
    rewrite: dict[str, Any],
    path: str,
    upstream_path: str,
) -> None:
    mesh = make_mesh(_config(match, rewrite))
    async with caller(mesh) as client:
        echo = (await client.get(f"http://reviews{path}")).json()
    assert echo["url"] == f"http://127.0.0.1:9081{upstream_path}"
    assert dict(echo["headers"])["host"] == "reviews"


async def test_host_rewrite_sets_the_host_header_the_upstream_sees(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(_config({}, {"host": "reviews.internal"}))
    async with caller(mesh) as client:
        response = await client.get("http://reviews/api/x?q=1")
    echo = response.json()
    assert echo["url"] == "http://127.0.0.1:9081/api/x?q=1"
    assert [v for k, v in echo["headers"] if k == "host"] == ["reviews.internal"]
    assert response.request.headers["host"] == "reviews"


async def test_path_and_host_rewrite_together(make_mesh: MakeMesh, caller: Caller, loopback: respx.Route) -> None:
    mesh = make_mesh(_config({"path_prefix": "/api/"}, {"path_prefix": "/", "host": "reviews.internal:8080"}))
    async with caller(mesh) as client:
        echo = (await client.get("http://reviews/api/reviews/1")).json()
    assert echo["url"] == "http://127.0.0.1:9081/reviews/1"
    assert dict(echo["headers"])["host"] == "reviews.internal:8080"


async def test_rewrite_applies_to_every_leg_of_a_split(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(
        {
            "clusters": {
                "v1": {"endpoints": ["http://127.0.0.1:9081"]},
                "v2": {"endpoints": ["http://127.0.0.1:9082"]},
            },
            "routes": [
                {
                    "match": {"host": "reviews", "path_prefix": "/api/"},
                    "split": [{"cluster": "v1", "weight": 1}, {"cluster": "v2", "weight": 1}],
                    "rewrite": {"path_prefix": "/"},
                }
            ],
        }
    )
    async with caller(mesh) as client:
        urls = {(await client.get("http://reviews/api/r")).json()["url"] for _ in range(40)}
    assert urls == {"http://127.0.0.1:9081/r", "http://127.0.0.1:9082/r"}
