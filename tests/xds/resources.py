"""Builders of the xDS resources the tests serve, to Envoy and to meshlib alike.

They cover the usual shapes; a test needing more edits the returned message
or builds the proto itself. Where a builder takes a sub-message it also takes
a plain mapping in the proto's JSON form (``retry={"retry_on": "5xx",
"num_retries": 2}``), parsed with :func:`google.protobuf.json_format.ParseDict`.
Durations are seconds as floats (negative ones are allowed: a test may want a
NACK).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from envoy.config.cluster.v3.circuit_breaker_pb2 import CircuitBreakers
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.cluster.v3.outlier_detection_pb2 import OutlierDetection
from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.core.v3.base_pb2 import Locality, RuntimeFractionalPercent, TransportSocket
from envoy.config.core.v3.config_source_pb2 import AggregatedConfigSource, ApiVersion, ConfigSource
from envoy.config.core.v3.health_check_pb2 import HealthStatus
from envoy.config.endpoint.v3.endpoint_components_pb2 import Endpoint, LbEndpoint, LocalityLbEndpoints
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.api_listener_pb2 import ApiListener
from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import (
    HeaderMatcher,
    QueryParameterMatcher,
    RetryPolicy,
    Route,
    RouteAction,
    RouteMatch,
    VirtualHost,
    WeightedCluster,
)
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.common.fault.v3.fault_pb2 import FaultDelay
from envoy.extensions.filters.http.fault.v3.fault_pb2 import FaultAbort, HTTPFault
from envoy.extensions.filters.http.router.v3.router_pb2 import Router
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
    HttpFilter,
    Rds,
)
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import UpstreamTlsContext
from envoy.type.matcher.v3.regex_pb2 import RegexMatcher
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from envoy.type.v3.percent_pb2 import FractionalPercent
from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import UInt32Value

__all__ = [
    "FAULT_FILTER",
    "HCM_FILTER",
    "ROUTER_FILTER",
    "ads_source",
    "any_of",
    "api_listener",
    "duration",
    "eds_cluster",
    "http_connection_manager",
    "http_fault",
    "load_assignment",
    "route",
    "route_configuration",
    "socket_listener",
    "virtual_host",
]

FAULT_FILTER = "envoy.filters.http.fault"
ROUTER_FILTER = "envoy.filters.http.router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"

M = TypeVar("M", bound=Message)


def duration(seconds: float) -> Duration:
    """A Duration of ``seconds`` (may be negative)."""
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def any_of(message: Message) -> AnyProto:
    """``message`` packed in an Any."""
    packed = AnyProto()
    packed.Pack(message)
    return packed


def _message(value: M | Mapping[str, Any], cls: type[M]) -> M:
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        parsed: M = json_format.ParseDict(value, cls())
        return parsed
    raise TypeError(f"expected a {cls.__name__} or a mapping, got {type(value).__name__}")


def ads_source() -> ConfigSource:
    """``{ads: {}, resource_api_version: V3}``."""
    return ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)


# ---------------------------------------------------------------------------------------------------- faults


def http_fault(
    *,
    abort_status: int | None = None,
    abort_grpc_status: int | None = None,
    abort_percent: float = 100.0,
    delay: float | None = None,
    delay_percent: float = 100.0,
    max_active_faults: int | None = None,
) -> HTTPFault:
    """An HTTPFault: abort with an HTTP (or gRPC) status and/or a fixed delay, each for a percentage of requests.

    ``http_fault()`` (nothing set) is the empty filter config that lets routes carry their own fault.
    """
    fault = HTTPFault()
    if abort_status is not None or abort_grpc_status is not None:
        fault.abort.CopyFrom(FaultAbort(percentage=_percent(abort_percent)))
        if abort_status is not None:
            fault.abort.http_status = abort_status
        else:
            assert abort_grpc_status is not None
            fault.abort.grpc_status = abort_grpc_status
    if delay is not None:
        fault.delay.CopyFrom(FaultDelay(fixed_delay=duration(delay), percentage=_percent(delay_percent)))
    if max_active_faults is not None:
        fault.max_active_faults.CopyFrom(UInt32Value(value=max_active_faults))
    return fault


def _percent(percent: float) -> FractionalPercent:
    """``percent`` (0–100) as a FractionalPercent per million."""
    return FractionalPercent(numerator=round(percent * 10_000), denominator=FractionalPercent.MILLION)


# ---------------------------------------------------------------------------------------------------- listeners


def http_connection_manager(
    route_config: str, *, fault: HTTPFault | Mapping[str, Any] | None = None, stat_prefix: str = ""
) -> HttpConnectionManager:
    """An HCM taking ``route_config`` from RDS over ADS, with filters [fault (if given), router]."""
    hcm = HttpConnectionManager(
        stat_prefix=stat_prefix,
        rds=Rds(route_config_name=route_config, config_source=ads_source()),
    )
    if fault is not None:
        hcm.http_filters.append(HttpFilter(name=FAULT_FILTER, typed_config=any_of(_message(fault, HTTPFault))))
    hcm.http_filters.append(HttpFilter(name=ROUTER_FILTER, typed_config=any_of(Router())))
    return hcm


def api_listener(authority: str, route_config: str, *, fault: HTTPFault | Mapping[str, Any] | None = None) -> Listener:
    """A gRPC-style API listener named ``authority`` (what a proxyless client asks LDS for), routes from RDS.

    Pass ``fault=http_fault()`` for a fault filter with no fault of its own, so routes' faults apply.
    """
    hcm = http_connection_manager(route_config, fault=fault)
    return Listener(name=authority, api_listener=ApiListener(api_listener=any_of(hcm)))


def socket_listener(
    name: str, route_config: str, *, port: int = 0, fault: HTTPFault | Mapping[str, Any] | None = None
) -> Listener:
    """An Envoy listener on 127.0.0.1:``port`` (0: any; read it from the admin) with the same HCM (codec AUTO)."""
    hcm = http_connection_manager(route_config, fault=fault, stat_prefix=name)
    hcm.codec_type = HttpConnectionManager.AUTO
    return Listener(
        name=name,
        address=Address(socket_address=SocketAddress(address="127.0.0.1", port_value=port)),
        filter_chains=[FilterChain(filters=[Filter(name=HCM_FILTER, typed_config=any_of(hcm))])],
    )


# ---------------------------------------------------------------------------------------------------- routes


def route_configuration(name: str, virtual_hosts: Iterable[VirtualHost]) -> RouteConfiguration:
    return RouteConfiguration(name=name, virtual_hosts=list(virtual_hosts))


def virtual_host(name: str, domains: Sequence[str], routes: Iterable[Route]) -> VirtualHost:
    return VirtualHost(name=name, domains=list(domains), routes=list(routes))


def route(
    *,
    prefix: str | None = None,
    path: str | None = None,
    regex: str | None = None,
    cluster: str | None = None,
    weighted: Sequence[tuple[str, int]] | None = None,
    headers: Iterable[HeaderMatcher | tuple[str, str]] = (),
    query: Iterable[QueryParameterMatcher | tuple[str, str]] = (),
    timeout: float | None = None,
    retry: RetryPolicy | Mapping[str, Any] | None = None,
    fault: HTTPFault | Mapping[str, Any] | None = None,
    runtime_fraction: float | None = None,
    case_sensitive: bool | None = None,
    name: str = "",
) -> Route:
    """A route: one of ``prefix``/``path``/``regex`` (default: prefix "/") to ``cluster`` or ``weighted`` clusters.

    ``headers`` and ``query`` are matchers or ``(name, exact value)`` pairs; ``fault`` goes into
    ``typed_per_filter_config`` (the HCM needs a fault filter for it to apply); ``runtime_fraction`` is
    the percentage (0–100) of requests the route matches.
    """
    if sum(x is not None for x in (prefix, path, regex)) > 1:
        raise ValueError("one of prefix, path, regex")
    if (cluster is None) == (weighted is None):
        raise ValueError("one of cluster, weighted")
    match = RouteMatch()
    if path is not None:
        match.path = path
    elif regex is not None:
        match.safe_regex.CopyFrom(RegexMatcher(regex=regex))
    else:
        match.prefix = prefix if prefix is not None else "/"
    if case_sensitive is not None:
        match.case_sensitive.value = case_sensitive
    for header in headers:
        match.headers.append(
            header
            if isinstance(header, HeaderMatcher)
            else HeaderMatcher(name=header[0], string_match=StringMatcher(exact=header[1]))
        )
    for param in query:
        match.query_parameters.append(
            param
            if isinstance(param, QueryParameterMatcher)
            else QueryParameterMatcher(name=param[0], string_match=StringMatcher(exact=param[1]))
        )
    if runtime_fraction is not None:
        match.runtime_fraction.CopyFrom(RuntimeFractionalPercent(default_value=_percent(runtime_fraction)))
    action = RouteAction()
    if cluster is not None:
        action.cluster = cluster
    else:
        assert weighted is not None
        action.weighted_clusters.CopyFrom(
            WeightedCluster(
                clusters=[WeightedCluster.ClusterWeight(name=c, weight=UInt32Value(value=w)) for c, w in weighted]
            )
        )
    if timeout is not None:
        action.timeout.CopyFrom(duration(timeout))
    if retry is not None:
        action.retry_policy.CopyFrom(_message(retry, RetryPolicy))
    result = Route(name=name, match=match, route=action)
    if fault is not None:
        result.typed_per_filter_config[FAULT_FILTER].CopyFrom(any_of(_message(fault, HTTPFault)))
    return result


# ---------------------------------------------------------------------------------------------------- clusters


def eds_cluster(
    name: str,
    *,
    lb_policy: int | str = Cluster.ROUND_ROBIN,
    connect_timeout: float = 1.0,
    outlier: OutlierDetection | Mapping[str, Any] | None = None,
    max_requests: int | None = None,
    tls: UpstreamTlsContext | Mapping[str, Any] | None = None,
) -> Cluster:
    """An EDS cluster whose endpoints come over ADS (``lb_policy``: a Cluster.LbPolicy or its name)."""
    cluster = Cluster(
        name=name,
        type=Cluster.EDS,
        eds_cluster_config=Cluster.EdsClusterConfig(eds_config=ads_source()),
        connect_timeout=duration(connect_timeout),
        lb_policy=Cluster.LbPolicy.Value(lb_policy) if isinstance(lb_policy, str) else lb_policy,
    )
    if outlier is not None:
        cluster.outlier_detection.CopyFrom(_message(outlier, OutlierDetection))
    if max_requests is not None:
        cluster.circuit_breakers.CopyFrom(
            CircuitBreakers(thresholds=[CircuitBreakers.Thresholds(max_requests=UInt32Value(value=max_requests))])
        )
    if tls is not None:
        cluster.transport_socket.CopyFrom(
            TransportSocket(name="envoy.transport_sockets.tls", typed_config=any_of(_message(tls, UpstreamTlsContext)))
        )
    return cluster


def load_assignment(
    cluster_name: str,
    endpoints: Iterable[tuple[str, int] | tuple[str, int, int]],
    *,
    health: Mapping[tuple[str, int], int | str] | None = None,
    locality: Locality | None = None,
    locality_weight: int = 1,
    priority: int = 0,
) -> ClusterLoadAssignment:
    """``cluster_name``'s endpoints ``(host, port[, weight])`` in one locality (weight 1: gRPC drops weight-0 ones).

    ``health`` maps ``(host, port)`` to a HealthStatus (value or name, e.g. ``"UNHEALTHY"``); others are UNKNOWN.
    """
    health = health or {}
    lb_endpoints = []
    for entry in endpoints:
        host, port = entry[0], entry[1]
        lb_endpoint = LbEndpoint(
            endpoint=Endpoint(address=Address(socket_address=SocketAddress(address=host, port_value=port)))
        )
        if len(entry) > 2:
            lb_endpoint.load_balancing_weight.value = entry[2]
        status = health.get((host, port))
        if status is not None:
            lb_endpoint.health_status = HealthStatus.Value(status) if isinstance(status, str) else status
        lb_endpoints.append(lb_endpoint)
    group = LocalityLbEndpoints(
        locality=locality or Locality(),
        lb_endpoints=lb_endpoints,
        load_balancing_weight=UInt32Value(value=locality_weight),
        priority=priority,
    )
    return ClusterLoadAssignment(cluster_name=cluster_name, endpoints=[group])
