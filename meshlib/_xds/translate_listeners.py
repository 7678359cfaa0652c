"""Listener → HttpConnectionManager (its filters, its route configuration) → the virtual host Envoy would pick.

A listener is named by the authority the app calls; its routes are those of
the one virtual host Envoy would pick for that authority, in order, each
matching that exact authority, then a catch-all 404 (Envoy's NR).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshlib._config.hosts import authority_host, check_authority
from meshlib._xds.translate_common import At, duration, pb, type_name, unpack
from meshlib._xds.translate_routes import FaultFilter, RouteContext, check_fault_configs, http_fault, vhost_routes

__all__ = ["ListenerPlan", "check_route_config", "listener_plan", "routes_for"]

_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "envoy.extensions.filters.http.router.v3.Router"
_FAULT = "envoy.extensions.filters.http.fault.v3.HTTPFault"


@dataclass(frozen=True)
class ListenerPlan:
    authority: str  # host[:port] as httpx has it (the listener's name, lowercase, no default port)
    rds: str | None
    inline: Any  # the inline RouteConfiguration, or None
    inline_at: At
    fault: FaultFilter | None
    max_stream_duration: float | None  # the HCM's common_http_protocol_options.max_stream_duration


# ---------------------------------------------------------------------------------------------------- listeners


def listener_plan(listener: Any) -> ListenerPlan:
    """Check a Listener and say what it routes by (Rejected for anything meshlib can't honour)."""
    mods = pb()
    at = At("Listener", listener.name)
    try:
        authority = check_authority(listener.name)
    except ValueError:
        (at / "name").reject("a listener is named by the authority the app calls: host[:port] (as the URL has it)")
    if not listener.HasField("api_listener"):
        (at / "api_listener").reject("meshlib takes API listeners (as gRPC's proxyless clients do)")
    packed = listener.api_listener.api_listener
    hat = at / "api_listener" / "api_listener"
    if type_name(packed) != _HCM:
        hat.reject(f"expected an HttpConnectionManager, got {type_name(packed) or 'nothing'}")
    hcm = unpack(packed, mods.hcm.HttpConnectionManager, hat)
    hat = hat / "(HttpConnectionManager)"
    _check_hcm(hcm, hat)
    fault: FaultFilter | None = None
    filters = list(hcm.http_filters)
    for i, http_filter in enumerate(filters):
        fat = hat / "http_filters" / i
        if http_filter.HasField("config_discovery"):
            if http_filter.is_optional:
                continue
            (fat / "config_discovery").reject("filter config discovery (ECDS) is not supported")
        name = type_name(http_filter.typed_config)
        if name == _ROUTER:
            if i != len(filters) - 1:
                fat.reject("the router must be the last filter")
            router = unpack(http_filter.typed_config, mods.router.Router, fat / "typed_config")
            if router.upstream_http_filters:
                (fat / "typed_config" / "(Router)" / "upstream_http_filters").reject("not supported")
        elif name == _FAULT:
            if fault is not None:
                fat.reject("a second fault filter: meshlib has one fault per route")
            config = unpack(http_filter.typed_config, mods.fault.HTTPFault, fat / "typed_config")
            default = http_fault(config, fat / "typed_config" / "(HTTPFault)")
            fault = FaultFilter(http_filter.name, default, bool(http_filter.disabled))
        elif not http_filter.is_optional:
            fat.reject(f"http filter {http_filter.name!r} ({name or 'no typed_config'}) is not supported")
    if not filters or type_name(filters[-1].typed_config) != _ROUTER:
        (hat / "http_filters").reject(f"the last filter must be the router ({_ROUTER})")
    which = hcm.WhichOneof("route_specifier")
    if which == "scoped_routes":
        (hat / "scoped_routes").reject("scoped routes are not supported: use rds or route_config")
    options = hcm.common_http_protocol_options
    msd = duration(options.max_stream_duration) if options.HasField("max_stream_duration") else None
    inline = hcm.route_config if which == "route_config" else None
    if inline is not None:
        check_route_config(inline, hat / "route_config")
    rds = str(hcm.rds.route_config_name) if which == "rds" else None
    return ListenerPlan(authority, rds, inline, hat / "route_config", fault, msd or None)


def _check_hcm(hcm: Any, at: At) -> None:
    if hcm.via:
        (at / "via").reject("not supported")
    for name in ("normalize_path", "merge_slashes", "strip_matching_host_port", "strip_trailing_host_dot"):
        value = getattr(hcm, name)
        if value if isinstance(value, bool) else value.value:
            (at / name).reject("not supported: meshlib routes the path and host as the app sends them")
    if hcm.WhichOneof("strip_port_mode") is not None:
        (at / "strip_any_host_port").reject("not supported: meshlib routes the host as the app sends it")
    if hcm.path_with_escaped_slashes_action not in (0, 1):
        (at / "path_with_escaped_slashes_action").reject("only KEEP_UNCHANGED is supported")
    for name in ("local_reply_config", "path_normalization_options"):
        if hcm.HasField(name):
            (at / name).reject("not supported")
    if hcm.early_header_mutation_extensions:
        (at / "early_header_mutation_extensions").reject("not supported")


# ---------------------------------------------------------------------------------------------------- virtual hosts


def _domain_kind(domain: str) -> tuple[str, str]:
    """Envoy's domain classes: ("default", ""), ("suffix", ".foo.com"), ("prefix", "foo."), ("exact", domain)."""
    if domain == "*":
        return "default", ""
    if len(domain) > 1 and domain.startswith("*"):
        return "suffix", domain[1:]
    if len(domain) > 1 and domain.endswith("*"):
        return "prefix", domain[:-1]
    return "exact", domain


def _pick_vhost(rc: Any, authority: str) -> int | None:
    """The index of the virtual host Envoy picks for ``authority``: exact, longest suffix, longest prefix, '*'."""
    host = authority
    if rc.ignore_port_in_host_matching:
        host = authority.rpartition(":")[0] if not authority.endswith("]") and ":" in authority else authority
    best: dict[str, tuple[int, int]] = {}  # kind -> (length, index)
    for i, vhost in enumerate(rc.virtual_hosts):
        for domain in vhost.domains:
            kind, part = _domain_kind(domain.lower())
            if kind == "exact" and part == host:
                return i
            fits = (kind == "suffix" and host.endswith(part)) or (kind == "prefix" and host.startswith(part))
            if fits and len(part) < len(host):  # a wildcard matches at least one character
                if kind not in best or len(part) > best[kind][0]:
                    best[kind] = (len(part), i)
            elif kind == "default":
                best.setdefault("default", (0, i))
    for kind in ("suffix", "prefix", "default"):
        if kind in best:
            return best[kind][1]
    return None


def check_route_config(rc: Any, at: At) -> None:
    """Rejected for anything of a RouteConfiguration meshlib can't honour (every virtual host, every route)."""
    if rc.HasField("vhds"):
        (at / "vhds").reject("VHDS is not supported")
    if rc.vhost_header:
        (at / "vhost_header").reject("not supported: meshlib picks the virtual host by the authority")
    if rc.ignore_path_parameters_in_path_matching:
        (at / "ignore_path_parameters_in_path_matching").reject("not supported")
    seen: dict[str, int] = {}
    for i, vhost in enumerate(rc.virtual_hosts):
        for j, domain in enumerate(vhost.domains):
            key = domain.lower()
            if key in seen:
                (at / "virtual_hosts" / i / "domains" / j).reject(
                    f"duplicate domain {domain!r} (also in virtual_hosts[{seen[key]}]): Envoy refuses it too"
                )
            seen[key] = i
    check_fault_configs(rc, at)
    for i, vhost in enumerate(rc.virtual_hosts):
        vat = at / "virtual_hosts" / i
        check_fault_configs(vhost, vat)
        for j, route in enumerate(vhost.routes):
            check_fault_configs(route, vat / "routes" / j)
        # Every route of every virtual host, as if for some listener: what can't be translated is Rejected.
        context = RouteContext("check.invalid", "check.invalid", None, None, lambda name: "check")
        vhost_routes(rc, at, i, context)


def routes_for(plan: ListenerPlan, rc: Any, rc_at: At, context: RouteContext) -> list[dict[str, Any]]:
    """The meshlib routes of one listener: its virtual host's routes, then the catch-all 404."""
    routes: list[dict[str, Any]] = []
    if rc is not None:
        index = _pick_vhost(rc, plan.authority)
        if index is not None:
            routes = vhost_routes(rc, rc_at, index, context)
    host = authority_host(plan.authority)
    no_route: dict[str, Any] = {
        "name": f"{context.listener}/no-route",
        "match": {"host": host, "authority": plan.authority},
        "direct_response": {"status": 404},
    }
    # A request no route takes still meets the fault filter, with its own config (Envoy 1.40 does so).
    if plan.fault is not None and plan.fault.default is not None and not plan.fault.disabled:
        no_route["fault"] = plan.fault.default
    routes.append(no_route)
    return routes
