"""Every malformed config is refused with one specific ``path: message`` error, and good configs still load."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshlib import ConfigError, MeshConfig

EXAMPLE = Path(__file__).with_name("issue_example.yaml")

# Removes a key in the helpers below (None is a value some cases need to set).
DROP: Any = object()

GOOD_CLUSTERS: dict[str, Any] = {
    "reviews": {"endpoints": ["http://127.0.0.1:9081", "http://127.0.0.1:9082"]},
    "ratings": {"endpoints": ["http://127.0.0.1:9090"]},
}
GOOD_ROUTE: dict[str, Any] = {"name": "r", "match": {"host": "reviews", "path_prefix": "/api/"}, "cluster": "reviews"}

# Pydantic internals that must never reach a user: prefixes, class names, union tags, key markers, doc links.
NOISE = ("Value error", "instance of", "Config'", "[key]", "function-", "validation error for", "errors.pydantic.dev")


def _apply(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def top(**changes: Any) -> dict[str, Any]:
    """A good config with ``changes`` made at the top level."""
    return _apply({"service": "frontend", "clusters": GOOD_CLUSTERS, "routes": [GOOD_ROUTE]}, changes)


def cluster(**changes: Any) -> dict[str, Any]:
    """A good config whose cluster ``reviews`` has ``changes``."""
    return top(clusters={**GOOD_CLUSTERS, "reviews": _apply(GOOD_CLUSTERS["reviews"], changes)})


def endpoints(*entries: Any) -> dict[str, Any]:
    """A good config whose cluster ``reviews`` has exactly these endpoints."""
    return cluster(endpoints=list(entries))


def ring_hash(hash_on: Any) -> dict[str, Any]:
    return cluster(lb="ring_hash", hash_on=hash_on)


def route(**changes: Any) -> dict[str, Any]:
    """A good config whose only route has ``changes``."""
    return top(routes=[_apply(GOOD_ROUTE, changes)])


def match(**changes: Any) -> dict[str, Any]:
    """A good config whose only route's match has ``changes``."""
    return route(match=_apply(GOOD_ROUTE["match"], changes))


def split(*legs: Any) -> dict[str, Any]:
    return route(cluster=DROP, split=list(legs))


def direct(**changes: Any) -> dict[str, Any]:
    return route(cluster=DROP, direct_response=_apply({"status": 503, "body": "down"}, changes))


def request_ops(**ops: Any) -> dict[str, Any]:
    return route(headers={"request": ops})


def response_ops(**ops: Any) -> dict[str, Any]:
    return route(headers={"response": ops})


GOOD_CONFIGS = [
    pytest.param(top(), id="top"),
    pytest.param(
        endpoints({"url": "http://127.0.0.1:9081", "weight": 3}, "https://reviews.internal:8443"), id="endpoints"
    ),
    pytest.param(endpoints("http://[::1]:9081", "http://bücher.example"), id="ipv6-and-idn-endpoints"),
    pytest.param(ring_hash({"header": "x-user"}), id="ring-hash-header"),
    pytest.param(ring_hash({"cookie": "session"}), id="ring-hash-cookie"),
    pytest.param(
        match(method="get", headers={"User-Agent": {"regex": ".*Android.*"}}, query={"beta": "1"}), id="match"
    ),
    pytest.param(match(host="*.example.com", path_prefix=DROP, path_regex="/v[0-9]+/.*"), id="wildcard-and-regex"),
    pytest.param(match(host="::1"), id="ipv6-host"),
    pytest.param(split({"cluster": "reviews", "weight": 95}, {"cluster": "ratings", "weight": 5}), id="split"),
    pytest.param(direct(headers={"Retry-After": "120"}), id="direct-response"),
    pytest.param(route(rewrite={"path_prefix": "/", "host": "reviews.internal"}), id="rewrite"),
    pytest.param(request_ops(set={"x-canary": "true"}, add={"x-b": "1"}, remove=["x-debug"]), id="header-ops"),
    pytest.param(top(clusters={"reviews.v1_a-2": GOOD_CLUSTERS["reviews"]}, routes=[]), id="dotted-cluster-name"),
]


@pytest.mark.parametrize("config", GOOD_CONFIGS)
def test_the_good_configs_the_table_breaks_are_valid(config: dict[str, Any]) -> None:
    """Each bad case below changes one thing in one of these, so that one thing is what gets reported."""
    assert isinstance(MeshConfig.from_dict(config), MeshConfig)


BAD_CONFIGS = [
    # ── unknown keys, at every level ──
    pytest.param(top(bogus=1), "bogus", "unknown key 'bogus'", id="unknown-key-top"),
    pytest.param(cluster(weight=1), "clusters.reviews.weight", "unknown key 'weight'", id="unknown-key-cluster"),
    pytest.param(
        endpoints({"url": "http://127.0.0.1:9081", "zone": "a"}),
        "clusters.reviews.endpoints[0].zone",
        "unknown key 'zone'",
        id="unknown-key-endpoint",
    ),
    pytest.param(
        ring_hash({"header": "x-user", "salt": 1}),
        "clusters.reviews.hash_on.salt",
        "unknown key 'salt'",
        id="unknown-key-hash-on",
    ),
    pytest.param(route(priority=1), "routes[0].priority", "unknown key 'priority'", id="unknown-key-route"),
    pytest.param(match(scheme="http"), "routes[0].match.scheme", "unknown key 'scheme'", id="unknown-key-match"),
    pytest.param(
        match(headers={"x-user": {"exact": "a", "contains": "a"}}),
        "routes[0].match.headers.x-user.contains",
        "unknown key 'contains'",
        id="unknown-key-header-match",
    ),
    pytest.param(
        match(query={"beta": {"exact": "1", "suffix": "1"}}),
        "routes[0].match.query.beta.suffix",
        "unknown key 'suffix'",
        id="unknown-key-query-match",
    ),
    pytest.param(
        split({"cluster": "reviews", "weight": 1, "percent": 5}),
        "routes[0].split[0].percent",
        "unknown key 'percent'",
        id="unknown-key-split",
    ),
    pytest.param(
        route(rewrite={"host": "reviews.internal", "path": "/"}),
        "routes[0].rewrite.path",
        "unknown key 'path'",
        id="unknown-key-rewrite",
    ),
    pytest.param(
        route(headers={"requests": {}}),
        "routes[0].headers.requests",
        "unknown key 'requests'",
        id="unknown-key-headers",
    ),
    pytest.param(
        request_ops(append={"x": "1"}),
        "routes[0].headers.request.append",
        "unknown key 'append'",
        id="unknown-key-header-ops",
    ),
    pytest.param(
        direct(content_type="text/plain"),
        "routes[0].direct_response.content_type",
        "unknown key 'content_type'",
        id="unknown-key-direct-response",
    ),
    # ── required fields ──
    pytest.param(
        cluster(endpoints=DROP),
        "clusters.reviews.endpoints",
        "set endpoints (a list of URLs) or discovery",
        id="missing-endpoints",
    ),
    pytest.param(endpoints({"weight": 2}), "clusters.reviews.endpoints[0].url", "required", id="missing-endpoint-url"),
    pytest.param(split({"cluster": "reviews"}), "routes[0].split[0].weight", "required", id="missing-split-weight"),
    pytest.param(split({"weight": 1}), "routes[0].split[0].cluster", "required", id="missing-split-cluster"),
    pytest.param(direct(status=DROP), "routes[0].direct_response.status", "required", id="missing-status"),
    # ── wrong shapes ──
    pytest.param(top(clusters=[]), "clusters", "Input should be a valid dictionary", id="clusters-list"),
    pytest.param(top(routes={}), "routes", "Input should be a valid list", id="routes-mapping"),
    pytest.param(
        top(clusters={"reviews": None}), "clusters.reviews", "expected a mapping, got null", id="cluster-null"
    ),
    pytest.param(top(routes=["reviews"]), "routes[0]", "expected a mapping, got string", id="route-string"),
    pytest.param(route(match=["reviews"]), "routes[0].match", "expected a mapping, got list", id="match-list"),
    pytest.param(
        cluster(endpoints="http://127.0.0.1:9081"), "clusters.reviews.endpoints", "valid list", id="endpoints-string"
    ),
    pytest.param(
        endpoints(9081),
        "clusters.reviews.endpoints[0]",
        "expected a URL string or {url: URL, weight: N}, got integer",
        id="endpoint-int",
    ),
    pytest.param(
        match(headers={"x-user": 1}),
        "routes[0].match.headers.x-user",
        "expected a string or one of {exact|prefix|regex: STRING}, {present: true}, {absent: true}, got integer",
        id="header-match-int",
    ),
    pytest.param(
        ring_hash("x-user"), "clusters.reviews.hash_on", "expected a mapping, got string", id="hash-on-string"
    ),
    pytest.param(top(service=""), "service", "String should have at least 1 character", id="service-empty"),
    pytest.param(top(service=5), "service", "Input should be a valid string", id="service-int"),
    # ── endpoints ──
    pytest.param(endpoints(), "clusters.reviews.endpoints", "must not be empty", id="endpoints-empty"),
    pytest.param(
        endpoints("ftp://127.0.0.1:9081"),
        "clusters.reviews.endpoints[0].url",
        "URL 'ftp://127.0.0.1:9081' must start with http:// or https://",
        id="endpoint-ftp-scheme",
    ),
    pytest.param(
        endpoints("127.0.0.1:9081"),
        "clusters.reviews.endpoints[0].url",
        "must start with http:// or https://",
        id="endpoint-no-scheme",
    ),
    pytest.param(
        endpoints("http://"), "clusters.reviews.endpoints[0].url", "URL 'http://' has no host", id="endpoint-no-host"
    ),
    pytest.param(
        endpoints("http://127.0.0.1:9081/api"),
        "clusters.reviews.endpoints[0].url",
        "URL 'http://127.0.0.1:9081/api' must be scheme://host[:port] only: no path, query, fragment or user",
        id="endpoint-path",
    ),
    pytest.param(
        endpoints("http://127.0.0.1:9081?x=1"),
        "clusters.reviews.endpoints[0].url",
        "no path, query",
        id="endpoint-query",
    ),
    pytest.param(
        endpoints("http://127.0.0.1:9081#top"), "clusters.reviews.endpoints[0].url", "fragment", id="endpoint-fragment"
    ),
    pytest.param(
        endpoints("http://user:secret@127.0.0.1:9081"),
        "clusters.reviews.endpoints[0].url",
        "or user",
        id="endpoint-userinfo",
    ),
    pytest.param(
        endpoints("http://127.0.0.1:0"),
        "clusters.reviews.endpoints[0].url",
        "invalid port: use 1 to 65535",
        id="endpoint-port-0",
    ),
    pytest.param(
        endpoints("http://127.0.0.1:70000"),
        "clusters.reviews.endpoints[0].url",
        "URL 'http://127.0.0.1:70000' has an invalid port: use 1 to 65535",
        id="endpoint-port-too-big",
    ),
    pytest.param(
        endpoints("http://reviews v1:9081"),
        "clusters.reviews.endpoints[0].url",
        "URL 'http://reviews v1:9081' has an invalid host",
        id="endpoint-host-with-space",
    ),
    pytest.param(
        endpoints("http://[::1"),
        "clusters.reviews.endpoints[0].url",
        "invalid URL 'http://[::1'",
        id="endpoint-unparsable",
    ),
    pytest.param(
        endpoints({"url": "http://127.0.0.1:9081", "weight": 0}),
        "clusters.reviews.endpoints[0].weight",
        "Input should be greater than or equal to 1",
        id="endpoint-weight-0",
    ),
    pytest.param(
        endpoints({"url": "http://127.0.0.1:9081", "weight": -1}),
        "clusters.reviews.endpoints[0].weight",
        "Input should be greater than or equal to 1",
        id="endpoint-weight-negative",
    ),
    pytest.param(
        endpoints({"url": "http://127.0.0.1:9081", "weight": "3"}),
        "clusters.reviews.endpoints[0].weight",
        "Input should be a valid integer",
        id="endpoint-weight-string",
    ),
    pytest.param(
        endpoints({"url": "http://127.0.0.1:9081", "weight": 1.5}),
        "clusters.reviews.endpoints[0].weight",
        "Input should be a valid integer",
        id="endpoint-weight-float",
    ),
    pytest.param(
        endpoints({"url": "http://127.0.0.1:9081", "weight": True}),
        "clusters.reviews.endpoints[0].weight",
        "Input should be a valid integer",
        id="endpoint-weight-bool",
    ),
    pytest.param(
        endpoints("http://127.0.0.1:9081", "http://127.0.0.1:9082", "http://127.0.0.1:9081"),
        "clusters.reviews.endpoints[2]",
        "duplicate endpoint 'http://127.0.0.1:9081' (also endpoints[0])",
        id="endpoint-duplicate",
    ),
    pytest.param(
        endpoints("http://reviews:80", {"url": "http://REVIEWS/", "weight": 2}),
        "clusters.reviews.endpoints[1]",
        "duplicate endpoint 'http://reviews' (also endpoints[0])",
        id="endpoint-duplicate-once-normalised",
    ),
    # ── load balancing ──
    pytest.param(
        cluster(lb="fastest"),
        "clusters.reviews.lb",
        "Input should be 'round_robin', 'random', 'least_request' or 'ring_hash'",
        id="lb-unknown",
    ),
    pytest.param(
        cluster(lb="ring_hash"),
        "clusters.reviews.hash_on",
        "lb 'ring_hash' needs hash_on: {header: NAME} or {cookie: NAME}",
        id="ring-hash-without-hash-on",
    ),
    pytest.param(
        cluster(hash_on={"header": "x-user"}),
        "clusters.reviews.hash_on",
        "hash_on applies only to lb 'ring_hash', not 'round_robin'",
        id="hash-on-with-default-lb",
    ),
    pytest.param(
        cluster(lb="least_request", hash_on={"cookie": "session"}),
        "clusters.reviews.hash_on",
        "hash_on applies only to lb 'ring_hash', not 'least_request'",
        id="hash-on-with-least-request",
    ),
    pytest.param(
        ring_hash({"header": "x-user", "cookie": "session"}),
        "clusters.reviews.hash_on",
        "set exactly one of 'header' or 'cookie'",
        id="hash-on-both",
    ),
    pytest.param(
        ring_hash({}), "clusters.reviews.hash_on", "set exactly one of 'header' or 'cookie'", id="hash-on-neither"
    ),
    pytest.param(
        ring_hash({"header": "x user"}),
        "clusters.reviews.hash_on.header",
        "invalid header name 'x user'",
        id="hash-on-bad-header-name",
    ),
    # ── header names and values ──
    pytest.param(
        match(headers={"x user": "1"}),
        "routes[0].match.headers['x user']",
        "invalid header name 'x user'",
        id="match-header-name",
    ),
    pytest.param(
        match(headers={"": "1"}), "routes[0].match.headers['']", "invalid header name ''", id="match-header-name-empty"
    ),
    pytest.param(
        request_ops(set={"x:canary": "1"}),
        "routes[0].headers.request.set['x:canary']",
        "invalid header name 'x:canary'",
        id="set-header-name",
    ),
    pytest.param(
        response_ops(add={"x(served)": "1"}),
        "routes[0].headers.response.add['x(served)']",
        "invalid header name 'x(served)'",
        id="add-header-name",
    ),
    pytest.param(
        request_ops(remove=["x-debug", "x debug"]),
        "routes[0].headers.request.remove[1]",
        "invalid header name 'x debug'",
        id="remove-header-name",
    ),
    pytest.param(
        direct(headers={"retry after": "1"}),
        "routes[0].direct_response.headers['retry after']",
        "invalid header name 'retry after'",
        id="direct-response-header-name",
    ),
    pytest.param(
        request_ops(set={"X-Canary": "1", "x-canary": "2"}),
        "routes[0].headers.request.set",
        "header 'x-canary' is also written as 'X-Canary': header names ignore case",
        id="set-header-twice-in-different-case",
    ),
    pytest.param(
        match(headers={"User-Agent": "a", "user-agent": "b"}),
        "routes[0].match.headers",
        "header 'user-agent' is also written as 'User-Agent'",
        id="match-header-twice-in-different-case",
    ),
    pytest.param(
        request_ops(set={"x-canary": "a\r\nx-admin: 1"}),
        "routes[0].headers.request.set.x-canary",
        "header value 'a\\r\\nx-admin: 1' contains CR, LF or NUL",
        id="set-header-value-crlf",
    ),
    pytest.param(
        request_ops(add={"x-canary": "a\nb"}),
        "routes[0].headers.request.add.x-canary",
        "contains CR, LF or NUL",
        id="add-header-value-lf",
    ),
    pytest.param(
        response_ops(set={"x-served-by": "mesh\r"}),
        "routes[0].headers.response.set.x-served-by",
        "contains CR, LF or NUL",
        id="response-header-value-cr",
    ),
    pytest.param(
        direct(headers={"retry-after": "1\x00"}),
        "routes[0].direct_response.headers.retry-after",
        "contains CR, LF or NUL",
        id="direct-response-header-value-nul",
    ),
    pytest.param(
        request_ops(set={"x-canary": 1}),
        "routes[0].headers.request.set.x-canary",
        "Input should be a valid string",
        id="header-value-int",
    ),
    # ── string matches ──
    pytest.param(
        match(headers={"x-user": {}}),
        "routes[0].match.headers.x-user",
        "set exactly one of exact, prefix, regex, present: true, absent: true",
        id="string-match-none",
    ),
    pytest.param(
        match(headers={"x-user": {"exact": "a", "prefix": "b"}}),
        "routes[0].match.headers.x-user",
        "set exactly one of exact, prefix, regex, present: true, absent: true (got exact, prefix)",
        id="string-match-two",
    ),
    pytest.param(
        match(query={"beta": {"regex": "1", "absent": True}}),
        "routes[0].match.query.beta",
        "(got regex, absent)",
        id="query-match-two",
    ),
    pytest.param(
        match(headers={"x-user": {"present": False}}),
        "routes[0].match.headers.x-user.present",
        "Input should be True",
        id="string-match-present-false",
    ),
    # ── regexes name the pattern (unless it may be a credential) ──
    pytest.param(
        match(headers={"user-agent": {"regex": "(Android"}}),
        "routes[0].match.headers.user-agent.regex",
        "invalid regex '(Android': missing ), unterminated subpattern",
        id="header-regex",
    ),
    pytest.param(
        match(query={"beta": {"regex": "[01"}}),
        "routes[0].match.query.beta.regex",
        "invalid regex '[redacted]': unterminated character set",  # a query value may be a credential
        id="query-regex",
    ),
    pytest.param(
        match(path_prefix=DROP, path_regex="*/api"),
        "routes[0].match.path_regex",
        "invalid regex '*/api': nothing to repeat",
        id="path-regex",
    ),
    # ── paths ──
    pytest.param(
        match(path_prefix=DROP, path="api"),
        "routes[0].match.path",
        "path 'api' must start with '/'",
        id="path-no-slash",
    ),
    pytest.param(
        match(path_prefix="api/"),
        "routes[0].match.path_prefix",
        "path 'api/' must start with '/'",
        id="prefix-no-slash",
    ),
    pytest.param(
        match(path="/api"),
        "routes[0].match",
        "set at most one of path, path_prefix, path_regex (got path, path_prefix)",
        id="path-and-prefix",
    ),
    pytest.param(
        match(path="/api", path_regex="/a.*"),
        "routes[0].match",
        "(got path, path_prefix, path_regex)",
        id="three-path-matchers",
    ),
    # ── methods ──
    pytest.param(match(method=[]), "routes[0].match.method", "list at least one method", id="method-empty-list"),
    pytest.param(
        match(method=["GET", "GE T"]), "routes[0].match.method[1]", "invalid method 'GE T'", id="method-with-space"
    ),
    pytest.param(
        match(method="GET,POST"), "routes[0].match.method[0]", "invalid method 'GET,POST'", id="method-comma-list"
    ),
    pytest.param(match(method=[""]), "routes[0].match.method[0]", "invalid method ''", id="method-empty-string"),
    pytest.param(match(method=[1]), "routes[0].match.method[0]", "Input should be a valid string", id="method-int"),
    # ── hosts ──
    pytest.param(
        match(host="http://reviews"),
        "routes[0].match.host",
        "invalid host 'http://reviews': a host name, '*.suffix' or '*' (no scheme, port or path)",
        id="host-with-scheme",
    ),
    pytest.param(
        match(host="reviews:9080"), "routes[0].match.host", "invalid host 'reviews:9080'", id="host-with-port"
    ),
    pytest.param(match(host="db:5432"), "routes[0].match.host", "invalid host 'db:5432'", id="host-hex-name-with-port"),
    pytest.param(match(host="reviews/api"), "routes[0].match.host", "invalid host 'reviews/api'", id="host-with-path"),
    pytest.param(match(host=""), "routes[0].match.host", "invalid host ''", id="host-empty"),
    pytest.param(match(host="[::1]"), "routes[0].match.host", "invalid host '[::1]'", id="host-bracketed-ipv6"),
    # ── route actions ──
    pytest.param(
        route(cluster=DROP),
        "routes[0]",
        "set exactly one of cluster, split, direct_response",
        id="route-without-action",
    ),
    pytest.param(
        route(split=[{"cluster": "ratings", "weight": 1}]),
        "routes[0]",
        "set exactly one of cluster, split, direct_response (got cluster, split)",
        id="route-cluster-and-split",
    ),
    pytest.param(
        route(direct_response={"status": 503}),
        "routes[0]",
        "(got cluster, direct_response)",
        id="route-cluster-and-direct-response",
    ),
    pytest.param(route(cluster=DROP, split=None), "routes[0]", "set exactly one of", id="route-split-null"),
    pytest.param(route(name=""), "routes[0].name", "String should have at least 1 character", id="route-name-empty"),
    # ── splits and cross-references ──
    pytest.param(split(), "routes[0].split", "must not be empty", id="split-empty"),
    pytest.param(
        split({"cluster": "reviews", "weight": 0}),
        "routes[0].split[0].weight",
        "Input should be greater than or equal to 1",
        id="split-weight-0",
    ),
    pytest.param(
        split({"cluster": "reviews", "weight": 2.5}),
        "routes[0].split[0].weight",
        "Input should be a valid integer",
        id="split-weight-float",
    ),
    pytest.param(
        split({"cluster": "reviews", "weight": "95"}),
        "routes[0].split[0].weight",
        "Input should be a valid integer",
        id="split-weight-string",
    ),
    pytest.param(
        split({"cluster": "reviews", "weight": 95}, {"cluster": "reviews-v3", "weight": 5}),
        "routes[0].split[1].cluster",
        "unknown cluster 'reviews-v3'",
        id="split-unknown-cluster",
    ),
    pytest.param(
        split(
            {"cluster": "reviews", "weight": 1},
            {"cluster": "ratings", "weight": 1},
            {"cluster": "reviews", "weight": 1},
        ),
        "routes[0].split[2].cluster",
        "cluster 'reviews' appears twice in this split (also split[0])",
        id="split-same-cluster-twice",
    ),
    pytest.param(
        route(cluster="reviews-v3"), "routes[0].cluster", "unknown cluster 'reviews-v3'", id="route-unknown-cluster"
    ),
    pytest.param(
        top(routes=[GOOD_ROUTE, {**GOOD_ROUTE, "cluster": "ratings"}]),
        "routes[1].name",
        "duplicate route name 'r' (also routes[0])",
        id="duplicate-route-name",
    ),
    # ── direct responses ──
    pytest.param(direct(status=99), "routes[0].direct_response.status", "greater than or equal to 200", id="status-99"),
    pytest.param(direct(status=600), "routes[0].direct_response.status", "less than or equal to 599", id="status-600"),
    pytest.param(
        direct(status="200"), "routes[0].direct_response.status", "Input should be a valid integer", id="status-string"
    ),
    pytest.param(
        direct(status=True), "routes[0].direct_response.status", "Input should be a valid integer", id="status-bool"
    ),
    pytest.param(direct(body=5), "routes[0].direct_response.body", "Input should be a valid string", id="body-int"),
    # ── rewrites ──
    pytest.param(route(rewrite={}), "routes[0].rewrite", "set path_prefix, host, or both", id="rewrite-empty"),
    pytest.param(
        route(match={"path_regex": "/api/.*"}, rewrite={"path_prefix": "/"}),
        "routes[0].rewrite.path_prefix",
        "needs match.path_prefix or match.path to replace, not match.path_regex",
        id="rewrite-prefix-with-path-regex",
    ),
    pytest.param(
        route(cluster=DROP, direct_response={"status": 503}, rewrite={"host": "reviews.internal"}),
        "routes[0].rewrite",
        "rewrite has no effect on a direct_response route",
        id="rewrite-on-direct-response",
    ),
    pytest.param(
        route(rewrite={"path_prefix": "v2/"}),
        "routes[0].rewrite.path_prefix",
        "path 'v2/' must start with '/'",
        id="rewrite-prefix-no-slash",
    ),
    pytest.param(
        route(rewrite={"host": "reviews/internal"}),
        "routes[0].rewrite.host",
        "invalid host 'reviews/internal'",
        id="rewrite-host-path",
    ),
    pytest.param(route(rewrite={"host": ""}), "routes[0].rewrite.host", "invalid host ''", id="rewrite-host-empty"),
    # ── outbound policy and cluster names ──
    pytest.param(
        top(outbound_policy="deny_all"),
        "outbound_policy",
        "Input should be 'allow_any' or 'registry_only'",
        id="outbound-policy-unknown",
    ),
    pytest.param(
        top(clusters={**GOOD_CLUSTERS, "reviews v1": GOOD_CLUSTERS["ratings"]}),
        "clusters['reviews v1']",
        "invalid cluster name 'reviews v1': clients use it as a host name, so use letters, digits, '-' and '_',"
        " with '.' between parts, at most 253 characters",
        id="cluster-name-with-space",
    ),
    pytest.param(
        top(clusters={**GOOD_CLUSTERS, "reviews/v1": GOOD_CLUSTERS["ratings"]}),
        "clusters['reviews/v1']",
        "invalid cluster name 'reviews/v1'",
        id="cluster-name-with-slash",
    ),
    pytest.param(
        top(clusters={**GOOD_CLUSTERS, "-reviews": GOOD_CLUSTERS["ratings"]}),
        "clusters.-reviews",
        "invalid cluster name '-reviews'",
        id="cluster-name-leading-dash",
    ),
    pytest.param(
        top(clusters={**GOOD_CLUSTERS, "reviews..v1": GOOD_CLUSTERS["ratings"]}),
        "clusters['reviews..v1']",
        "invalid cluster name 'reviews..v1'",
        id="cluster-name-empty-part",
    ),
    pytest.param(
        top(clusters={**GOOD_CLUSTERS, "": GOOD_CLUSTERS["ratings"]}),
        "clusters['']",
        "invalid cluster name ''",
        id="cluster-name-empty",
    ),
    pytest.param(
        top(clusters={**GOOD_CLUSTERS, "r" * 254: GOOD_CLUSTERS["ratings"]}),
        f"clusters.{'r' * 254}",
        "at most 253 characters",
        id="cluster-name-too-long",
    ),
]


@pytest.mark.parametrize(("config", "path", "message"), BAD_CONFIGS)
def test_malformed_config_reports_the_exact_path_and_problem(config: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        MeshConfig.from_dict(config)
    exc = info.value
    assert len(exc.errors) == 1, exc.errors
    [(actual_path, actual_message)] = exc.errors
    assert actual_path == path
    assert message in actual_message
    # One header line and one line per error: a CR or LF in the bad value can't break the report apart.
    assert str(exc).splitlines() == ["invalid mesh config:", f"  {path}: {actual_message}"]
    for noise in NOISE:
        assert noise not in str(exc)


def _issue_example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    return data


def test_the_issue_example_error_reads_exactly_as_the_issue_shows() -> None:
    data = _issue_example()
    data["routes"][1]["split"][0]["cluster"] = "reviews-v3"
    with pytest.raises(ConfigError) as info:
        MeshConfig.from_dict(data, source="mesh.yaml")
    assert info.value.errors == [("routes[1].split[0].cluster", "unknown cluster 'reviews-v3'")]
    assert "routes[1].split[0].cluster: unknown cluster 'reviews-v3'" in str(info.value).splitlines()[1]
    assert (
        str(info.value)
        == "invalid mesh config in mesh.yaml:\n  routes[1].split[0].cluster: unknown cluster 'reviews-v3'"
    )


def test_several_errors_are_all_reported_in_one_run() -> None:
    """Field errors in several places and cross-reference errors come back together, each at its path."""
    data = _issue_example()
    data["outbound_policy"] = "deny_all"
    data["clusters"]["reviews-v1"]["endpoints"] = []
    data["clusters"]["reviews-v2"]["lb"] = "fastest"
    data["routes"][0]["match"]["path"] = "api"
    data["routes"][0]["cluster"] = "reviews-v9"
    data["routes"][1]["split"][1]["weight"] = 0
    data["routes"][1]["split"][0]["cluster"] = "reviews-v3"
    data["routes"][2]["name"] = "reviews-android"
    with pytest.raises(ConfigError) as info:
        MeshConfig.from_dict(data)
    assert info.value.errors == [
        ("outbound_policy", "Input should be 'allow_any' or 'registry_only'"),
        ("clusters.reviews-v1.endpoints", "must not be empty"),
        ("clusters.reviews-v2.lb", "Input should be 'round_robin', 'random', 'least_request' or 'ring_hash'"),
        ("routes[0].match.path", "path 'api' must start with '/'"),
        ("routes[1].split[1].weight", "Input should be greater than or equal to 1"),
        # A whole-model check of a model with a bad field: pydantic alone would report it in a second run.
        ("routes[0].match", "set at most one of path, path_prefix, path_regex (got path, path_prefix)"),
        ("routes[0].cluster", "unknown cluster 'reviews-v9'"),
        ("routes[1].split[0].cluster", "unknown cluster 'reviews-v3'"),
        ("routes[2].name", "duplicate route name 'reviews-android' (also routes[0])"),
    ]
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid mesh config:"
    assert lines[1:] == [f"  {path}: {message}" for path, message in info.value.errors]


def test_cross_reference_errors_are_all_reported_together() -> None:
    config = top(
        routes=[
            {"name": "a", "cluster": "nope"},
            {"name": "a", "split": [{"cluster": "ratings", "weight": 1}, {"cluster": "gone", "weight": 1}]},
            {"name": "b", "split": [{"cluster": "gone", "weight": 1}, {"cluster": "gone", "weight": 2}]},
        ]
    )
    with pytest.raises(ConfigError) as info:
        MeshConfig.from_dict(config)
    assert info.value.errors == [
        ("routes[0].cluster", "unknown cluster 'nope'"),
        ("routes[1].name", "duplicate route name 'a' (also routes[0])"),
        ("routes[1].split[1].cluster", "unknown cluster 'gone'"),
        ("routes[2].split[0].cluster", "unknown cluster 'gone'"),
        ("routes[2].split[1].cluster", "unknown cluster 'gone'"),
        ("routes[2].split[1].cluster", "cluster 'gone' appears twice in this split (also split[0])"),
    ]


def test_a_reference_to_an_invalid_cluster_is_not_called_unknown() -> None:
    """The cluster exists but is broken: only its own error is reported, not a second 'unknown cluster'."""
    config = top(clusters={**GOOD_CLUSTERS, "reviews": {"endpoints": []}})
    with pytest.raises(ConfigError) as info:
        MeshConfig.from_dict(config)
    assert info.value.errors == [("clusters.reviews.endpoints", "must not be empty")]


def test_references_are_not_checked_when_clusters_is_not_a_mapping() -> None:
    """With no cluster names to check against, every route would be 'unknown': report the real problem only."""
    with pytest.raises(ConfigError) as info:
        MeshConfig.from_dict(top(clusters=["reviews"]))
    assert info.value.errors == [("clusters", "Input should be a valid dictionary")]
