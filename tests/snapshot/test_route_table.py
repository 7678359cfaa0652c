"""Route table: first match wins in config order across exact-host, wildcard and host-less routes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx

import meshlib
from tests.conftest import MakeMesh


def _clusters(*names: str) -> dict[str, Any]:
    return {name: {"endpoints": [f"http://127.0.0.1:{9001 + i}"]} for i, name in enumerate(names)}


def _route_name(mesh: meshlib.Mesh, url: str, method: str = "GET", **kwargs: Any) -> str | None:
    route = mesh.snapshot.routes.match(httpx.Request(method, url, **kwargs))
    return None if route is None else route.name


def test_first_matching_route_wins_even_when_a_later_one_is_more_specific(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(
        {
            "clusters": _clusters("a", "b"),
            "routes": [
                {"name": "broad", "match": {"host": "reviews", "path_prefix": "/"}, "cluster": "a"},
                {"name": "specific", "match": {"host": "reviews", "path": "/api/x"}, "cluster": "b"},
            ],
        }
    )
    assert _route_name(mesh, "http://reviews/api/x") == "broad"


def test_first_match_wins_through_the_engine(make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    """The respx routes are the endpoints' URLs, so which one is hit proves which route ran."""
    a = respx_mock.get("http://127.0.0.1:9001/api/x").respond(200)
    mesh = make_mesh(
        {
            "clusters": _clusters("a", "b"),
            "routes": [
                {"match": {"host": "reviews", "path_prefix": "/api/"}, "cluster": "a"},
                {"match": {"host": "reviews", "path": "/api/x"}, "cluster": "b"},
            ],
        }
    )
    with mesh.client() as client:
        assert client.get("http://reviews/api/x").status_code == 200
    assert a.call_count == 1


MIXED_ROUTES = [
    {"name": "r0-exact-host", "match": {"host": "reviews", "path": "/x"}, "cluster": "a"},
    {"name": "r1-star", "match": {"host": "*", "path": "/y"}, "cluster": "a"},
    {"name": "r2-no-host", "match": {"path": "/z"}, "cluster": "a"},
    {"name": "r3-exact-host-any-path", "match": {"host": "reviews"}, "cluster": "a"},
    {"name": "r4-suffix", "match": {"host": "*.svc"}, "cluster": "a"},
    {"name": "r5-no-host-any-path", "cluster": "a"},
]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://reviews/x", "r0-exact-host"),
        ("http://reviews/y", "r1-star"),
        ("http://reviews/z", "r2-no-host"),
        ("http://reviews/other", "r3-exact-host-any-path"),
        ("http://a.svc/y", "r1-star"),
        ("http://a.svc/z", "r2-no-host"),
        ("http://a.svc/other", "r4-suffix"),
        ("http://elsewhere/y", "r1-star"),
        ("http://elsewhere/other", "r5-no-host-any-path"),
        ("http://a/x", "r5-no-host-any-path"),
    ],
)
def test_exact_host_wildcard_and_hostless_routes_keep_config_order(
    make_mesh: MakeMesh, url: str, expected: str
) -> None:
    mesh = make_mesh({"clusters": _clusters("a"), "routes": MIXED_ROUTES})
    assert _route_name(mesh, url) == expected


@pytest.mark.parametrize(
    ("host", "matches"),
    [
        ("a.example.com", True),
        ("a.b.example.com", True),
        ("example.com", False),
        ("badexample.com", False),
        ("example.com.evil", False),
    ],
)
def test_suffix_wildcard_needs_a_label_before_the_suffix(make_mesh: MakeMesh, host: str, matches: bool) -> None:
    mesh = make_mesh(
        {"clusters": _clusters("a"), "routes": [{"name": "w", "match": {"host": "*.example.com"}, "cluster": "a"}]}
    )
    assert (_route_name(mesh, f"http://{host}/") == "w") is matches


def test_host_match_ignores_case_and_port(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(
        {"clusters": _clusters("a"), "routes": [{"name": "r", "match": {"host": "Reviews.Internal"}, "cluster": "a"}]}
    )
    assert _route_name(mesh, "http://REVIEWS.internal:8080/") == "r"
    assert _route_name(mesh, "https://reviews.internal/") == "r"
    assert _route_name(mesh, "http://reviews/") is None


def test_every_cluster_is_reachable_by_its_own_name(make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    ratings = respx_mock.get("http://127.0.0.1:9002/api/ratings/1").respond(200)
    mesh = make_mesh({"clusters": _clusters("reviews", "ratings")})
    assert _route_name(mesh, "http://ratings/") == "cluster:ratings"
    assert _route_name(mesh, "http://Ratings:9999/") == "cluster:ratings"
    with mesh.client() as client:
        assert client.get("http://ratings/api/ratings/1").status_code == 200
    assert ratings.call_count == 1


def test_configured_route_for_a_cluster_name_wins_over_the_implicit_route(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter
) -> None:
    other = respx_mock.get("http://127.0.0.1:9002/").respond(200)
    mesh = make_mesh(
        {
            "clusters": _clusters("ratings", "other"),
            "routes": [{"name": "ratings-elsewhere", "match": {"host": "ratings"}, "cluster": "other"}],
        }
    )
    assert _route_name(mesh, "http://ratings/") == "ratings-elsewhere"
    with mesh.client() as client:
        client.get("http://ratings/")
    assert other.call_count == 1


def test_implicit_routes_come_after_every_configured_route(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(
        {
            "clusters": _clusters("ratings", "other"),
            "routes": [{"name": "catch-all", "match": {"path_prefix": "/"}, "cluster": "other"}],
        }
    )
    assert _route_name(mesh, "http://ratings/") == "catch-all"
    routes = mesh.snapshot.routes.routes
    assert [r.name for r in routes] == ["catch-all", "cluster:ratings", "cluster:other"]
    assert [r.implicit for r in routes] == [False, True, True]


def test_unclaimed_host_matches_no_route(make_mesh: MakeMesh) -> None:
    mesh = make_mesh({"clusters": _clusters("a"), "routes": [{"match": {"host": "reviews"}, "cluster": "a"}]})
    assert _route_name(mesh, "http://example.com/") is None
    assert _route_name(mesh, "http://127.0.0.1:9001/") is None


def test_unnamed_routes_are_named_by_their_position(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(
        {
            "clusters": _clusters("a"),
            "routes": [{"match": {"path": "/0"}, "cluster": "a"}, {"match": {"path": "/1"}, "cluster": "a"}],
        }
    )
    assert _route_name(mesh, "http://a/1") == "route-1"


def test_a_cluster_name_with_capitals_is_reachable_in_any_case(make_mesh: MakeMesh) -> None:
    mesh = make_mesh({"clusters": {"Ratings": {"endpoints": ["http://127.0.0.1:9001"]}}})
    assert _route_name(mesh, "http://ratings/") == "cluster:Ratings"
    assert _route_name(mesh, "http://RATINGS/") == "cluster:Ratings"
