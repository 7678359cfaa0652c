"""Compiling a route's retry and mirror: codes inherited from each cluster, a mirror onto nothing left out."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx

from meshlib._policies.retry import RetryFilter
from meshlib._snapshot.route import CompiledRoute
from meshlib.testing import MeshFactory
from tests.conftest import Caller

A, B = "http://127.0.0.1:9081", "http://127.0.0.1:9082"
CODELESS_RETRY = {"attempts": 2, "retry_on": ["retriable-status-codes"]}


def _route(mesh: Any) -> CompiledRoute:
    route: CompiledRoute = mesh.snapshot.routes.routes[0]
    assert not route.implicit
    return route


def _statuses(route: CompiledRoute, cluster: str) -> frozenset[int]:
    [retry] = [f for f in route.legs[cluster].filters if isinstance(f, RetryFilter)]
    return retry.policy.statuses


def _reviews(route_retry: dict[str, Any], **cluster_retry: Any) -> dict[str, Any]:
    return {
        "clusters": {"reviews": {"endpoints": [A], "retry": {"attempts": 3, **cluster_retry}}},
        "routes": [{"match": {"host": "reviews"}, "cluster": "reviews", "retry": route_retry}],
    }


@pytest.mark.anyio
async def test_a_codeless_route_retry_retries_the_clusters_409(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    """Bug 4: ``retry_on: [retriable-status-codes]`` on the route, ``retriable_status_codes: [409]`` on the cluster."""
    upstream = respx_mock.get(f"{A}/x").mock(side_effect=[httpx.Response(409), httpx.Response(200)])
    mesh = mesh_factory(_reviews(CODELESS_RETRY, retry_on=["5xx"], retriable_status_codes=[409]))
    async with caller(mesh) as client:
        assert (await client.get("http://reviews/x")).status_code == 200
    assert upstream.call_count == 2


@pytest.mark.anyio
async def test_a_route_retry_with_its_own_codes_keeps_them(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    upstream = respx_mock.get(f"{A}/x").mock(side_effect=[httpx.Response(409), httpx.Response(200)])
    route_retry = {**CODELESS_RETRY, "retriable_status_codes": [429]}
    mesh = mesh_factory(_reviews(route_retry, retriable_status_codes=[409]))
    async with caller(mesh) as client:
        assert (await client.get("http://reviews/x")).status_code == 409
    assert upstream.call_count == 1
    assert _statuses(_route(mesh), "reviews") == {429}


def test_a_route_retry_not_listing_the_condition_takes_no_codes(mesh_factory: MeshFactory) -> None:
    """The route's retry replaces the cluster's whole, except for the codes retriable-status-codes asks for."""
    mesh = mesh_factory(_reviews({"retry_on": ["gateway-error"]}, retriable_status_codes=[409]))
    assert _statuses(_route(mesh), "reviews") == {502, 503, 504}


def test_each_split_leg_takes_the_codes_of_its_own_cluster(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory(
        {
            "clusters": {
                "a": {"endpoints": [A], "retry": {"retriable_status_codes": [409]}},
                "b": {"endpoints": [B], "retry": {"retriable_status_codes": [429, 425]}},
                "c": {"endpoints": ["http://127.0.0.1:9083"]},
            },
            "routes": [
                {
                    "match": {"host": "reviews"},
                    "split": [{"cluster": c, "weight": 1} for c in ("a", "b", "c")],
                    "retry": CODELESS_RETRY,
                }
            ],
        }
    )
    route = _route(mesh)
    assert [_statuses(route, c) for c in ("a", "b", "c")] == [frozenset({409}), frozenset({425, 429}), frozenset()]


@pytest.mark.anyio
async def test_a_mirror_onto_an_undefined_cluster_is_left_out_and_requests_still_flow(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    upstream = respx_mock.get(f"{A}/x").mock(return_value=httpx.Response(200))
    mesh = mesh_factory(
        {
            "clusters": {"reviews": {"endpoints": [A]}},
            "routes": [{"match": {"host": "reviews"}, "cluster": "reviews", "mirror": {"cluster": "reviews-shadow"}}],
        }
    )
    assert "mirror" not in _route(mesh).filter_names
    async with caller(mesh) as client:
        assert [(await client.get("http://reviews/x")).status_code for _ in range(3)] == [200] * 3
    assert upstream.call_count == 3  # only the primary: respx would refuse a request to any other endpoint
    assert set(mesh.stats()["clusters"]) == {"reviews"}
