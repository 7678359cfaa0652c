"""Route matchers: path, method, header and query conditions, with whole-value regex semantics."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest
from hypothesis import assume, given, settings, strategies as st

import meshlib
from meshlib._httpx_shortcuts import header_value
from meshlib._snapshot.matchers import MatchInput
from tests.conftest import MakeMesh

CLUSTERS = {"a": {"endpoints": ["http://127.0.0.1:9001"]}}


def _matches(make_mesh: MakeMesh, match: dict[str, Any], url: str, method: str = "GET", **kwargs: Any) -> bool:
    mesh = make_mesh({"clusters": CLUSTERS, "routes": [{"name": "r", "match": match, "cluster": "a"}]})
    route = mesh.snapshot.routes.match(httpx.Request(method, url, **kwargs))
    return route is not None and route.name == "r"


@pytest.mark.parametrize(
    ("match", "path", "expected"),
    [
        ({"path": "/a"}, "/a", True),
        ({"path": "/a"}, "/a/", False),
        ({"path": "/a"}, "/ab", False),
        ({"path": "/a"}, "/a?x=1", True),
        ({"path_prefix": "/api/"}, "/api/x", True),
        ({"path_prefix": "/api/"}, "/api/", True),
        ({"path_prefix": "/api/"}, "/api", False),
        ({"path_prefix": "/api"}, "/apix", True),
        ({"path_prefix": "/api/"}, "/API/x", False),
        ({"path_regex": "/v[0-9]+"}, "/v12", True),
        ({"path_regex": "/v[0-9]+"}, "/v1/x", False),
        ({"path_regex": "/v[0-9]+"}, "/x/v1", False),
        ({"path_regex": "/v[0-9]+"}, "/v1?page=2", True),
        # Matchers see the percent-encoded path, as Envoy does.
        ({"path": "/a%20b"}, "/a%20b", True),
        ({"path": "/a%20b"}, "/a b", True),
        ({"path_prefix": "/a/b"}, "/a%2Fb", False),
    ],
)
def test_path_matchers(make_mesh: MakeMesh, match: dict[str, Any], path: str, expected: bool) -> None:
    assert _matches(make_mesh, {"host": "h", **match}, f"http://h{path}") is expected


@pytest.mark.parametrize(("method", "expected"), [("GET", True), ("HEAD", True), ("POST", False), ("get", True)])
def test_method_list_matches_any_listed_method(make_mesh: MakeMesh, method: str, expected: bool) -> None:
    assert _matches(make_mesh, {"method": ["get", "HEAD"]}, "http://h/", method=method) is expected


@pytest.mark.parametrize(
    ("matcher", "headers", "expected"),
    [
        ({"exact": "tester"}, {"x-user": "tester"}, True),
        ({"exact": "tester"}, {"x-user": "Tester"}, False),
        ({"exact": "tester"}, {}, False),
        ("tester", {"x-user": "tester"}, True),
        ({"prefix": "test"}, {"x-user": "tester"}, True),
        ({"prefix": "test"}, {"x-user": "atester"}, False),
        ({"prefix": "test"}, {}, False),
        ({"regex": ".*Android.*"}, {"x-user": "Mozilla/5.0 (Linux; Android 14)"}, True),
        # Regexes must match the whole value, not a part of it.
        ({"regex": "Android"}, {"x-user": "Mozilla/5.0 (Linux; Android 14)"}, False),
        ({"regex": "Android"}, {"x-user": "Android"}, True),
        ({"regex": "a|b"}, {"x-user": "ab"}, False),
        ({"regex": ".*"}, {}, False),
        ({"present": True}, {"x-user": ""}, True),
        ({"present": True}, {}, False),
        ({"absent": True}, {}, True),
        ({"absent": True}, {"x-user": "x"}, False),
        # Header names are case-insensitive.
        ({"exact": "tester"}, {"X-User": "tester"}, True),
        # Repeated headers are seen joined with ", ".
        ({"exact": "a, b"}, [("x-user", "a"), ("x-user", "b")], True),
        ({"exact": "a"}, [("x-user", "a"), ("x-user", "b")], False),
        ({"exact": "a, b, c"}, [("x-user", "a"), ("x-other", "z"), ("X-USER", "b"), ("x-user", "c")], True),
    ],
)
def test_header_matchers(make_mesh: MakeMesh, matcher: Any, headers: Any, expected: bool) -> None:
    assert _matches(make_mesh, {"headers": {"X-User": matcher}}, "http://h/", headers=headers) is expected


@pytest.mark.parametrize(
    ("raw", "seen"),
    [
        (b"caf\xc3\xa9", "café"),  # UTF-8 (every header of the request decodes as UTF-8): decoded as UTF-8
        (b"caf\xe9", "café"),  # not UTF-8: Latin-1, byte for byte
        (b"plain", "plain"),
    ],
)
def test_header_values_are_seen_as_httpx_decodes_them(make_mesh: MakeMesh, raw: bytes, seen: str) -> None:
    """A value outside ASCII is decoded with the encoding httpx settles on for the request's headers."""
    request = httpx.Request("GET", "http://h/", headers=[(b"x-user", raw), (b"x-other", b"ascii")])
    assert request.headers.get("x-user") == seen
    assert _matches(make_mesh, {"headers": {"X-User": {"exact": seen}}}, "http://h/", headers=request.headers)


@pytest.mark.parametrize(
    ("matcher", "query", "expected"),
    [
        ({"exact": "1"}, "?beta=1", True),
        ({"exact": "1"}, "?beta=10", False),
        ({"exact": "1"}, "?other=1", False),
        ({"exact": "1"}, "?x=2&beta=1", True),
        ({"exact": "a b"}, "?beta=a%20b", True),
        ({"prefix": "on"}, "?beta=only", True),
        ({"regex": "[0-9]+"}, "?beta=123", True),
        ({"regex": "[0-9]+"}, "?beta=123x", False),
        ({"present": True}, "?beta=", True),
        ({"present": True}, "?betax=1", False),
        ({"absent": True}, "", True),
        ({"absent": True}, "?beta=1", False),
    ],
)
def test_query_matchers(make_mesh: MakeMesh, matcher: dict[str, Any], query: str, expected: bool) -> None:
    assert _matches(make_mesh, {"query": {"beta": matcher}}, f"http://h/p{query}") is expected


def test_all_conditions_of_a_match_must_hold(make_mesh: MakeMesh) -> None:
    match = {
        "host": "reviews",
        "path_prefix": "/api/",
        "method": ["GET"],
        "headers": {"user-agent": {"regex": ".*Android.*"}},
        "query": {"beta": {"exact": "1"}},
    }
    ok: dict[str, Any] = {"url": "http://reviews/api/r?beta=1", "headers": {"user-agent": "x Android y"}}
    assert _matches(make_mesh, match, **ok)
    for url, method, headers in [
        ("http://ratings/api/r?beta=1", "GET", ok["headers"]),
        ("http://reviews/web/r?beta=1", "GET", ok["headers"]),
        (ok["url"], "POST", ok["headers"]),
        (ok["url"], "GET", {"user-agent": "iPhone"}),
        ("http://reviews/api/r?beta=0", "GET", ok["headers"]),
    ]:
        assert not _matches(make_mesh, match, url, method=method, headers=headers)


# Path characters that httpx keeps as they are (no dot segments, nothing to percent-encode).
_SEGMENT = st.text(alphabet="ab-_~0/", max_size=6)
_PROPERTY_MESH = meshlib.Mesh.from_dict(
    {
        "clusters": CLUSTERS,
        "routes": [
            {"name": "exact", "match": {"host": "exact", "path": "/ab/"}, "cluster": "a"},
            {"name": "prefix", "match": {"host": "prefix", "path_prefix": "/ab/"}, "cluster": "a"},
        ],
    },
    rng=random.Random(0),
)


@settings(max_examples=300, deadline=None)
@given(prefix=_SEGMENT, path=_SEGMENT)
def test_prefix_and_exact_match_agree_with_string_comparison(prefix: str, path: str) -> None:
    """For any prefix and path, the route matches exactly when str.startswith (or ==) says so."""
    prefix, path = "/" + prefix, "/" + path
    assume(httpx.URL(f"http://h{path}").path == path)
    mesh = meshlib.Mesh.from_dict(
        {
            "clusters": CLUSTERS,
            "routes": [
                {"name": "exact", "match": {"host": "exact", "path": prefix}, "cluster": "a"},
                {"name": "prefix", "match": {"host": "prefix", "path_prefix": prefix}, "cluster": "a"},
            ],
        },
        rng=random.Random(0),
    )
    exact = mesh.snapshot.routes.match(httpx.Request("GET", f"http://exact{path}"))
    by_prefix = mesh.snapshot.routes.match(httpx.Request("GET", f"http://prefix{path}"))
    assert (exact is not None and exact.name == "exact") is (path == prefix)
    assert (by_prefix is not None and by_prefix.name == "prefix") is path.startswith(prefix)


@settings(max_examples=200, deadline=None)
@given(path=_SEGMENT, query=st.text(alphabet="ab=&", max_size=6))
def test_the_query_string_never_affects_path_matching(path: str, query: str) -> None:
    path = "/" + path
    assume(httpx.URL(f"http://h{path}").path == path)
    with_query = _PROPERTY_MESH.snapshot.routes.match(httpx.Request("GET", f"http://prefix{path}?{query}"))
    without = _PROPERTY_MESH.snapshot.routes.match(httpx.Request("GET", f"http://prefix{path}"))
    assert with_query is without


_NAMES = st.sampled_from(["x-user", "X-User", "x-other", "user-agent", "x-user-id"])
# Raw bytes (mostly not UTF-8: Latin-1 to httpx) and UTF-8 text (when every header is, httpx reads UTF-8).
_VALUES = st.one_of(st.binary(max_size=6), st.text(max_size=4).map(str.encode)).filter(
    lambda raw: not any(c in raw for c in b"\r\n\x00")
)


@settings(max_examples=200, deadline=None)
@given(headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=6), asked=st.lists(_NAMES, max_size=4))
def test_a_header_reads_as_httpx_reads_it(headers: list[tuple[str, bytes]], asked: list[str]) -> None:
    """Whatever a request's headers (repeated, in any case, in any encoding), and in whatever order the routes ask,
    a matcher sees each as ``httpx.Headers.get`` gives it."""
    request = httpx.Request("GET", "http://h/", headers=[(name.encode(), value) for name, value in headers])
    m = MatchInput(request, "/")
    for name in [*asked, *asked]:  # the second time from what the first found
        assert m.header(name.lower().encode()) == request.headers.get(name)
        assert header_value(request.headers, name.lower().encode()) == request.headers.get(name)
