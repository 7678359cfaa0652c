"""meshlib._xds.validate: Envoy's (validate.rules) annotations enforced on real Envoy protos."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytest.importorskip("envoy.config.cluster.v3.cluster_pb2")

from envoy.config.cluster.v3 import cluster_pb2  # type: ignore[import-untyped,unused-ignore]
from envoy.config.core.v3 import health_check_pb2  # type: ignore[import-untyped,unused-ignore]
from envoy.config.endpoint.v3 import (  # type: ignore[import-untyped,unused-ignore]
    endpoint_components_pb2,
    endpoint_pb2,
)
from envoy.config.listener.v3 import listener_pb2  # type: ignore[import-untyped,unused-ignore]
from envoy.config.route.v3 import (  # type: ignore[import-untyped,unused-ignore]
    route_components_pb2,
    route_pb2,
)
from envoy.extensions.filters.http.fault.v3 import fault_pb2  # type: ignore[import-untyped,unused-ignore]
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # type: ignore[import-untyped,unused-ignore]
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import (  # type: ignore[import-untyped,unused-ignore]
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    message_factory,
)
from validate import validate_pb2  # type: ignore[import-untyped,unused-ignore]

from meshlib._xds.validate import unpack_any, violations

FAULT_FILTER = "envoy.filters.http.fault"


def make_cluster() -> Any:
    cluster = cluster_pb2.Cluster(name="backend", type=cluster_pb2.Cluster.EDS)
    cluster.connect_timeout.FromMilliseconds(250)
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    return cluster


def make_route_config() -> Any:
    route = route_components_pb2.Route()
    route.match.prefix = "/"
    route.route.cluster = "backend"
    header = route.match.headers.add(name="x-canary")
    header.string_match.exact = "1"
    vhost = route_components_pb2.VirtualHost(name="backend", domains=["*", "example.com:8080"], routes=[route])
    return route_pb2.RouteConfiguration(name="local_route", virtual_hosts=[vhost])


def make_cla(endpoints: int = 3) -> Any:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="backend")
    locality = cla.endpoints.add()
    locality.locality.zone = "z1"
    for i in range(endpoints):
        lb_endpoint = locality.lb_endpoints.add()
        assert isinstance(lb_endpoint, endpoint_components_pb2.LbEndpoint)
        socket_address = lb_endpoint.endpoint.address.socket_address
        socket_address.address = f"10.0.{i // 256}.{i % 256}"
        socket_address.port_value = 8080
        lb_endpoint.load_balancing_weight.value = 1 + i % 3
        lb_endpoint.health_status = 1  # HEALTHY
        lb_endpoint.metadata.filter_metadata["envoy.lb"].fields["canary"].bool_value = i % 2 == 0
    return cla


def test_valid_resources_have_no_violations() -> None:
    assert violations(make_cluster()) == []
    assert violations(make_route_config()) == []
    assert violations(make_cla()) == []


@pytest.mark.parametrize(
    ("seconds", "nanos", "expected"),
    [
        (-1, 0, "connect_timeout: must be greater than 0s (got -1s)"),
        (0, 0, "connect_timeout: must be greater than 0s (got 0s)"),
        (0, -500_000_000, "connect_timeout: must be greater than 0s (got -0.5s)"),
        (1, -1, "connect_timeout: not a valid duration (seconds=1, nanos=-1)"),
        (315_576_000_001, 0, "connect_timeout: not a valid duration (seconds=315576000001, nanos=0)"),
    ],
)
def test_connect_timeout(seconds: int, nanos: int, expected: str) -> None:
    cluster = make_cluster()
    cluster.connect_timeout.seconds = seconds
    cluster.connect_timeout.nanos = nanos
    assert violations(cluster) == [expected]


def test_unset_connect_timeout_is_not_checked() -> None:
    cluster = make_cluster()
    cluster.ClearField("connect_timeout")
    assert violations(cluster) == []


def test_cluster_with_empty_name() -> None:
    cluster = make_cluster()
    cluster.name = ""
    assert violations(cluster) == ["name: must not be empty"]


def test_undefined_enum_value() -> None:
    cluster = make_cluster()
    cluster.lb_policy = 99
    assert violations(cluster) == ["lb_policy: 99 is not a defined value"]


def test_strict_well_known_regexes() -> None:
    cluster = make_cluster()
    cluster.upstream_http_protocol_options.override_auto_sni_header = "x bad"  # HTTP_HEADER_NAME, strict
    check = health_check_pb2.HealthCheck(timeout={"seconds": 1}, interval={"seconds": 5})
    check.unhealthy_threshold.value = 2
    check.healthy_threshold.value = 2
    check.http_health_check.path = "/healthz"
    check.http_health_check.host = "bad\x01host"  # HTTP_HEADER_VALUE, strict
    cluster.health_checks.append(check)
    assert violations(cluster) == [
        'health_checks[0].http_health_check.host: must be a valid HTTP header value (got "bad\\u0001host")',
        'upstream_http_protocol_options.override_auto_sni_header: must be a valid HTTP header name (got "x bad")',
    ]
    cluster.health_checks[0].http_health_check.host = "ok.example.com"
    cluster.upstream_http_protocol_options.override_auto_sni_header = ":authority"
    assert violations(cluster) == []


def test_virtual_host_without_domains() -> None:
    config = make_route_config()
    del config.virtual_hosts[0].domains[:]
    assert violations(config) == ["virtual_hosts[0].domains: must have at least 1 item"]


def test_route_without_match() -> None:
    config = make_route_config()
    config.virtual_hosts[0].routes[0].ClearField("match")
    assert violations(config) == ["virtual_hosts[0].routes[0].match: value is required"]


def test_route_without_action() -> None:
    config = make_route_config()
    config.virtual_hosts[0].routes[0].ClearField("route")
    assert violations(config) == [
        "virtual_hosts[0].routes[0].action: one of route, redirect, direct_response, filter_action, "
        "non_forwarding_action is required"
    ]


def test_header_matcher_with_invalid_name() -> None:
    # HeaderMatcher.name is HTTP_HEADER_NAME with strict: false — only NUL, CR and LF are refused.
    config = make_route_config()
    headers = config.virtual_hosts[0].routes[0].match.headers
    headers[0].name = "x-bad\nname"
    headers.add(name="").present_match = True
    assert violations(config) == [
        'virtual_hosts[0].routes[0].match.headers[0].name: must not contain NUL, CR or LF (got "x-bad\\nname")',
        "virtual_hosts[0].routes[0].match.headers[1].name: must not be empty",
    ]


def test_weighted_clusters() -> None:
    config = make_route_config()
    action = config.virtual_hosts[0].routes[0].route
    action.weighted_clusters.SetInParent()
    assert violations(config) == [
        "virtual_hosts[0].routes[0].route.weighted_clusters.clusters: must have at least 1 item"
    ]
    leg = action.weighted_clusters.clusters.add(name="")
    leg.weight.value = 100
    # ClusterWeight.name carries no (validate.rules) since cluster_header was added: Envoy checks "name or
    # cluster_header" in C++, so the annotations alone accept an empty name (the translator must refuse it).
    assert violations(config) == []
    leg.cluster_header = "bad\rheader"
    assert violations(config) == [
        "virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0].cluster_header: "
        'must not contain NUL, CR or LF (got "bad\\rheader")'
    ]


def test_cla_port_out_of_range() -> None:
    cla = make_cla()
    cla.endpoints[0].lb_endpoints[1].endpoint.address.socket_address.port_value = 65536
    assert violations(cla) == [
        "endpoints[0].lb_endpoints[1].endpoint.address.socket_address.port_value: "
        "must be less than or equal to 65535 (got 65536)"
    ]


def test_cla_zero_load_balancing_weight() -> None:
    cla = make_cla()
    cla.endpoints[0].lb_endpoints[1].load_balancing_weight.value = 0
    assert violations(cla) == [
        "endpoints[0].lb_endpoints[1].load_balancing_weight: must be greater than or equal to 1 (got 0)"
    ]
    cla.endpoints[0].lb_endpoints[1].ClearField("load_balancing_weight")  # an unset wrapper is not checked
    assert violations(cla) == []


def test_fault_filter_inside_typed_per_filter_config() -> None:
    config = make_route_config()
    fault = fault_pb2.HTTPFault()
    fault.abort.http_status = 700
    fault.abort.percentage.numerator = 10
    config.virtual_hosts[0].routes[0].typed_per_filter_config[FAULT_FILTER].Pack(fault)
    assert violations(config) == [
        'virtual_hosts[0].routes[0].typed_per_filter_config["envoy.filters.http.fault"](HTTPFault)'
        ".abort.http_status: must be inside range [200, 600) (got 700)"
    ]
    fault.abort.http_status = 503
    config.virtual_hosts[0].routes[0].typed_per_filter_config[FAULT_FILTER].Pack(fault)
    assert violations(config) == []


def test_unknown_or_broken_any() -> None:
    config = make_route_config()
    typed = config.virtual_hosts[0].routes[0].typed_per_filter_config
    typed["unknown"].type_url = "type.googleapis.com/example.NotInThePool"
    typed["unknown"].value = b"\xff\xff"
    assert violations(config) == []
    assert unpack_any(typed["unknown"]) is None
    typed["broken"].type_url = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
    typed["broken"].value = b"\xff\xff"
    assert violations(config) == [
        'virtual_hosts[0].routes[0].typed_per_filter_config["broken"]: '
        "cannot decode the envoy.extensions.filters.http.fault.v3.HTTPFault payload"
    ]


def test_listener_with_http_connection_manager() -> None:
    manager = hcm_pb2.HttpConnectionManager(stat_prefix="")
    manager.route_config.CopyFrom(make_route_config())
    manager.route_config.virtual_hosts[0].routes[0].route.cluster = ""
    listener = listener_pb2.Listener(name="ingress")
    listener.address.socket_address.address = "0.0.0.0"
    listener.address.socket_address.port_value = 10000
    listener_filter = listener.filter_chains.add().filters.add(name="envoy.filters.network.http_connection_manager")
    listener_filter.typed_config.Pack(manager)
    prefix = "filter_chains[0].filters[0].typed_config(HttpConnectionManager)"
    # stat_prefix is exempt (validate.EXEMPT): istiod's proxyless API listeners leave it empty, and gRPC accepts them.
    assert violations(listener) == [
        f"{prefix}.route_config.virtual_hosts[0].routes[0].route.cluster: must not be empty",
    ]
    unpacked = unpack_any(listener_filter.typed_config)
    assert unpacked == manager
    # A bare Any (as in DiscoveryResponse.resources) is unpacked too.
    resource = any_pb2.Any()
    resource.Pack(manager)
    assert violations(resource) == [
        "(HttpConnectionManager).route_config.virtual_hosts[0].routes[0].route.cluster: must not be empty"
    ]


def test_several_violations_and_limit() -> None:
    cluster = make_cluster()
    cluster.name = ""
    cluster.connect_timeout.FromSeconds(-1)
    cluster.lb_policy = 99
    cluster.dns_refresh_rate.FromMilliseconds(1)  # gt 1ms
    expected = [
        "name: must not be empty",
        "connect_timeout: must be greater than 0s (got -1s)",
        "lb_policy: 99 is not a defined value",
        "dns_refresh_rate: must be greater than 0.001s (got 0.001s)",
    ]
    assert violations(cluster) == expected
    assert violations(cluster, limit=2) == expected[:2]
    assert violations(cluster, limit=0) == []

    cla = make_cla(50)
    for lb_endpoint in cla.endpoints[0].lb_endpoints:
        lb_endpoint.load_balancing_weight.value = 0
    assert len(violations(cla)) == 20
    assert len(violations(cla, limit=100)) == 50


def test_two_thousand_endpoints_is_fast() -> None:
    cla = make_cla(2000)
    violations(cla)  # compiles the plans
    best = min(_timed(lambda: violations(cla)) for _ in range(3))
    print(f"validating a 2,000-endpoint ClusterLoadAssignment: {best * 1000:.1f} ms")
    assert best < 0.5


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    assert fn() == []
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------------------------------
# The generic rules, on a small message built here with (validate.rules) options.


def _sample_class() -> Any:
    pool = descriptor_pool.Default()
    name = "meshlib_tests.validate.Sample"
    try:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
    except KeyError:
        pass
    field_type = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="meshlib_tests/validate_sample.proto", package="meshlib_tests.validate", syntax="proto3"
    )
    proto.dependency.extend(
        ["validate/validate.proto", "google/protobuf/duration.proto", "google/protobuf/wrappers.proto"]
    )
    off = proto.message_type.add(name="Off")
    off.options.Extensions[validate_pb2.disabled] = True
    off.field.add(name="s", number=1, type=field_type.TYPE_STRING).options.Extensions[
        validate_pb2.rules
    ].string.min_len = 1
    sample = proto.message_type.add(name="Sample")
    entry = sample.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=field_type.TYPE_STRING, label=field_type.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=field_type.TYPE_INT32, label=field_type.LABEL_OPTIONAL)

    def add(name: str, number: int, kind: int, *, repeated: bool = False, type_name: str = "") -> Any:
        label = field_type.LABEL_REPEATED if repeated else field_type.LABEL_OPTIONAL
        field = sample.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
        return field.options.Extensions[validate_pb2.rules]

    rules = add("outside", 1, field_type.TYPE_INT32)
    rules.int32.lt = 0
    rules.int32.gt = 10
    getattr(add("choice", 2, field_type.TYPE_UINT32).uint32, "in").extend([1, 2, 3])
    rules = add("ratio", 3, field_type.TYPE_DOUBLE)
    rules.double.gte = 0.5
    rules.double.lte = 1.5
    rules = add("code", 4, field_type.TYPE_STRING)
    rules.string.prefix = "a"
    rules.string.max_len = 3
    rules.string.pattern = "^a[bc]*$"
    rules = add("optional_text", 5, field_type.TYPE_STRING)
    rules.string.min_len = 3
    rules.string.ignore_empty = True
    rules = add("tags", 6, field_type.TYPE_STRING, repeated=True)
    rules.repeated.unique = True
    rules.repeated.items.string.min_len = 1
    rules = add(
        "labels", 7, field_type.TYPE_MESSAGE, repeated=True, type_name=".meshlib_tests.validate.Sample.LabelsEntry"
    )
    rules.map.min_pairs = 1
    rules.map.keys.string.min_len = 2
    rules.map.values.int32.gte = 0
    rules = add("period", 8, field_type.TYPE_MESSAGE, type_name=".google.protobuf.Duration")
    getattr(rules.duration, "in").add(seconds=1)
    getattr(rules.duration, "in").add(seconds=2)
    rules = add("retries", 9, field_type.TYPE_MESSAGE, type_name=".google.protobuf.UInt32Value")
    rules.uint32.lte = 5
    rules.message.required = True
    add("off", 10, field_type.TYPE_MESSAGE, type_name=".meshlib_tests.validate.Off")
    add("ipv4", 11, field_type.TYPE_BYTES).bytes.ipv4 = True
    add("mail", 12, field_type.TYPE_STRING).string.email = True
    add("host", 13, field_type.TYPE_STRING).string.hostname = True
    add("id", 14, field_type.TYPE_STRING).string.uuid = True
    sample.oneof_decl.add(name="kind").options.Extensions[validate_pb2.required] = True
    sample.field.add(name="a", number=15, type=field_type.TYPE_STRING, label=field_type.LABEL_OPTIONAL, oneof_index=0)
    sample.field.add(name="b", number=16, type=field_type.TYPE_INT32, label=field_type.LABEL_OPTIONAL, oneof_index=0)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def _valid_sample() -> Any:
    sample = _sample_class()(outside=-1, choice=2, ratio=1.0, code="abc", tags=["x", "y"], a="x")
    sample.labels["ok"] = 1
    sample.retries.value = 3
    sample.mail = "ops@example.com"
    sample.host = "example.com"
    sample.id = "123e4567-e89b-12d3-a456-426614174000"
    sample.ipv4 = b"\x7f\x00\x00\x01"
    return sample


def test_generic_rules() -> None:
    sample = _valid_sample()
    assert violations(sample) == []
    bad = _sample_class()(outside=5, choice=7, ratio=2.0, code="abc\n", optional_text="", tags=["x", "", "x"])
    bad.labels["k"] = -1
    bad.period.seconds = 3
    bad.off.s = ""  # (validate.disabled): not looked at
    bad.ipv4 = b"\x00" * 5
    bad.mail = "not an address"
    bad.host = "-bad-.example.com"
    bad.id = "123"
    assert violations(bad, limit=100) == [
        "outside: must be outside range [0, 10] (got 5)",
        "choice: must be one of [1, 2, 3] (got 7)",
        "ratio: must be inside range [0.5, 1.5] (got 2.0)",
        "code: must be at most 3 characters long (got 4)",
        'code: must match pattern "^a[bc]*$" (got "abc\\n")',  # RE2's $ is the end of the text
        "tags[1]: must not be empty",
        "tags[2]: must be unique (same as item [0])",
        'labels["k"]: key must be at least 2 characters long (got 1)',
        'labels["k"]: must be greater than or equal to 0 (got -1)',
        "period: must be one of [1s, 2s] (got 3s)",
        "retries: value is required",
        "ipv4: must be a valid IPv4 address (got b'\\x00\\x00\\x00\\x00\\x00')",
        'mail: must be a valid email address (got "not an address")',
        'host: must be a valid hostname (got "-bad-.example.com")',
        'id: must be a valid UUID (got "123")',
        "kind: one of a, b is required",
    ]
