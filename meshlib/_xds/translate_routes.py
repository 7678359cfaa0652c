"""Virtual host → meshlib routes: match, action (cluster, split, direct response), rewrite, timeout, faults, headers.

Each route of the virtual host Envoy picked for a listener becomes one meshlib
route for that listener's exact authority; what a route can't express is
Rejected with the field's path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshlib._config.hosts import authority_host
from meshlib._xds import translate_policies as policies
from meshlib._xds.translate_common import At, duration, duration_str, fraction_percent, pb, type_name, unpack
from meshlib._xds.translate_match import header_edits, route_match
from meshlib._xds.translate_policies import check_hedge

__all__ = ["FaultFilter", "RouteContext", "check_fault_configs", "http_fault", "vhost_routes"]

_FAULT = "envoy.extensions.filters.http.fault.v3.HTTPFault"
_FILTER_CONFIG = "envoy.config.route.v3.FilterConfig"
_DEFAULT_TIMEOUT = 15.0  # Envoy's route timeout when unset
_MAX_BODY = 4096  # Envoy's max_direct_response_body_size_bytes default


@dataclass(frozen=True)
class FaultFilter:
    """The fault filter of a listener's chain: its name (per-route configs are keyed by it) and own config."""

    name: str
    default: dict[str, Any] | None
    disabled: bool


@dataclass
class RouteContext:
    """What translating one listener's routes needs, and what it learns (hash policies per xDS cluster)."""

    listener: str
    authority: str
    fault: FaultFilter | None
    max_stream_duration: float | None
    cluster_name: Callable[[str], str]
    hash_on: dict[str, dict[str, str]] = field(default_factory=dict)  # xDS cluster → first header/cookie hash


# ---------------------------------------------------------------------------------------------------- faults


def http_fault(fault: Any, at: At) -> dict[str, Any] | None:
    """An HTTPFault → meshlib ``fault`` (None: it injects nothing). An unset percentage is 0%, as in Envoy."""
    for name in ("upstream_cluster",):
        if getattr(fault, name):
            (at / name).reject("not supported")
    for name in ("headers", "downstream_nodes"):
        if getattr(fault, name):
            (at / name).reject("not supported: the fault applies to every request of the route")
    for name in ("max_active_faults", "response_rate_limit"):
        if fault.HasField(name):
            (at / name).reject("not supported")
    result: dict[str, Any] = {}
    if fault.HasField("delay"):
        delay = fault.delay
        which = delay.WhichOneof("fault_delay_secifier")
        if which != "fixed_delay":
            (at / "delay" / (which or "fixed_delay")).reject("only fixed_delay is supported")
        seconds = duration(delay.fixed_delay)
        percent = fraction_percent(delay.percentage)
        if seconds > 0 and percent > 0:
            result["delay"] = {"duration": duration_str(seconds), "percent": percent}
    if fault.HasField("abort"):
        abort = fault.abort
        which = abort.WhichOneof("error_type")
        if which != "http_status":
            (at / "abort" / (which or "http_status")).reject("only http_status is supported")
        percent = fraction_percent(abort.percentage)
        if percent > 0:
            result["abort"] = {"status": int(abort.http_status), "percent": percent}
    return result or None


def _per_filter(config: Any, at: At) -> tuple[bool | None, Any, At]:
    """A typed_per_filter_config entry of the fault filter: (disabled or None, HTTPFault or None, its path)."""
    mods = pb()
    if type_name(config) == _FILTER_CONFIG:
        wrapper = unpack(config, mods.route_components.FilterConfig, at)
        cat = at / "(FilterConfig)" / "config"
        inner = unpack(wrapper.config, mods.fault.HTTPFault, cat) if wrapper.HasField("config") else None
        return bool(wrapper.disabled), inner, cat / "(HTTPFault)"
    return None, unpack(config, mods.fault.HTTPFault, at), at / "(HTTPFault)"


def check_fault_configs(message: Any, at: At) -> None:
    """Rejected for a fault override meshlib can't honour, wherever it is (by type: the filter's name varies)."""
    for key, config in message.typed_per_filter_config.items():
        kat = at / "typed_per_filter_config" / f'["{key}"]'
        name = type_name(config)
        if name == _FILTER_CONFIG:
            wrapper = unpack(config, pb().route_components.FilterConfig, kat)
            if not wrapper.HasField("config") and not wrapper.disabled:
                (kat / "(FilterConfig)" / "config").reject(
                    "a FilterConfig that doesn't disable needs config (Envoy too)"
                )
            name = type_name(wrapper.config) if wrapper.HasField("config") else ""
        if name == _FAULT:
            _, fault, fault_at = _per_filter(config, kat)
            if fault is not None:
                http_fault(fault, fault_at)


def _route_fault(levels: list[tuple[Any, At]], chain: FaultFilter | None) -> dict[str, Any] | None:
    """The fault of a route, as Envoy resolves it (checked against Envoy 1.40).

    Whether the filter runs: the most specific level (route, virtual host, route configuration) with an entry
    for it says (a FilterConfig its ``disabled``, a plain config "enabled"), else the filter's own ``disabled``.
    What it injects: the most specific config (plain, or a FilterConfig's), else the filter's own.
    """
    if chain is None:
        return None
    disabled: bool | None = None
    config: dict[str, Any] | None = chain.default
    found = False
    for message, at in levels:
        entry = message.typed_per_filter_config.get(chain.name)
        if entry is None:
            continue
        kat = at / "typed_per_filter_config" / f'["{chain.name}"]'
        level_disabled, fault, fault_at = _per_filter(entry, kat)
        if disabled is None:
            disabled = bool(level_disabled)
        if not found and fault is not None:
            config = http_fault(fault, fault_at)
            found = True
    if disabled if disabled is not None else chain.disabled:
        return None
    return config


# ---------------------------------------------------------------------------------------------------- virtual hosts


def vhost_routes(rc: Any, rc_at: At, index: int, context: RouteContext) -> list[dict[str, Any]]:
    vhost = rc.virtual_hosts[index]
    vat = rc_at / "virtual_hosts" / index
    if vhost.HasField("matcher"):
        (vat / "matcher").reject("the generic matcher is not supported: use routes")
    if vhost.require_tls != 0:
        (vat / "require_tls").reject("not supported: meshlib's callers speak plain HTTP to it")
    for name in (
        "include_request_attempt_count",
        "include_attempt_count_in_response",
        "include_is_timeout_retry_header",
    ):
        if getattr(vhost, name):
            (vat / name).reject("not supported")
    if vhost.HasField("retry_policy_typed_config"):
        (vat / "retry_policy_typed_config").reject("not supported: use retry_policy")
    check_hedge(vhost, vat)
    host = authority_host(context.authority)
    routes: list[dict[str, Any]] = []
    names: set[str] = set()
    for j, route in enumerate(vhost.routes):
        translated = _route(route, vat / "routes" / j, vhost, vat, rc, rc_at, context)
        if translated is None:
            continue
        name = f"{context.listener}/{vhost.name}/{route.name or j}"
        if name in names:
            name = f"{name}#{j}"
        names.add(name)
        translated["match"] = {"host": host, "authority": context.authority, **translated["match"]}
        routes.append({"name": name, **translated})
    return routes


# ---------------------------------------------------------------------------------------------------- routes


def _route(route: Any, at: At, vhost: Any, vat: At, rc: Any, rc_at: At, context: RouteContext) -> dict[str, Any] | None:
    which = route.WhichOneof("action")
    if which == "redirect":
        (at / "redirect").reject("redirects are not supported")
    if which in ("filter_action", "non_forwarding_action") or which is None:
        (at / (which or "action")).reject("not supported: use route or direct_response")
    found = route_match(route.match, at / "match", context.authority)
    if found is None:
        return None  # it can never match this listener's requests
    match, path = found
    result: dict[str, Any] = {"match": match}
    levels = [(route, at), (vhost, vat), (rc, rc_at)]
    edit_levels = list(reversed(levels)) if rc.most_specific_header_mutations_wins else levels
    headers = header_edits(edit_levels)
    if which == "direct_response":
        result["direct_response"] = _direct_response(route.direct_response, at / "direct_response", rc)
    else:
        result.update(_action(route.route, at / "route", path, vhost, vat, rc, rc_at, context))
    if headers is not None:
        result["headers"] = headers
    fault = _route_fault(levels, context.fault)
    if fault is not None:
        result["fault"] = fault
    return result


def _direct_response(action: Any, at: At, rc: Any) -> dict[str, Any]:
    if action.HasField("body_format"):
        (at / "body_format").reject("not supported")
    result: dict[str, Any] = {"status": int(action.status)}
    if action.HasField("body"):
        which = action.body.WhichOneof("specifier")
        if which == "inline_string":
            body = str(action.body.inline_string)
        elif which == "inline_bytes":
            try:
                body = bytes(action.body.inline_bytes).decode("utf-8")
            except UnicodeDecodeError:
                (at / "body" / "inline_bytes").reject("meshlib's direct responses are text: not UTF-8")
        else:
            (at / "body" / (which or "specifier")).reject("only inline_string and inline_bytes are supported")
        limit = rc.max_direct_response_body_size_bytes
        most = int(limit.value) if rc.HasField("max_direct_response_body_size_bytes") else _MAX_BODY
        if len(body.encode("utf-8")) > most:
            (at / "body").reject(f"longer than max_direct_response_body_size_bytes ({most}): Envoy refuses it too")
        if body:
            result["body"] = body
    return result


def _action(
    action: Any, at: At, path: Any, vhost: Any, vat: At, rc: Any, rc_at: At, context: RouteContext
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    which = action.WhichOneof("cluster_specifier")
    targets: list[str] = []
    if which == "cluster":
        targets = [str(action.cluster)]
        result["cluster"] = context.cluster_name(action.cluster)
    elif which == "weighted_clusters":
        legs = _weighted(action.weighted_clusters, at / "weighted_clusters")
        targets = list(legs)
        if len(legs) == 1:
            result["cluster"] = context.cluster_name(targets[0])
        else:
            result["split"] = [{"cluster": context.cluster_name(c), "weight": w} for c, w in legs.items()]
    else:
        (at / (which or "cluster_specifier")).reject("not supported: use cluster or weighted_clusters")
    _check_action(action, at)
    check_hedge(action, at)
    rewrite = _rewrite(action, at, path)
    if rewrite:
        result["rewrite"] = rewrite
    timeout = duration(action.timeout) if action.HasField("timeout") else _DEFAULT_TIMEOUT
    limit = context.max_stream_duration
    if action.HasField("max_stream_duration") and action.max_stream_duration.HasField("max_stream_duration"):
        limit = duration(action.max_stream_duration.max_stream_duration)
    if limit:
        timeout = min(timeout, limit) if timeout else limit
    if timeout:
        result["timeout"] = duration_str(timeout)
    if action.HasField("retry_policy"):
        retry = policies.retry(action.retry_policy, at / "retry_policy")
    elif vhost.HasField("retry_policy"):
        retry = policies.retry(vhost.retry_policy, vat / "retry_policy")
    else:
        retry = None
    if retry is not None:
        result["retry"] = retry
    mirror = policies.mirror(action, at, vhost, vat, rc, rc_at, context.cluster_name)
    if mirror is not None:
        result["mirror"] = mirror
    hash_on = policies.hash_on(action, at)
    if hash_on is not None:
        for target in targets:
            context.hash_on.setdefault(target, hash_on)
    return result


def _weighted(weighted: Any, at: At) -> dict[str, int]:
    if weighted.WhichOneof("random_value_specifier") is not None:
        which = weighted.WhichOneof("random_value_specifier")
        if which == "header_name" or weighted.use_hash_policy.value:
            (at / which).reject("not supported: meshlib draws each request's leg at random")
    legs: dict[str, int] = {}
    for j, leg in enumerate(weighted.clusters):
        lat = at / "clusters" / j
        if leg.cluster_header:
            (lat / "cluster_header").reject("not supported: name the cluster")
        if leg.HasField("metadata_match"):
            (lat / "metadata_match").reject("subset load balancing is not supported")
        for name in (
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "typed_per_filter_config",
        ):
            if getattr(leg, name):
                (lat / name).reject("per-leg settings are not supported: set them on the route")
        if leg.host_rewrite_literal:
            (lat / "host_rewrite_literal").reject("per-leg settings are not supported: set them on the route")
        weight = int(leg.weight.value) if leg.HasField("weight") else 0
        if weight > 0:  # a zero-weight leg gets no traffic; the same cluster twice is one leg
            legs[str(leg.name)] = legs.get(str(leg.name), 0) + weight
    if not legs:
        (at / "clusters").reject("every cluster has weight 0")
    return legs


def _check_action(action: Any, at: At) -> None:
    for name in ("metadata_match", "regex_rewrite", "path_rewrite_policy", "retry_policy_typed_config"):
        if action.HasField(name):
            (at / name).reject("not supported")
    for name in ("internal_redirect_policy", "max_internal_redirects"):
        if action.HasField(name):
            (at / name).reject("internal redirects are not supported")
    if action.internal_redirect_action != 0:
        (at / "internal_redirect_action").reject("internal redirects are not supported")
    if action.cluster_not_found_response_code != 0:
        (at / "cluster_not_found_response_code").reject("only SERVICE_UNAVAILABLE (503, the default) is supported")
    if action.path_rewrite:
        (at / "path_rewrite").reject("not supported: use prefix_rewrite")
    if action.append_x_forwarded_host:
        (at / "append_x_forwarded_host").reject("not supported")
    which = action.WhichOneof("host_rewrite_specifier")
    if which not in (None, "host_rewrite_literal") and (which != "auto_host_rewrite" or action.auto_host_rewrite.value):
        (at / which).reject("not supported: use host_rewrite_literal")


def _rewrite(action: Any, at: At, path: Any) -> dict[str, str]:
    rewrite: dict[str, str] = {}
    prefix = str(action.prefix_rewrite)
    if prefix:
        if path.kind not in ("prefix", "path"):
            (at / "prefix_rewrite").reject("meshlib rewrites a prefix or path match (case-sensitive) only")
        if not prefix.startswith("/"):
            (at / "prefix_rewrite").reject("must start with '/'")
        # An empty prefix matched nothing to replace: Envoy puts prefix_rewrite before the whole path, which
        # meshlib's rewrite of "/" (the match it assumes without a path) does with a trailing "/".
        rewrite["path_prefix"] = prefix + "/" if path.kind == "prefix" and path.value == "" else prefix
    if action.WhichOneof("host_rewrite_specifier") == "host_rewrite_literal":
        host = str(action.host_rewrite_literal)
        if any(c in host for c in " /\r\n\x00@"):
            (at / "host_rewrite_literal").reject(f"invalid host {host!r}")
        rewrite["host"] = host
    return rewrite
