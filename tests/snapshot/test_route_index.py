"""The route table's path index: a long candidate list walks only the routes a path can match, in config order.

Every case compares the indexed table with a plain walk of the same routes (each route's own predicates, first
match wins), which is what the index must never change.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import meshlib
from meshlib._config.models import RouteMatchConfig
from meshlib._snapshot.matchers import path_literal
from meshlib._snapshot.route_table import INDEX_FROM
from tests.conftest import MakeMesh


def _walk(mesh: meshlib.Mesh, request: httpx.Request) -> str | None:
    """The first route in config order whose host and predicates hold: the table's contract, unindexed."""
    table = mesh.snapshot.routes
    for route in table.candidates(request.url.host):
        if route.matches(request):
            return route.name
    return None


def _indexed(mesh: meshlib.Mesh, request: httpx.Request) -> str | None:
    route = mesh.snapshot.routes.match(request)
    return None if route is None else route.name


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({"path": "/api/items"}, ("/api/items", True)),
        ({"path_prefix": "/api/"}, ("/api/", False)),
        ({"path_prefix": "/"}, ("/", False)),
        ({"path_regex": "/api/v1/items/[0-9]+"}, ("/api/v1/items/", False)),
        ({"path_regex": r"/v1\.0/x"}, ("/v1.0/x", False)),
        ({"path_regex": "/api/?"}, ("/api", False)),  # the optional slash is not part of it
        ({"path_regex": "/ab*"}, ("/a", False)),
        ({"path_regex": "/a{2}"}, ("/", False)),
        ({"path_regex": "/items/.*"}, ("/items/", False)),
        ({"path_regex": "/a|/b"}, None),  # an alternation: no start common to every match
        ({"path_regex": "/x/(a|b)"}, None),
        ({"path_regex": "(?i)/api"}, None),  # flags: the case of the literal is not the path's
        ({"path_regex": "^/x"}, None),
        ({"path_regex": "[a-z]+"}, None),
        ({"headers": {"x-a": {"exact": "1"}}}, None),
        ({}, None),
    ],
)
def test_the_path_literal_a_route_is_indexed_by(match: dict[str, Any], expected: tuple[str, bool] | None) -> None:
    assert path_literal(RouteMatchConfig.model_validate(match)) == expected


@given(
    pattern=st.sampled_from(
        ["/api/v1/items/[0-9]+", r"/v1\.0/[a-z]+", "/api/?", "/ab*c", "/a{2}b", "/items/.*", "/x-y_z~/[0-9]{2,3}"]
    ),
    path=st.text(alphabet="/abcxyz0123456789.-_~vitemsp", max_size=20),
)
def test_a_regex_s_literal_starts_every_path_it_matches(pattern: str, path: str) -> None:
    found = path_literal(RouteMatchConfig.model_validate({"path_regex": pattern}))
    assert found is not None
    if re.fullmatch(pattern, path):
        assert path.startswith(found[0])


def _many_routes() -> list[dict[str, Any]]:
    """More candidates than INDEX_FROM for host ``svc``: exact, prefix, regex and path-less routes, interleaved."""
    routes: list[dict[str, Any]] = []
    for i in range(12):
        routes.append({"name": f"exact-{i}", "match": {"host": "svc", "path": f"/v{i}/items"}, "cluster": "a"})
        routes.append({"name": f"prefix-{i}", "match": {"host": "svc", "path_prefix": f"/v{i}/"}, "cluster": "a"})
        regex = {"host": "svc", "path_regex": f"/r{i}/[0-9]+"}
        routes.append({"name": f"regex-{i}", "match": regex, "cluster": "a"})
        if i % 4 == 0:  # no path and no host: a candidate for every request, checked on a header
            canary = {"headers": {"x-canary": {"exact": f"{i}"}}}
            routes.append({"name": f"canary-{i}", "match": canary, "cluster": "a"})
    routes.append({"name": "short", "match": {"host": "svc", "path_prefix": "/v1"}, "cluster": "a"})
    routes.append({"name": "catch-all", "match": {"host": "svc"}, "cluster": "a"})
    return routes


@pytest.fixture
def many(make_mesh: MakeMesh) -> meshlib.Mesh:
    mesh = make_mesh({"clusters": {"a": {"endpoints": ["http://127.0.0.1:9001"]}}, "routes": _many_routes()})
    assert len(mesh.snapshot.routes.candidates("svc")) >= INDEX_FROM
    return mesh


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/v3/items", {}, "exact-3"),
        ("/v3/other", {}, "prefix-3"),
        ("/v10/x", {}, "prefix-10"),
        ("/v1x", {}, "short"),  # a prefix that ends inside a segment
        ("/r5/123", {}, "regex-5"),
        ("/r5/x", {}, "catch-all"),
        ("/r5/123", {"x-canary": "0"}, "canary-0"),  # a path-less route earlier in the config wins
        ("/v9/items", {"x-canary": "8"}, "canary-8"),  # canary-8 comes before the v9 routes
        ("/v5/items", {"x-canary": "8"}, "exact-5"),  # and after the v5 ones
        ("/nothing", {}, "catch-all"),
        ("/", {}, "catch-all"),
    ],
)
def test_a_long_host_list_still_takes_the_first_match_in_config_order(
    many: meshlib.Mesh, path: str, headers: dict[str, str], expected: str
) -> None:
    request = httpx.Request("GET", f"http://svc{path}", headers=headers)
    assert _indexed(many, request) == expected == _walk(many, request)


def test_a_host_with_no_route_of_its_own_is_indexed_over_the_hostless_routes(make_mesh: MakeMesh) -> None:
    routes = [{"name": f"p{i}", "match": {"path_prefix": f"/p{i}/"}, "cluster": "a"} for i in range(INDEX_FROM + 2)]
    routes.append({"name": "other", "match": {"host": "svc"}, "cluster": "a"})
    mesh = make_mesh({"clusters": {"a": {"endpoints": ["http://127.0.0.1:9001"]}}, "routes": routes})
    for host, path, expected in [("elsewhere", "/p4/x", "p4"), ("elsewhere", "/q", None), ("svc", "/q", "other")]:
        request = httpx.Request("GET", f"http://{host}{path}")
        assert _indexed(mesh, request) == expected == _walk(mesh, request)


# The mesh is only read: one per test serves every example.
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.one_of(
        st.sampled_from(["/v1/items", "/v11/items", "/v1", "/v1/", "/r3/42", "/r11/7", "/", "/v2/items/x"]),
        st.text(alphabet="/vr0123456789itemsx", max_size=14).map(lambda s: "/" + s),
    ),
    canary=st.sampled_from([None, "0", "4", "8", "x"]),
)
def test_the_index_agrees_with_a_plain_walk_on_any_path(many: meshlib.Mesh, path: str, canary: str | None) -> None:
    headers = {} if canary is None else {"x-canary": canary}
    request = httpx.Request("GET", f"http://svc{path}", headers=headers)
    assert _indexed(many, request) == _walk(many, request)


def test_repeated_headers_are_matched_joined_as_httpx_shows_them(make_mesh: MakeMesh) -> None:
    routes = [
        {"name": "joined", "match": {"headers": {"x-tag": {"exact": "a, b"}}}, "cluster": "a"},
        {"name": "rest", "cluster": "a"},
    ]
    mesh = make_mesh({"clusters": {"a": {"endpoints": ["http://127.0.0.1:9001"]}}, "routes": routes})
    twice = httpx.Request("GET", "http://svc/", headers=[("X-Tag", "a"), ("x-tag", "b")])
    once = httpx.Request("GET", "http://svc/", headers={"x-tag": "a"})
    assert (_indexed(mesh, twice), _indexed(mesh, once)) == ("joined", "rest")
    assert ", ".join(twice.headers.get_list("x-tag")) == "a, b"
