"""xDS resources → meshlib config (meshlib/_xds/translate*.py): each mapping rule, and each Rejected field path."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("envoy.config.cluster.v3.cluster_pb2")

# The Any payloads ParseDict resolves must be in the descriptor pool.
import envoy.extensions.filters.http.fault.v3.fault_pb2
import envoy.extensions.filters.http.router.v3.router_pb2
import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2
import envoy.extensions.load_balancing_policies.least_request.v3.least_request_pb2
import envoy.extensions.load_balancing_policies.maglev.v3.maglev_pb2
import envoy.extensions.load_balancing_policies.pick_first.v3.pick_first_pb2
import envoy.extensions.load_balancing_policies.round_robin.v3.round_robin_pb2
import envoy.extensions.load_balancing_policies.wrr_locality.v3.wrr_locality_pb2
import envoy.extensions.transport_sockets.tls.v3.tls_pb2  # noqa: F401
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from google.protobuf.json_format import ParseDict

import meshlib
from meshlib._xds import translate as t
from meshlib._xds.translate import Rejected, Translation

T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"},
}
FAULT_TYPE = T + "envoy.extensions.filters.http.fault.v3.HTTPFault"
TLS_TYPE = T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
AUTHORITY = "reviews.default.svc.cluster.local:9080"
HOST = "reviews.default.svc.cluster.local"


# ---------------------------------------------------------------------------------------------------- builders


def listener(name: str = AUTHORITY, *, rds: str = "routes", route_config: Any = None, filters: Any = None, **hcm: Any):
    manager: dict[str, Any] = {
        "@type": HCM,
        "stat_prefix": "out",
        "http_filters": [ROUTER] if filters is None else filters,
    }
    if route_config is not None:
        manager["route_config"] = route_config
    else:
        manager["rds"] = {"route_config_name": rds, "config_source": {"ads": {}}}
    manager.update(hcm)
    return ParseDict({"name": name, "api_listener": {"api_listener": manager}}, Listener())


def fault_filter(**config: Any) -> dict[str, Any]:
    return {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT_TYPE, **config}}


def route(prefix: str = "/", cluster: str = "reviews", **extra: Any) -> dict[str, Any]:
    action = {k: extra.pop(k) for k in list(extra) if k not in ROUTE_FIELDS}
    if "weighted_clusters" not in action and "cluster_header" not in action:
        action["cluster"] = cluster
    return {"match": {"prefix": prefix, **extra.pop("match", {})}, "route": action, **extra}


ROUTE_FIELDS = {
    "name",
    "match",
    "typed_per_filter_config",
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
    "direct_response",
    "redirect",
}


def vhost(*routes: dict[str, Any], domains: tuple[str, ...] = ("*",), name: str = "vh", **extra: Any):
    return {"name": name, "domains": list(domains), "routes": list(routes) or [route()], **extra}


def route_config(*vhosts: dict[str, Any], name: str = "routes", **extra: Any) -> Any:
    return ParseDict({"name": name, "virtual_hosts": list(vhosts) or [vhost()], **extra}, RouteConfiguration())


def cluster(name: str = "reviews", **extra: Any) -> Any:
    data: dict[str, Any] = {"name": name, "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}}
    data.update(extra)
    return ParseDict(data, Cluster())


def endpoint(address: str, port: int = 9080, **extra: Any) -> dict[str, Any]:
    return {"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}, **extra}


def assignment(name: str = "reviews", *localities: dict[str, Any], **extra: Any) -> Any:
    return ParseDict({"cluster_name": name, "endpoints": list(localities), **extra}, ClusterLoadAssignment())


def locality(*endpoints: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"lb_endpoints": list(endpoints), **extra}


def run(
    rc: Any = None,
    clusters: tuple[Any, ...] = (),
    claps: tuple[Any, ...] = (),
    *,
    lst: Any = None,
    providers: Any = None,
) -> Translation:
    """Check every resource as the manager does, then translate them all."""
    lst = lst if lst is not None else listener()
    t.check_listener(lst)
    rcs = {}
    if rc is not None:
        t.check_route_configuration(rc)
        rcs[rc.name] = rc
    for c in clusters:
        t.check_cluster(c, providers or {})
    for cla in claps:
        t.check_load_assignment(cla)
    return t.translate(
        {lst.name: lst},
        rcs,
        {c.name: c for c in clusters},
        {a.cluster_name: a for a in claps},
        certificate_providers=providers or {},
    )


def routes_of(translation: Translation) -> list[dict[str, Any]]:
    """The listener's routes but the catch-all 404."""
    routes: list[dict[str, Any]] = translation.config["routes"][:-1]
    return routes


def only_route(rc: Any, **kwargs: Any) -> dict[str, Any]:
    routes = routes_of(run(rc, **kwargs))
    assert len(routes) == 1, routes
    return routes[0]


def rejected(check: Any, *args: Any) -> Rejected:
    with pytest.raises(Rejected) as info:
        check(*args)
    return info.value


def valid(translation: Translation) -> meshlib.MeshConfig:
    return meshlib.MeshConfig.from_dict(translation.config)


# ---------------------------------------------------------------------------------------------------- listeners


def test_a_listener_routes_its_authority_then_answers_404_like_envoys_nr() -> None:
    rc = route_config(vhost(route("/api", name="api"), route("/"), domains=(AUTHORITY,), name="reviews"))
    translation = run(rc, (cluster(),), (assignment("reviews", locality(endpoint("10.0.0.1"))),))
    match = {"host": HOST, "authority": AUTHORITY}
    assert translation.config["routes"] == [
        {
            "name": f"{AUTHORITY}/reviews/api",
            "match": {**match, "path_prefix": "/api"},
            "cluster": "reviews",
            "timeout": "15s",
        },
        {"name": f"{AUTHORITY}/reviews/1", "match": match, "cluster": "reviews", "timeout": "15s"},
        {"name": f"{AUTHORITY}/no-route", "match": match, "direct_response": {"status": 404}},
    ]
    assert translation.endpoints == {"reviews": (("http://10.0.0.1:9080", 1),)}
    assert translation.cluster_names == {"reviews": "reviews"}
    config = valid(translation)
    assert [r.match.authority for r in config.routes] == [AUTHORITY] * 3


def test_a_listener_without_its_route_configuration_yet_only_answers_404() -> None:
    translation = run(None)
    assert translation.config == {
        "clusters": {},
        "routes": [
            {
                "name": f"{AUTHORITY}/no-route",
                "match": {"host": HOST, "authority": AUTHORITY},
                "direct_response": {"status": 404},
            }
        ],
    }
    valid(translation)


def test_a_short_authority_and_an_inline_route_configuration() -> None:
    inline = {"name": "inline", "virtual_hosts": [vhost(domains=("reviews",))]}
    lst = listener("reviews", route_config=inline)
    assert t.route_config_name(lst) is None
    translation = run(lst=lst)
    assert routes_of(translation)[0]["match"] == {"host": "reviews", "authority": "reviews"}
    assert translation.config["clusters"] == {"reviews": {"discovery": {"xds": {"cluster": "reviews"}}}}
    assert translation.endpoints == {"reviews": ()}  # not known yet: no endpoints, 503 as Envoy's
    valid(translation)


def test_route_config_name_referenced_clusters_and_eds_name() -> None:
    assert t.route_config_name(listener(rds="r1")) == "r1"
    rc = route_config(
        vhost(
            route("/a", "one"),
            route("/b", weighted_clusters={"clusters": [{"name": "two", "weight": 1}, {"name": "three", "weight": 0}]}),
            route("/c", "four", request_mirror_policies=[{"cluster": "shadow"}]),
            {"match": {"prefix": "/d"}, "direct_response": {"status": 200}},
        )
    )
    assert t.referenced_clusters(rc) == {"one", "two", "three", "four", "shadow"}
    assert t.eds_name(cluster("c")) == "c"
    assert t.eds_name(cluster("c", eds_cluster_config={"service_name": "svc", "eds_config": {"ads": {}}})) == "svc"
    assert t.eds_name(cluster("c", type="STATIC", eds_cluster_config=None)) is None


@pytest.mark.parametrize(
    ("name", "field"),
    [("http://reviews/", "name"), ("reviews:80", "name"), ("Reviews:9080/x", "name")],
)
def test_a_listener_name_that_is_no_authority_is_rejected(name: str, field: str) -> None:
    error = rejected(t.check_listener, listener(name))
    assert (error.kind, error.name, error.field) == ("Listener", name, field)
    assert str(error).startswith(f"Listener {name!r}: name: ")


def test_the_router_must_be_last_and_other_filters_optional() -> None:
    error = rejected(t.check_listener, listener(filters=[ROUTER, fault_filter()]))
    assert error.field == "api_listener.api_listener(HttpConnectionManager).http_filters[0]"
    assert "last" in error.message
    unknown = {"name": "x", "typed_config": {"@type": T + "google.protobuf.Empty"}}
    error = rejected(t.check_listener, listener(filters=[unknown, ROUTER]))
    assert error.field == "api_listener.api_listener(HttpConnectionManager).http_filters[0]"
    t.check_listener(listener(filters=[{**unknown, "is_optional": True}, ROUTER]))
    error = rejected(t.check_listener, listener(filters=[]))
    assert error.field == "api_listener.api_listener(HttpConnectionManager).http_filters"


@pytest.mark.parametrize(
    ("hcm", "field"),
    [
        ({"via": "envoy"}, "via"),
        ({"normalize_path": True}, "normalize_path"),
        ({"merge_slashes": True}, "merge_slashes"),
        ({"strip_any_host_port": True}, "strip_any_host_port"),
    ],
)
def test_http_connection_manager_options_that_change_routing_are_rejected(hcm: dict[str, Any], field: str) -> None:
    error = rejected(t.check_listener, listener(**hcm))
    assert error.field == f"api_listener.api_listener(HttpConnectionManager).{field}"


def test_scoped_routes_and_socket_listeners_are_rejected() -> None:
    scoped = {"name": "s", "scoped_rds": {"scoped_rds_config_source": {"ads": {}}}, "rds_config_source": {"ads": {}}}
    manager = {"@type": HCM, "stat_prefix": "x", "scoped_routes": scoped, "http_filters": [ROUTER]}
    lst = ParseDict({"name": "reviews", "api_listener": {"api_listener": manager}}, Listener())
    assert rejected(t.check_listener, lst).field == "api_listener.api_listener(HttpConnectionManager).scoped_routes"
    socket = ParseDict(
        {"name": "reviews", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 80}}}, Listener()
    )
    assert rejected(t.check_listener, socket).field == "api_listener"


# ---------------------------------------------------------------------------------------------------- virtual hosts


@pytest.mark.parametrize(
    ("domains", "picked"),
    [
        ([["*"], ["reviews.default.svc.cluster.local:9080"]], 1),
        ([["*.svc.cluster.local:9080"], ["*.cluster.local:9080"], ["*"]], 0),
        ([["*.cluster.local:9080"], ["*.svc.cluster.local:9080"]], 1),
        ([["reviews.*"], ["reviews.default.*"], ["*"]], 1),
        ([["*-x.example"], ["reviews.*"], ["*"]], 1),
        ([["reviews.default.svc.cluster.local"], ["*"]], 1),  # the port counts, as in Envoy
        ([["REVIEWS.default.svc.cluster.local:9080"], ["*"]], 0),
        ([["other"]], None),
    ],
)
def test_the_virtual_host_is_picked_as_envoy_picks_it(domains: list[list[str]], picked: int | None) -> None:
    rc = route_config(*(vhost(route(cluster=f"c{i}"), domains=tuple(d), name=f"v{i}") for i, d in enumerate(domains)))
    routes = routes_of(run(rc))
    assert [r["cluster"] for r in routes] == ([] if picked is None else [f"c{picked}"])


def test_ignore_port_in_host_matching() -> None:
    rc = route_config(
        vhost(route(cluster="a"), domains=(HOST,)),
        vhost(route(cluster="b"), domains=("*",)),
        ignore_port_in_host_matching=True,
    )
    assert [r["cluster"] for r in routes_of(run(rc))] == ["a"]


def test_a_wildcard_must_match_at_least_one_character() -> None:
    rc = route_config(vhost(route(cluster="a"), domains=("*reviews",)), vhost(route(cluster="b"), domains=("*",)))
    assert [r["cluster"] for r in routes_of(run(rc, lst=listener("reviews")))] == ["b"]


def test_duplicate_domains_are_rejected() -> None:
    rc = route_config(vhost(domains=("a", "b"), name="one"), vhost(domains=("c", "B"), name="two"))
    error = rejected(t.check_route_configuration, rc)
    assert (error.kind, error.name, error.field) == ("RouteConfiguration", "routes", "virtual_hosts[1].domains[1]")
    assert "duplicate domain 'B'" in error.message


def test_several_listeners_share_one_route_configuration() -> None:
    rc = route_config(vhost(route(cluster="a"), domains=("a",)), vhost(route(cluster="b"), domains=("b:8080",)))
    listeners = {"a": listener("a"), "b:8080": listener("b:8080")}
    translation = t.translate(listeners, {"routes": rc}, {}, {})
    assert [(r["name"], r.get("cluster")) for r in translation.config["routes"]] == [
        ("a/vh/0", "a"),
        ("a/no-route", None),
        ("b:8080/vh/0", "b"),
        ("b:8080/no-route", None),
    ]
    valid(translation)


def test_routes_with_the_same_name_stay_apart() -> None:
    rc = route_config(vhost(route("/a", name="x"), route("/b", name="x")))
    assert [r["name"] for r in routes_of(run(rc))] == [f"{AUTHORITY}/vh/x", f"{AUTHORITY}/vh/x#1"]


# ---------------------------------------------------------------------------------------------------- matches


def match_of(rm: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    rc = route_config(vhost({"match": rm, "route": {"cluster": "reviews"}}))
    m = dict(only_route(rc, **kwargs)["match"])
    assert (m.pop("host"), m.pop("authority")) == (HOST, AUTHORITY)
    return m


@pytest.mark.parametrize(
    ("rm", "expected"),
    [
        ({"prefix": "/api"}, {"path_prefix": "/api"}),
        ({"prefix": ""}, {}),
        ({"prefix": "/"}, {}),
        ({"path": "/api/v1"}, {"path": "/api/v1"}),
        ({"safe_regex": {"regex": "/v[0-9]+/.*"}}, {"path_regex": "/v[0-9]+/.*"}),
        ({"path_separated_prefix": "/api"}, {"path_regex": "(?s)/api(?:/.*)?"}),
        ({"prefix": "/API", "case_sensitive": False}, {"path_regex": "(?is)/API.*"}),
        ({"path": "/a.b", "case_sensitive": False}, {"path_regex": "(?i)/a\\.b"}),
        (
            {"prefix": "/", "runtime_fraction": {"default_value": {"numerator": 25, "denominator": "TEN_THOUSAND"}}},
            {"percent": 0.25},
        ),
        ({"prefix": "/", "runtime_fraction": {"default_value": {"numerator": 100}}}, {}),
        ({"prefix": "/", "grpc": {}}, {"headers": {"content-type": {"prefix": "application/grpc"}}}),
        (
            {"prefix": "/", "query_parameters": [{"name": "a", "string_match": {"exact": "1"}}, {"name": "b"}]},
            {"query": {"a": {"exact": "1"}, "b": {"present": True}}},
        ),
    ],
)
def test_path_matches(rm: dict[str, Any], expected: dict[str, Any]) -> None:
    assert match_of(rm) == expected


def test_matches_load_into_meshlib() -> None:
    rc = route_config(
        vhost(
            {"match": {"path_separated_prefix": "/api", "case_sensitive": False}, "route": {"cluster": "reviews"}},
            {
                "match": {"prefix": "/x", "runtime_fraction": {"default_value": {"numerator": 5}}},
                "route": {"cluster": "reviews"},
            },
        )
    )
    valid(run(rc))


@pytest.mark.parametrize(
    ("matcher", "expected"),
    [
        ({"string_match": {"exact": "v1"}}, {"exact": "v1"}),
        ({"string_match": {"exact": "V1", "ignore_case": True}}, {"regex": "(?i)V1"}),
        ({"string_match": {"prefix": "a"}}, {"prefix": "a"}),
        ({"string_match": {"prefix": "a.", "ignore_case": True}}, {"regex": "(?is)a\\..*"}),
        ({"string_match": {"suffix": "z"}}, {"regex": "(?s).*z"}),
        ({"string_match": {"contains": "m", "ignore_case": True}}, {"regex": "(?si).*m.*"}),
        ({"string_match": {"safe_regex": {"regex": "v[12]"}}}, {"regex": "v[12]"}),
        ({"present_match": True}, {"present": True}),
        ({"present_match": False}, {"absent": True}),
        ({"present_match": True, "invert_match": True}, {"absent": True}),
        ({}, {"present": True}),
        ({"exact_match": "v1"}, {"exact": "v1"}),
        ({"prefix_match": "v"}, {"prefix": "v"}),
        ({"suffix_match": "1"}, {"regex": "(?s).*1"}),
        ({"contains_match": "x"}, {"regex": "(?s).*x.*"}),
        ({"safe_regex_match": {"regex": "a+"}}, {"regex": "a+"}),
    ],
)
def test_header_matchers(matcher: dict[str, Any], expected: dict[str, Any]) -> None:
    m = match_of({"prefix": "/", "headers": [{"name": "X-Version", **matcher}]})
    assert m == {"headers": {"x-version": expected}}


def test_header_matchers_load_into_meshlib() -> None:
    headers = [
        {"name": "a", "string_match": {"suffix": "z", "ignore_case": True}},
        {"name": "b", "present_match": False},
        {"name": "c", "string_match": {"contains": "("}},
    ]
    valid(run(route_config(vhost({"match": {"prefix": "/", "headers": headers}, "route": {"cluster": "reviews"}}))))


def test_method_and_authority_pseudo_headers() -> None:
    assert match_of({"prefix": "/", "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]}) == {
        "method": ["POST"]
    }
    method_any_case = {"name": ":method", "string_match": {"exact": "post", "ignore_case": True}}
    assert match_of({"prefix": "/", "headers": [method_any_case]}) == {"method": ["POST"]}
    # :authority is the listener's: decided once.
    assert match_of({"prefix": "/", "headers": [{"name": ":authority", "string_match": {"prefix": "reviews."}}]}) == {}
    rc = route_config(
        vhost(
            {
                "match": {"prefix": "/", "headers": [{"name": ":authority", "exact_match": "other"}]},
                "route": {"cluster": "x"},
            },
            {
                "match": {"prefix": "/", "headers": [{"name": ":method", "exact_match": "get"}]},
                "route": {"cluster": "y"},
            },
            route(cluster="z"),
        )
    )
    assert [r["cluster"] for r in routes_of(run(rc))] == ["z"]


@pytest.mark.parametrize(
    ("rm", "field", "message"),
    [
        ({"safe_regex": {"regex": "/(?=a)"}}, "virtual_hosts[0].routes[1].match.safe_regex.regex", "lookahead"),
        ({"safe_regex": {"regex": "/(a)\\1"}}, "virtual_hosts[0].routes[1].match.safe_regex.regex", "backreference"),
        ({"safe_regex": {"regex": "/[a"}}, "virtual_hosts[0].routes[1].match.safe_regex.regex", "invalid regex"),
        (
            {"prefix": "/", "headers": [{"name": "x", "range_match": {"start": 1, "end": 3}}]},
            "virtual_hosts[0].routes[1].match.headers[0].range_match",
            "range",
        ),
        (
            {"prefix": "/", "headers": [{"name": "x", "exact_match": "a", "invert_match": True}]},
            "virtual_hosts[0].routes[1].match.headers[0].invert_match",
            "invert",
        ),
        (
            {"prefix": "/", "headers": [{"name": "x", "string_match": {"safe_regex": {"regex": "(?<=a)b"}}}]},
            "virtual_hosts[0].routes[1].match.headers[0].string_match.safe_regex.regex",
            "lookahead/lookbehind",
        ),
        (
            {"prefix": "/", "headers": [{"name": ":path", "exact_match": "/a"}]},
            "virtual_hosts[0].routes[1].match.headers[0].name",
            ":path",
        ),
        (
            {"prefix": "/", "headers": [{"name": "x", "present_match": True}, {"name": "X", "exact_match": "1"}]},
            "virtual_hosts[0].routes[1].match.headers[1]",
            "twice",
        ),
        ({"connect_matcher": {}}, "virtual_hosts[0].routes[1].match.connect_matcher", "not supported"),
        (
            {
                "prefix": "/",
                "dynamic_metadata": [{"filter": "f", "path": [{"key": "k"}], "value": {"present_match": True}}],
            },
            "virtual_hosts[0].routes[1].match.dynamic_metadata",
            "not supported",
        ),
        (
            {"prefix": "/", "headers": [{"name": ":method", "string_match": {"prefix": "P"}}]},
            "virtual_hosts[0].routes[1].match.headers[0]",
            ":method",
        ),
    ],
)
def test_matches_meshlib_cant_honour_are_rejected(rm: dict[str, Any], field: str, message: str) -> None:
    rc = route_config(vhost(route("/ok"), {"match": rm, "route": {"cluster": "reviews"}}))
    error = rejected(t.check_route_configuration, rc)
    assert error.field == field
    assert message in error.message


# ---------------------------------------------------------------------------------------------------- actions


def test_weighted_clusters_become_a_split() -> None:
    legs = [
        {"name": "v1", "weight": 80},
        {"name": "v2", "weight": 0},
        {"name": "v3", "weight": 15},
        {"name": "v3", "weight": 5},
    ]
    rc = route_config(vhost(route(weighted_clusters={"clusters": legs})))
    translation = run(rc)
    assert routes_of(translation)[0]["split"] == [{"cluster": "v1", "weight": 80}, {"cluster": "v3", "weight": 20}]
    valid(translation)
    one = route_config(vhost(route(weighted_clusters={"clusters": [{"name": "v1", "weight": 3}, {"name": "v2"}]})))
    assert only_route(one)["cluster"] == "v1"


@pytest.mark.parametrize(
    ("action", "field", "message"),
    [
        ({"weighted_clusters": {"clusters": [{"name": "a", "weight": 0}]}}, "weighted_clusters.clusters", "weight 0"),
        (
            {
                "weighted_clusters": {
                    "clusters": [
                        {"name": "a", "weight": 1, "request_headers_to_add": [{"header": {"key": "k", "value": "v"}}]}
                    ]
                }
            },
            "weighted_clusters.clusters[0].request_headers_to_add",
            "per-leg",
        ),
        ({"cluster_header": "x-cluster"}, "cluster_header", "not supported"),
        ({"regex_rewrite": {"pattern": {"regex": "a"}, "substitution": "b"}}, "regex_rewrite", "not supported"),
        ({"auto_host_rewrite": True}, "auto_host_rewrite", "host_rewrite_literal"),
        ({"host_rewrite_header": "x-host"}, "host_rewrite_header", "host_rewrite_literal"),
        ({"metadata_match": {"filter_metadata": {"envoy.lb": {"v": "1"}}}}, "metadata_match", "not supported"),
        ({"hedge_policy": {"hedge_on_per_try_timeout": True}}, "hedge_policy", "hedging"),
        ({"cluster_not_found_response_code": "NOT_FOUND"}, "cluster_not_found_response_code", "503"),
        ({"request_mirror_policies": [{"cluster": "a"}, {"cluster": "b"}]}, "request_mirror_policies", "one cluster"),
    ],
)
def test_actions_meshlib_cant_honour_are_rejected(action: dict[str, Any], field: str, message: str) -> None:
    base = {"cluster": "reviews"} if "weighted_clusters" not in action and "cluster_header" not in action else {}
    rc = route_config(vhost({"match": {"prefix": "/"}, "route": {**base, **action}}))
    error = rejected(t.check_route_configuration, rc)
    assert error.field == f"virtual_hosts[0].routes[0].route.{field}"
    assert message in error.message


def test_redirects_are_not_supported() -> None:
    rc = route_config(vhost({"match": {"prefix": "/"}, "redirect": {"host_redirect": "x"}}))
    error = rejected(t.check_route_configuration, rc)
    assert (error.field, error.message) == ("virtual_hosts[0].routes[0].redirect", "redirects are not supported")
    assert str(error) == "RouteConfiguration 'routes': virtual_hosts[0].routes[0].redirect: redirects are not supported"


def test_direct_responses() -> None:
    rc = route_config(
        vhost(
            {"match": {"path": "/a"}, "direct_response": {"status": 503, "body": {"inline_string": "down"}}},
            {"match": {"path": "/b"}, "direct_response": {"status": 200, "body": {"inline_bytes": "b2s="}}},
            {"match": {"path": "/c"}, "direct_response": {"status": 204}},
        )
    )
    translation = run(rc)
    assert [r["direct_response"] for r in routes_of(translation)] == [
        {"status": 503, "body": "down"},
        {"status": 200, "body": "ok"},
        {"status": 204},
    ]
    assert all("timeout" not in r for r in routes_of(translation))
    valid(translation)
    long = route_config(
        vhost({"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "x" * 5000}}})
    )
    assert rejected(t.check_route_configuration, long).field == "virtual_hosts[0].routes[0].direct_response.body"
    fine = route_config(
        vhost({"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "x" * 5000}}}),
        max_direct_response_body_size_bytes=8000,
    )
    t.check_route_configuration(fine)
    from_file = route_config(
        vhost({"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"filename": "/f"}}})
    )
    assert (
        rejected(t.check_route_configuration, from_file).field
        == "virtual_hosts[0].routes[0].direct_response.body.filename"
    )


def test_rewrites() -> None:
    assert only_route(route_config(vhost(route("/api/", prefix_rewrite="/v2/"))))["rewrite"] == {"path_prefix": "/v2/"}
    assert only_route(route_config(vhost(route("", prefix_rewrite="/v2"))))["rewrite"] == {"path_prefix": "/v2/"}
    path = route_config(vhost({"match": {"path": "/old"}, "route": {"cluster": "reviews", "prefix_rewrite": "/new"}}))
    assert only_route(path)["rewrite"] == {"path_prefix": "/new"}
    host = route_config(vhost(route(host_rewrite_literal="ratings.internal")))
    translation = run(host)
    assert routes_of(translation)[0]["rewrite"] == {"host": "ratings.internal"}
    valid(translation)
    regex = route_config(
        vhost({"match": {"safe_regex": {"regex": "/a.*"}}, "route": {"cluster": "reviews", "prefix_rewrite": "/b"}})
    )
    assert rejected(t.check_route_configuration, regex).field == "virtual_hosts[0].routes[0].route.prefix_rewrite"


def test_timeouts_default_to_envoys_15s() -> None:
    assert only_route(route_config(vhost(route(timeout="2.5s"))))["timeout"] == "2500ms"
    assert "timeout" not in only_route(route_config(vhost(route(timeout="0s"))))
    capped = route_config(vhost(route(timeout="10s", max_stream_duration={"max_stream_duration": "3s"})))
    assert only_route(capped)["timeout"] == "3s"
    only_cap = route_config(vhost(route(timeout="0s", max_stream_duration={"max_stream_duration": "4s"})))
    assert only_route(only_cap)["timeout"] == "4s"
    hcm_cap = listener(common_http_protocol_options={"max_stream_duration": "1s"})
    assert only_route(route_config(vhost(route())), lst=hcm_cap)["timeout"] == "1s"
    # A route's explicit zero turns the connection manager's off.
    off = route_config(vhost(route(max_stream_duration={"max_stream_duration": "0s"})))
    assert only_route(off, lst=hcm_cap)["timeout"] == "15s"


def test_mirrors() -> None:
    fraction = {"default_value": {"numerator": 50}}
    rc = route_config(
        vhost(
            route("/a", request_mirror_policies=[{"cluster": "shadow", "runtime_fraction": fraction}]),
            route("/b"),
            request_mirror_policies=[{"cluster": "vshadow"}],
        )
    )
    translation = run(rc)
    assert [r.get("mirror") for r in routes_of(translation)] == [
        {"cluster": "shadow", "percent": 50.0},
        {"cluster": "vshadow"},
    ]
    valid(translation)


# ---------------------------------------------------------------------------------------------------- retries


def retry_of(policy: dict[str, Any], *, where: str = "route") -> dict[str, Any] | None:
    if where == "route":
        rc = route_config(vhost(route(retry_policy=policy)))
    else:
        rc = route_config(vhost(route(), retry_policy=policy))
    translation = run(rc)
    valid(translation)
    result: dict[str, Any] | None = routes_of(translation)[0].get("retry")
    return result


BACKOFF = {"base": "25ms", "max": "250ms"}
ANY = {"budget": None, "methods": ["POST", "PATCH"], "backoff": BACKOFF}


@pytest.mark.parametrize(
    ("retry_on", "conditions"),
    [
        ("5xx", ["5xx", "connect-failure", "reset", "per-try-timeout"]),
        ("gateway-error", ["gateway-error", "connect-failure", "reset", "per-try-timeout"]),
        ("reset", ["reset", "per-try-timeout"]),
        ("connect-failure", ["connect-failure"]),
        ("reset-before-request", ["connect-failure"]),
        ("connect-failure, refused-stream,unavailable,cancelled", ["connect-failure"]),
        ("reset,connect-failure", ["reset", "per-try-timeout", "connect-failure"]),
        ("connect-failure,sometimes", ["connect-failure"]),  # Envoy ignores a condition it doesn't know
    ],
)
def test_retry_conditions(retry_on: str, conditions: list[str]) -> None:
    assert retry_of({"retry_on": retry_on}) == {"attempts": 2, "retry_on": conditions, **ANY}


def test_retriable_status_codes_and_4xx() -> None:
    assert retry_of({"retry_on": "retriable-status-codes", "retriable_status_codes": [503, 429]}) == {
        "attempts": 2,
        "retry_on": ["retriable-status-codes"],
        "retriable_status_codes": [429, 503],
        **ANY,
    }
    assert retry_of({"retry_on": "retriable-4xx", "num_retries": 3}) == {
        "attempts": 4,
        "retry_on": ["retriable-status-codes"],
        "retriable_status_codes": [409],
        **ANY,
    }
    # Codes without the condition, or the condition without codes, retry nothing on status (as Envoy).
    assert retry_of({"retry_on": "connect-failure", "retriable_status_codes": [503]}) == {
        "attempts": 2,
        "retry_on": ["connect-failure"],
        **ANY,
    }
    assert retry_of({"retry_on": "retriable-status-codes"}) is None


def test_retries_that_retry_nothing_are_left_out() -> None:
    assert retry_of({"retry_on": "refused-stream,unavailable"}) is None
    assert retry_of({"retry_on": "5xx", "num_retries": 0}) is None
    assert retry_of({"retry_on": ""}) is None


def test_retry_timeouts_and_back_off() -> None:
    policy = {
        "retry_on": "5xx",
        "num_retries": 2,
        "per_try_timeout": "0.5s",
        "retry_back_off": {"base_interval": "0.1s"},
    }
    assert retry_of(policy) == {
        "attempts": 3,
        "retry_on": ["5xx", "connect-failure", "reset", "per-try-timeout"],
        "per_try_timeout": "500ms",
        "budget": None,
        "methods": ["POST", "PATCH"],
        "backoff": {"base": "100ms", "max": "1s"},
    }
    explicit = {"retry_on": "reset", "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.05s"}}
    retry = retry_of(explicit)
    assert retry is not None
    assert retry["backoff"] == {"base": "10ms", "max": "50ms"}


def test_the_virtual_hosts_retry_policy_applies_to_routes_without_one() -> None:
    assert retry_of({"retry_on": "connect-failure"}, where="vhost") == {
        "attempts": 2,
        "retry_on": ["connect-failure"],
        **ANY,
    }
    rc = route_config(
        vhost(route(retry_policy={"retry_on": "reset", "num_retries": 0}), retry_policy={"retry_on": "5xx"})
    )
    assert "retry" not in only_route(rc)  # the route's own policy wins, even one that retries nothing


def test_the_previous_hosts_predicate_is_what_meshlib_does_anyway() -> None:
    policy = {
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "retriable_status_codes": [503],
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
        "host_selection_retry_max_attempts": 5,
    }  # Istio's default
    assert retry_of(policy) == {
        "attempts": 3,
        "retry_on": ["connect-failure", "retriable-status-codes"],
        "retriable_status_codes": [503],
        **ANY,
    }


@pytest.mark.parametrize(
    ("policy", "field", "message"),
    [
        ({"retry_on": "retriable-headers"}, "retry_on", "'retriable-headers'"),
        ({"retry_on": "envoy-ratelimited"}, "retry_on", "not supported"),
        (
            {"retry_on": "5xx", "retry_host_predicate": [{"name": "envoy.retry_host_predicates.omit_canary_hosts"}]},
            "retry_host_predicate[0]",
            "not supported",
        ),
        (
            {"retry_on": "5xx", "retry_priority": {"name": "envoy.retry_priorities.previous_priorities"}},
            "retry_priority",
            "not supported",
        ),
        ({"retry_on": "5xx", "retriable_headers": [{"name": "x", "present_match": True}]}, "retriable_headers", "not"),
        (
            {"retry_on": "5xx", "retry_back_off": {"base_interval": "1s", "max_interval": "0.5s"}},
            "retry_back_off.max_interval",
            "base_interval",
        ),
    ],
)
def test_retry_policies_meshlib_cant_honour_are_rejected(policy: dict[str, Any], field: str, message: str) -> None:
    error = rejected(t.check_route_configuration, route_config(vhost(route(retry_policy=policy))))
    assert error.field == f"virtual_hosts[0].routes[0].route.retry_policy.{field}"
    assert message in error.message
    error = rejected(t.check_route_configuration, route_config(vhost(route(), retry_policy=policy)))
    assert error.field == f"virtual_hosts[0].retry_policy.{field}"


# ---------------------------------------------------------------------------------------------------- header edits


def add(key: str, value: str, action: str | None = None, **extra: Any) -> dict[str, Any]:
    option: dict[str, Any] = {"header": {"key": key, "value": value}, **extra}
    if action is not None:
        option["append_action"] = action
    return option


def test_header_edits_at_every_level_less_specific_wins() -> None:
    rc = route_config(
        vhost(
            route(
                request_headers_to_add=[add("x-route", "r"), add("x-both", "route", "OVERWRITE_IF_EXISTS_OR_ADD")],
                request_headers_to_remove=["x-gone"],
                response_headers_to_add=[add("x-resp", "1", "OVERWRITE_IF_EXISTS_OR_ADD")],
            ),
            request_headers_to_add=[add("x-both", "vhost", "OVERWRITE_IF_EXISTS_OR_ADD")],
            response_headers_to_remove=["server"],
        ),
        request_headers_to_add=[add("x-rc", "c", append=False)],
    )
    translation = run(rc)
    assert routes_of(translation)[0]["headers"] == {
        "request": {"add": {"x-route": "r"}, "set": {"x-both": "vhost", "x-rc": "c"}, "remove": ["x-gone"]},
        "response": {"set": {"x-resp": "1"}, "remove": ["server"]},
    }
    valid(translation)


def test_most_specific_header_mutations_wins() -> None:
    rc = route_config(
        vhost(
            route(request_headers_to_add=[add("x", "route", "OVERWRITE_IF_EXISTS_OR_ADD")]),
            request_headers_to_add=[add("x", "vhost", "OVERWRITE_IF_EXISTS_OR_ADD")],
        ),
        most_specific_header_mutations_wins=True,
    )
    assert only_route(rc)["headers"] == {"request": {"set": {"x": "route"}}}


def test_header_edits_in_envoys_order() -> None:
    # In one level: removes, then overwrites, then appends. Across levels: one after the other.
    rc = route_config(
        vhost(
            route(
                request_headers_to_add=[
                    add("a", "1"),
                    add("a", "2", "OVERWRITE_IF_EXISTS_OR_ADD"),
                    add("e", "", keep_empty_value=True),
                    add("f", ""),
                ],
                request_headers_to_remove=["b"],
            ),
            request_headers_to_add=[add("b", "3"), add("c", "50%%")],
            request_headers_to_remove=["a"],
        )
    )
    assert only_route(rc)["headers"] == {"request": {"remove": ["a"], "set": {"b": "3"}, "add": {"c": "50%", "e": ""}}}


@pytest.mark.parametrize(
    ("level", "field", "message"),
    [
        ({"request_headers_to_add": [add("x", "%REQ(y)%")]}, "request_headers_to_add[0].header.value", "%COMMAND%"),
        ({"request_headers_to_add": [add(":path", "/")]}, "request_headers_to_add[0].header.key", "can't be edited"),
        (
            {"request_headers_to_add": [add("Host", "h")]},
            "request_headers_to_add[0].header.key",
            "host_rewrite_literal",
        ),
        ({"request_headers_to_remove": [":authority"]}, "request_headers_to_remove[0]", "can't be edited"),
        (
            {"response_headers_to_add": [add("x", "1", "ADD_IF_ABSENT")]},
            "response_headers_to_add[0].append_action",
            "only",
        ),
        (
            {"request_headers_to_add": [add("x", "1", "OVERWRITE_IF_EXISTS")]},
            "request_headers_to_add[0].append_action",
            "OVERWRITE_IF_EXISTS_OR_ADD",
        ),
        ({"request_headers_to_add": [add("x", "1"), add("X", "2")]}, "request_headers_to_add[1]", "appended twice"),
        (
            {"request_headers_to_add": [add("x", "1", "OVERWRITE_IF_EXISTS_OR_ADD", append=True)]},
            "request_headers_to_add[0].append",
            "not both",
        ),
    ],
)
def test_header_edits_meshlib_cant_honour_are_rejected(level: dict[str, Any], field: str, message: str) -> None:
    error = rejected(t.check_route_configuration, route_config(vhost(route(**level))))
    assert error.field == f"virtual_hosts[0].routes[0].{field}"
    assert message in error.message
    error = rejected(t.check_route_configuration, route_config(vhost(), **level))
    assert error.field == field


# ---------------------------------------------------------------------------------------------------- faults


def fault(status: int | None = None, abort: int | None = None, delay: str | None = None, delayed: int | None = None):
    config: dict[str, Any] = {}
    if status is not None:
        config["abort"] = {"http_status": status}
        if abort is not None:
            config["abort"]["percentage"] = {"numerator": abort}
    if delay is not None:
        config["delay"] = {"fixed_delay": delay}
        if delayed is not None:
            config["delay"]["percentage"] = {"numerator": delayed, "denominator": "TEN_THOUSAND"}
    return config


def test_the_fault_filters_config_applies_to_every_route() -> None:
    lst = listener(filters=[fault_filter(**fault(503, 10, "1s", 5000)), ROUTER])
    translation = run(route_config(vhost(route())), lst=lst)
    assert routes_of(translation)[0]["fault"] == {
        "delay": {"duration": "1s", "percent": 50.0},
        "abort": {"status": 503, "percent": 10.0},
    }
    # A request no route takes meets the filter too, with its own config (as in Envoy).
    assert translation.config["routes"][-1]["fault"] == routes_of(translation)[0]["fault"]
    valid(translation)


def test_an_unset_fault_percentage_is_zero_as_in_envoy() -> None:
    lst = listener(filters=[fault_filter(**fault(503, None, "1s", None)), ROUTER])
    assert "fault" not in only_route(route_config(vhost(route())), lst=lst)
    half = listener(filters=[fault_filter(**fault(500, 100, "1s", None)), ROUTER])
    assert only_route(route_config(vhost(route())), lst=half)["fault"] == {"abort": {"status": 500, "percent": 100.0}}


def test_per_route_fault_overrides_most_specific_first() -> None:
    lst = listener(filters=[fault_filter(**fault(500, 100)), ROUTER])
    per_route = {"envoy.filters.http.fault": {"@type": FAULT_TYPE, **fault(418, 100)}}
    wrapped = {
        "envoy.filters.http.fault": {
            "@type": T + "envoy.config.route.v3.FilterConfig",
            "config": {"@type": FAULT_TYPE, **fault(429, 20)},
        }
    }
    disabled = {"envoy.filters.http.fault": {"@type": T + "envoy.config.route.v3.FilterConfig", "disabled": True}}
    rc = route_config(
        vhost(
            route("/a", typed_per_filter_config=per_route),
            route("/b", typed_per_filter_config=disabled),
            route("/c"),
            typed_per_filter_config=wrapped,
        ),
        vhost(route(), domains=("other",), name="other"),
    )
    faults = [r.get("fault") for r in routes_of(run(rc, lst=lst))]
    assert faults == [{"abort": {"status": 418, "percent": 100.0}}, None, {"abort": {"status": 429, "percent": 20.0}}]
    # Without the fault filter in the listener's chain, per-route configs do nothing.
    assert [r.get("fault") for r in routes_of(run(rc))] == [None, None, None]


def filter_config(config: dict[str, Any] | None = None, *, disabled: bool = False) -> dict[str, Any]:
    wrapper: dict[str, Any] = {"@type": T + "envoy.config.route.v3.FilterConfig", "disabled": disabled}
    if config is not None:
        wrapper["config"] = {"@type": FAULT_TYPE, **config}
    return {"envoy.filters.http.fault": wrapper}


def test_which_level_enables_or_disables_the_fault_filter() -> None:
    # As Envoy 1.40 does: the most specific level with an entry decides (a plain config enables).
    off = listener(filters=[{**fault_filter(**fault(503, 100)), "disabled": True}, ROUTER])
    rc = route_config(
        vhost(
            route("/a", typed_per_filter_config={"envoy.filters.http.fault": {"@type": FAULT_TYPE, **fault(418, 100)}}),
            route("/b", typed_per_filter_config=filter_config(fault(419, 100))),
            route("/c", typed_per_filter_config=filter_config(disabled=True)),
            route("/d"),
        )
    )
    translation = run(rc, lst=off)
    assert [r.get("fault", {}).get("abort", {}).get("status") for r in translation.config["routes"]] == [
        418,
        419,
        None,
        None,
        None,  # the 404 of no route: the filter is off by default
    ]
    on = listener(filters=[fault_filter(**fault(503, 100)), ROUTER])
    rc = route_config(
        vhost(
            route("/a", typed_per_filter_config={"envoy.filters.http.fault": {"@type": FAULT_TYPE, **fault(418, 100)}}),
            route("/b", typed_per_filter_config=filter_config(fault(419, 100))),
            route("/d"),
            typed_per_filter_config=filter_config(disabled=True),
        )
    )
    translation = run(rc, lst=on)
    assert [r.get("fault", {}).get("abort", {}).get("status") for r in translation.config["routes"]] == [
        418,
        419,
        None,
        503,  # no route: no virtual host to disable it
    ]
    empty = route_config(vhost(route(typed_per_filter_config=filter_config())))
    error = rejected(t.check_route_configuration, empty)
    assert (
        error.field
        == 'virtual_hosts[0].routes[0].typed_per_filter_config["envoy.filters.http.fault"](FilterConfig).config'
    )
    valid(translation)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"abort": {"header_abort": {}, "percentage": {"numerator": 1}}}, "abort.header_abort"),
        ({"abort": {"grpc_status": 14}}, "abort.grpc_status"),
        ({"delay": {"header_delay": {}}}, "delay.header_delay"),
        ({"headers": [{"name": "x", "present_match": True}]}, "headers"),
        ({"upstream_cluster": "reviews"}, "upstream_cluster"),
        ({"downstream_nodes": ["a"]}, "downstream_nodes"),
        ({"max_active_faults": 3}, "max_active_faults"),
    ],
)
def test_faults_meshlib_cant_honour_are_rejected(config: dict[str, Any], field: str) -> None:
    error = rejected(t.check_listener, listener(filters=[fault_filter(**config), ROUTER]))
    assert (
        error.field
        == f"api_listener.api_listener(HttpConnectionManager).http_filters[0].typed_config(HTTPFault).{field}"
    )
    per_route = {"f": {"@type": FAULT_TYPE, **config}}
    error = rejected(t.check_route_configuration, route_config(vhost(route(typed_per_filter_config=per_route))))
    assert error.field == f'virtual_hosts[0].routes[0].typed_per_filter_config["f"](HTTPFault).{field}'


# ---------------------------------------------------------------------------------------------------- clusters


def cluster_config(c: Any, **kwargs: Any) -> dict[str, Any]:
    translation = run(None, (c,), **kwargs)
    valid(translation)
    config: dict[str, Any] = translation.config["clusters"][translation.cluster_names[c.name]]
    return config


def test_an_eds_cluster_with_envoys_defaults() -> None:
    assert cluster_config(cluster()) == {
        "discovery": {"xds": {"cluster": "reviews"}},
        "connect_timeout": "5s",
        "circuit_breaker": {"failure_threshold": None, "max_concurrent_requests": 1024},
        "lb": "round_robin",
    }


def test_istio_cluster_names_are_mapped_to_host_names() -> None:
    names = [
        "outbound|9080||reviews.default.svc.cluster.local",
        "outbound|9080|v1|reviews.default.svc.cluster.local",
        "outbound_9080__reviews.default.svc.cluster.local",
        "a|b",
        "a_b",
        "-x-",
        "a..b",
    ]
    mapped = t.translate({}, {}, {n: cluster(n) for n in names}, {}).cluster_names
    assert (
        mapped["outbound|9080|v1|reviews.default.svc.cluster.local"]
        == "outbound_9080_v1_reviews.default.svc.cluster.local"
    )
    assert (
        mapped["outbound_9080__reviews.default.svc.cluster.local"] == "outbound_9080__reviews.default.svc.cluster.local"
    )
    assert mapped["outbound|9080||reviews.default.svc.cluster.local"].startswith(
        "outbound_9080__reviews.default.svc.cluster.local-"
    )
    assert mapped["a_b"] == "a_b"
    assert mapped["a|b"].startswith("a_b-")
    assert mapped["-x-"] == "x"
    assert mapped["a..b"] == "a.b"
    assert len(set(mapped.values())) == len(names)
    assert mapped == t.translate({}, {}, {n: cluster(n) for n in reversed(names)}, {}).cluster_names
    translation = t.translate({}, {}, {n: cluster(n) for n in names}, {})
    meshlib.MeshConfig.from_dict({**translation.config, "allow_empty": True})


def test_routes_name_the_mapped_clusters() -> None:
    name = "outbound|9080||reviews.default.svc.cluster.local"
    rc = route_config(vhost(route(cluster=name)))
    translation = run(rc, (cluster(name),), (assignment(name, locality(endpoint("10.0.0.2"))),))
    mesh_name = translation.cluster_names[name]
    assert routes_of(translation)[0]["cluster"] == mesh_name
    assert translation.endpoints[mesh_name] == (("http://10.0.0.2:9080", 1),)
    valid(translation)


def test_static_and_dns_clusters() -> None:
    static = cluster(
        "static",
        type="STATIC",
        eds_cluster_config=None,
        load_assignment={"cluster_name": "static", "endpoints": [locality(endpoint("10.0.0.5", 80))]},
    )
    translation = run(None, (static,))
    assert translation.config["clusters"]["static"]["discovery"] == {"xds": {"cluster": "static"}}
    assert translation.endpoints["static"] == (("http://10.0.0.5:80", 1),)
    dns = cluster(
        "dns",
        type="STRICT_DNS",
        eds_cluster_config=None,
        dns_refresh_rate="30s",
        load_assignment={"cluster_name": "dns", "endpoints": [locality(endpoint("ratings.example.com", 443))]},
    )
    config = cluster_config(dns)
    assert config["discovery"] == {
        "dns": {"name": "ratings.example.com", "port": 443, "scheme": "http", "refresh": "30s"}
    }
    assert "dns" not in run(None, (dns,)).endpoints
    two = cluster(
        "dns",
        type="LOGICAL_DNS",
        eds_cluster_config=None,
        load_assignment={"cluster_name": "dns", "endpoints": [locality(endpoint("a.example"), endpoint("b.example"))]},
    )
    assert rejected(t.check_cluster, two, {}).field == "load_assignment"
    hostname = cluster(
        "s",
        type="STATIC",
        eds_cluster_config=None,
        load_assignment={"cluster_name": "s", "endpoints": [locality(endpoint("ratings"))]},
    )
    error = rejected(t.check_cluster, hostname, {})
    assert error.field == "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"type": "ORIGINAL_DST", "eds_cluster_config": None}, "type"),
        (
            {
                "cluster_type": {
                    "name": "envoy.clusters.aggregate",
                    "typed_config": {"@type": T + "google.protobuf.Empty"},
                },
                "type": None,
                "eds_cluster_config": None,
            },
            "cluster_type",
        ),
        ({"lb_policy": "CLUSTER_PROVIDED"}, "lb_policy"),
        (
            {"transport_socket_matches": [{"name": "m", "transport_socket": {"name": "raw"}}]},
            "transport_socket_matches",
        ),
        ({"lb_subset_config": {"subset_selectors": [{"keys": ["v"]}]}}, "lb_subset_config"),
        ({"outlier_detection": {"enforcing_consecutive_5xx": 50}}, "outlier_detection.enforcing_consecutive_5xx"),
        (
            {"outlier_detection": {"split_external_local_origin_errors": True}},
            "outlier_detection.split_external_local_origin_errors",
        ),
        (
            {
                "load_balancing_policy": {
                    "policies": [
                        {
                            "typed_extension_config": {
                                "name": "p",
                                "typed_config": {
                                    "@type": T + "envoy.extensions.load_balancing_policies.pick_first.v3.PickFirst"
                                },
                            }
                        }
                    ]
                }
            },
            "load_balancing_policy.policies",
        ),
    ],
)
def test_clusters_meshlib_cant_honour_are_rejected(extra: dict[str, Any], field: str) -> None:
    data = {k: v for k, v in extra.items() if v is not None}
    base: dict[str, Any] = {"name": "c"}
    if "type" in extra and extra["type"] is None:
        pass
    elif "type" not in data:
        base.update(type="EDS", eds_cluster_config={"eds_config": {"ads": {}}})
    c = ParseDict({**base, **data}, Cluster())
    error = rejected(t.check_cluster, c, {})
    assert (error.kind, error.name, error.field) == ("Cluster", "c", field)


def test_connect_timeout_breakers_and_outlier_detection() -> None:
    config = cluster_config(
        cluster(
            connect_timeout="0.25s",
            circuit_breakers={
                "thresholds": [{"priority": "HIGH", "max_requests": 5}, {"max_requests": 100, "max_connections": 3}]
            },
            outlier_detection={
                "consecutive_5xx": 3,
                "interval": "1s",
                "base_ejection_time": "400s",
                "max_ejection_percent": 50,
            },
            health_checks=[{"timeout": "1s", "interval": "1s", "http_health_check": {"path": "/h"}}],
        )
    )
    assert config["connect_timeout"] == "250ms"
    assert config["circuit_breaker"] == {"failure_threshold": None, "max_concurrent_requests": 100}
    assert config["outlier_detection"] == {
        "consecutive_5xx": 3,
        "interval": "1s",
        "base_ejection_time": "400s",
        "max_ejection_time": "400s",
        "max_ejection_percent": 50.0,
    }
    assert "health_check" not in config
    defaults = cluster_config(cluster(outlier_detection={}))
    assert defaults["outlier_detection"] == {
        "consecutive_5xx": 5,
        "interval": "10s",
        "base_ejection_time": "30s",
        "max_ejection_time": "5m",
        "max_ejection_percent": 10.0,
    }
    off = cluster_config(cluster(outlier_detection={"enforcing_consecutive_5xx": 0}))
    assert "outlier_detection" not in off


def typed_policy(name: str, **config: Any) -> dict[str, Any]:
    packages = {
        "RoundRobin": "round_robin",
        "LeastRequest": "least_request",
        "Maglev": "maglev",
        "WrrLocality": "wrr_locality",
        "PickFirst": "pick_first",
    }
    type_url = f"{T}envoy.extensions.load_balancing_policies.{packages[name]}.v3.{name}"
    return {"typed_extension_config": {"name": name, "typed_config": {"@type": type_url, **config}}}


@pytest.mark.parametrize(
    ("extra", "lb"),
    [
        ({"lb_policy": "LEAST_REQUEST"}, "least_request"),
        ({"lb_policy": "RANDOM"}, "random"),
        ({"lb_policy": "MAGLEV"}, "random"),  # a ring hash without a hash policy: Envoy hashes randomly
        (
            {"load_balancing_policy": {"policies": [typed_policy("PickFirst"), typed_policy("LeastRequest")]}},
            "least_request",
        ),
        (
            {
                "load_balancing_policy": {
                    "policies": [
                        typed_policy("WrrLocality", endpoint_picking_policy={"policies": [typed_policy("RoundRobin")]})
                    ]
                }
            },
            "round_robin",
        ),
    ],
)
def test_load_balancing_policies(extra: dict[str, Any], lb: str) -> None:
    assert cluster_config(cluster(**extra))["lb"] == lb


def test_a_ring_hash_takes_the_routes_hash_policy() -> None:
    rc = route_config(
        vhost(
            route("/a", "other", hash_policy=[{"header": {"header_name": "x-user"}}]),
            route(
                "/b",
                "reviews",
                hash_policy=[{"connection_properties": {"source_ip": True}}, {"cookie": {"name": "session"}}],
            ),
            route("/c", "reviews", hash_policy=[{"header": {"header_name": "x-later"}}]),
        )
    )
    translation = run(rc, (cluster(lb_policy="RING_HASH"), cluster("other", lb_policy="ROUND_ROBIN")))
    assert translation.config["clusters"]["reviews"]["lb"] == "ring_hash"
    assert translation.config["clusters"]["reviews"]["hash_on"] == {"cookie": "session"}
    assert "hash_on" not in translation.config["clusters"]["other"]
    valid(translation)
    maglev = run(rc, (cluster(load_balancing_policy={"policies": [typed_policy("Maglev")]}),))
    assert maglev.config["clusters"]["reviews"]["lb"] == "ring_hash"
    ttl = route_config(vhost(route(hash_policy=[{"cookie": {"name": "s", "ttl": "10s"}}])))
    assert (
        rejected(t.check_route_configuration, ttl).field == "virtual_hosts[0].routes[0].route.hash_policy[0].cookie.ttl"
    )


# ---------------------------------------------------------------------------------------------------- TLS


def tls_cluster(context: dict[str, Any], name: str = "reviews") -> Any:
    return cluster(
        name, transport_socket={"name": "envoy.transport_sockets.tls", "typed_config": {"@type": TLS_TYPE, **context}}
    )


SPIFFE = "spiffe://cluster.local/ns/default/sa/reviews"
SAN = {"san_type": "URI", "matcher": {"exact": SPIFFE}}


def test_mutual_tls_from_files() -> None:
    c = tls_cluster(
        {
            "sni": "outbound_.9080_._.reviews.default.svc.cluster.local",
            "common_tls_context": {
                "tls_certificates": [
                    {"certificate_chain": {"filename": "/c.pem"}, "private_key": {"filename": "/k.pem"}}
                ],
                "combined_validation_context": {
                    "default_validation_context": {"match_typed_subject_alt_names": [SAN]},
                    "validation_context_certificate_provider_instance": {"instance_name": "default"},
                },
            },
        }
    )
    providers = {"default": {"plugin_name": "file_watcher", "config": {"ca_certificate_file": "/ca.pem"}}}
    translation = run(None, (c,), (assignment("reviews", locality(endpoint("10.0.0.1"))),), providers=providers)
    assert translation.config["clusters"]["reviews"]["tls"] == {
        "mode": "mutual",
        "ca_file": "/ca.pem",
        "cert_file": "/c.pem",
        "key_file": "/k.pem",
        "server_name": "outbound_.9080_._.reviews.default.svc.cluster.local",
        "expected_identities": [SPIFFE],
    }
    assert translation.endpoints["reviews"] == (("https://10.0.0.1:9080", 1),)
    valid(translation)


def test_tls_from_certificate_providers_and_simple_tls() -> None:
    providers = {
        "mesh": {
            "plugin_name": "file_watcher",
            "config": {
                "certificate_file": "/m.pem",
                "private_key_file": "/m.key",
                "ca_certificate_file": "/ca.pem",
                "refresh_interval": "600s",
            },
        }
    }
    c = tls_cluster(
        {
            "common_tls_context": {
                "tls_certificate_provider_instance": {"instance_name": "mesh"},
                "validation_context": {
                    "ca_certificate_provider_instance": {"instance_name": "mesh"},
                    "match_subject_alt_names": [{"exact": SPIFFE}],
                },
            }
        }
    )
    assert cluster_config(c, providers=providers)["tls"] == {
        "mode": "mutual",
        "ca_file": "/ca.pem",
        "cert_file": "/m.pem",
        "key_file": "/m.key",
        "expected_identities": [SPIFFE],
    }
    simple = tls_cluster(
        {
            "sni": "ratings.example",
            "common_tls_context": {"validation_context": {"trusted_ca": {"filename": "/ca.pem"}}},
        }
    )
    assert cluster_config(simple)["tls"] == {"mode": "simple", "ca_file": "/ca.pem", "server_name": "ratings.example"}


@pytest.mark.parametrize(
    ("context", "field", "message"),
    [
        ({"sni": "x"}, "transport_socket.typed_config(UpstreamTlsContext).common_tls_context", "no validation context"),
        (
            {"common_tls_context": {"validation_context": {"trusted_ca": {"filename": "/ca"}}}},
            "transport_socket.typed_config(UpstreamTlsContext)",
            "set sni",
        ),
        (
            {"sni": "x", "common_tls_context": {"validation_context": {"trusted_ca": {"inline_string": "PEM"}}}},
            "transport_socket.typed_config(UpstreamTlsContext).common_tls_context.validation_context.trusted_ca",
            "filename",
        ),
        (
            {
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": "/ca"},
                        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "a"}}],
                    }
                }
            },
            "transport_socket.typed_config(UpstreamTlsContext).common_tls_context.validation_context.match_typed_subject_alt_names[0].san_type",
            "URI",
        ),
        (
            {
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": "/ca"},
                        "match_subject_alt_names": [{"exact": "https://x/y"}],
                    }
                }
            },
            "transport_socket.typed_config(UpstreamTlsContext).common_tls_context.validation_context.match_subject_alt_names[0].exact",
            "SPIFFE",
        ),
        (
            {
                "sni": "x",
                "common_tls_context": {
                    "validation_context": {"ca_certificate_provider_instance": {"instance_name": "nope"}}
                },
            },
            "transport_socket.typed_config(UpstreamTlsContext).common_tls_context.validation_context.ca_certificate_provider_instance.instance_name",
            "no certificate provider 'nope'",
        ),
        (
            {
                "sni": "x",
                "common_tls_context": {
                    "validation_context": {"ca_certificate_provider_instance": {"instance_name": "other"}}
                },
            },
            "transport_socket.typed_config(UpstreamTlsContext).common_tls_context.validation_context.ca_certificate_provider_instance.instance_name",
            "plugin 'spiffe'",
        ),
        (
            {
                "sni": "x",
                "common_tls_context": {
                    "tls_certificates": [
                        {"certificate_chain": {"inline_string": "PEM"}, "private_key": {"filename": "/k"}}
                    ],
                    "validation_context": {"trusted_ca": {"filename": "/ca"}},
                },
            },
            "transport_socket.typed_config(UpstreamTlsContext).common_tls_context.tls_certificates[0].certificate_chain",
            "filename",
        ),
        (
            {"sni": "x", "common_tls_context": {"validation_context_sds_secret_config": {"name": "ca"}}},
            "transport_socket.typed_config(UpstreamTlsContext).common_tls_context.validation_context_sds_secret_config",
            "not supported",
        ),
    ],
)
def test_tls_meshlib_cant_honour_is_rejected(context: dict[str, Any], field: str, message: str) -> None:
    providers = {"other": {"plugin_name": "spiffe", "config": {}}}
    error = rejected(t.check_cluster, tls_cluster(context), providers)
    assert error.field == field
    assert message in error.message


# ---------------------------------------------------------------------------------------------------- endpoints


def endpoints_of(*localities: dict[str, Any], c: Any = None, **cla: Any) -> tuple[tuple[str, int], ...]:
    translation = run(None, (c if c is not None else cluster(),), (assignment("reviews", *localities, **cla),))
    return translation.endpoints["reviews"]


def test_endpoint_weights_health_and_addresses() -> None:
    assert endpoints_of(
        locality(
            endpoint("10.0.0.1", load_balancing_weight=3),
            endpoint("10.0.0.2", health_status="HEALTHY"),
            endpoint("10.0.0.3", health_status="UNHEALTHY"),
            endpoint("::1", 8080),
            endpoint("10.0.0.1", load_balancing_weight=2),
        )
    ) == (("http://10.0.0.1:9080", 5), ("http://10.0.0.2:9080", 1), ("http://[::1]:8080", 1))


def test_degraded_hosts_take_traffic_only_when_healthy_ones_fall_short() -> None:
    # 4 healthy of 5: 1.4 × 80% ≥ 100%, nothing for the degraded host.
    healthy = [endpoint(f"10.0.0.{i}") for i in range(1, 5)]
    assert len(endpoints_of(locality(*healthy, endpoint("10.0.0.9", health_status="DEGRADED")))) == 4
    # 4 healthy of 6: 93% to them, 7% to the degraded host.
    six = locality(
        *healthy, endpoint("10.0.0.8", health_status="UNHEALTHY"), endpoint("10.0.0.9", health_status="DEGRADED")
    )
    assert endpoints_of(six) == (*((f"http://10.0.0.{i}:9080", 93) for i in range(1, 5)), ("http://10.0.0.9:9080", 28))
    all_degraded = locality(
        endpoint("10.0.0.1", health_status="DEGRADED"), endpoint("10.0.0.2", health_status="DEGRADED")
    )
    assert endpoints_of(all_degraded) == (("http://10.0.0.1:9080", 1), ("http://10.0.0.2:9080", 1))
    # 1 healthy of 2: 70% healthy availability, the other 30% go to the degraded host (Envoy's table).
    mixed = locality(endpoint("10.0.0.1"), endpoint("10.0.0.2", health_status="DEGRADED"))
    assert endpoints_of(mixed) == (("http://10.0.0.1:9080", 7), ("http://10.0.0.2:9080", 3))


def test_priorities_fail_over_and_spill_over() -> None:
    p0 = locality(endpoint("10.0.0.1"), endpoint("10.0.0.2"))
    p1 = locality(endpoint("10.0.1.1"), priority=1)
    assert endpoints_of(p0, p1) == (("http://10.0.0.1:9080", 1), ("http://10.0.0.2:9080", 1))
    down = locality(endpoint("10.0.0.1", health_status="UNHEALTHY"), endpoint("10.0.0.2", health_status="TIMEOUT"))
    assert endpoints_of(down, p1) == (("http://10.0.1.1:9080", 1),)
    # P0 half healthy: 1.4 × 50% = 70% of the load stays in P0, 30% spills over to P1.
    half = locality(endpoint("10.0.0.1"), endpoint("10.0.0.2", health_status="UNHEALTHY"))
    assert endpoints_of(half, p1) == (("http://10.0.0.1:9080", 7), ("http://10.0.1.1:9080", 3))
    # The overprovisioning factor of the assignment's policy.
    assert endpoints_of(half, p1, policy={"overprovisioning_factor": 200}) == (("http://10.0.0.1:9080", 1),)


def test_panic_mode_sends_to_every_host() -> None:
    # 1 healthy host of 3 (33% < the 50% panic threshold): Envoy balances over all three.
    mostly_down = locality(
        endpoint("10.0.0.1"),
        endpoint("10.0.0.2", health_status="UNHEALTHY"),
        endpoint("10.0.0.3", health_status="UNHEALTHY"),
    )
    assert [url for url, _ in endpoints_of(mostly_down)] == [
        "http://10.0.0.1:9080",
        "http://10.0.0.2:9080",
        "http://10.0.0.3:9080",
    ]
    no_panic = cluster(common_lb_config={"healthy_panic_threshold": {"value": 0}})
    assert endpoints_of(mostly_down, c=no_panic) == (("http://10.0.0.1:9080", 1),)
    all_down = locality(endpoint("10.0.0.2", health_status="UNHEALTHY"))
    assert endpoints_of(all_down) == (("http://10.0.0.2:9080", 1),)
    assert endpoints_of(all_down, c=no_panic) == ()
    # A draining host counts for nothing: 1 healthy of 1 counted.
    draining = locality(
        endpoint("10.0.0.1"),
        endpoint("10.0.0.2", health_status="DRAINING"),
        endpoint("10.0.0.3", health_status="DRAINING"),
    )
    assert endpoints_of(draining) == (("http://10.0.0.1:9080", 1),)


def test_locality_weights() -> None:
    weighted = cluster(common_lb_config={"locality_weighted_lb_config": {}})
    a = locality(
        endpoint("10.0.0.1"),
        endpoint("10.0.0.2", load_balancing_weight=2),
        load_balancing_weight=3,
        locality={"zone": "a"},
    )
    b = locality(endpoint("10.0.1.1"), load_balancing_weight=1, locality={"zone": "b"})
    none = locality(endpoint("10.0.2.1"), locality={"zone": "c"})
    assert endpoints_of(a, b, none, c=weighted) == (
        ("http://10.0.0.1:9080", 1),
        ("http://10.0.0.2:9080", 2),
        ("http://10.0.1.1:9080", 1),
    )
    # Without locality weighting, the localities of a priority are one pool.
    assert endpoints_of(a, b, none) == (
        ("http://10.0.0.1:9080", 1),
        ("http://10.0.0.2:9080", 2),
        ("http://10.0.1.1:9080", 1),
        ("http://10.0.2.1:9080", 1),
    )
    wrr = cluster(
        load_balancing_policy={
            "policies": [
                typed_policy("WrrLocality", endpoint_picking_policy={"policies": [typed_policy("RoundRobin")]})
            ]
        }
    )
    assert endpoints_of(a, b, none, c=wrr) == endpoints_of(a, b, none, c=weighted)
    # A half-healthy locality's weight shrinks by Envoy's 1.4 × its healthy share: 3 × 0.7 against 1.
    sick = locality(endpoint("10.0.0.1"), endpoint("10.0.0.2", health_status="UNHEALTHY"), load_balancing_weight=3)
    assert endpoints_of(sick, b, c=weighted) == (("http://10.0.0.1:9080", 21), ("http://10.0.1.1:9080", 10))
    translation = run(None, (weighted,), (assignment("reviews", sick, b),))
    valid(translation)
    # No locality has a weight: Envoy drops its locality scheduler and balances over the priority's hosts.
    assert endpoints_of(none, locality(endpoint("10.0.3.1")), c=weighted) == (
        ("http://10.0.2.1:9080", 1),
        ("http://10.0.3.1:9080", 1),
    )


def test_a_cluster_without_its_assignment_has_no_endpoints() -> None:
    assert run(None, (cluster(),)).endpoints == {"reviews": ()}


@pytest.mark.parametrize(
    ("cla", "field"),
    [
        (
            {"endpoints": [locality({"endpoint": {"address": {"pipe": {"path": "/s"}}}})]},
            "endpoints[0].lb_endpoints[0].endpoint.address",
        ),
        (
            {"endpoints": [locality(endpoint("reviews"))]},
            "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address",
        ),
        (
            {"endpoints": [locality(endpoint("10.0.0.1", 0))]},
            "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value",
        ),
        (
            {"policy": {"drop_overloads": [{"category": "c", "drop_percentage": {"numerator": 5}}]}},
            "policy.drop_overloads[0]",
        ),
    ],
)
def test_endpoints_meshlib_cant_use_are_rejected(cla: dict[str, Any], field: str) -> None:
    error = rejected(t.check_load_assignment, ParseDict({"cluster_name": "c", **cla}, ClusterLoadAssignment()))
    assert (error.kind, error.name, error.field) == ("ClusterLoadAssignment", "c", field)


def test_features_table_rows() -> None:
    assert all(len(row) == 4 and row[2] in ("honoured", "partial", "ignored", "rejected") for row in t.FEATURES)
    assert {row[0] for row in t.FEATURES} >= {"Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"}
