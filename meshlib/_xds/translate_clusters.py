"""Cluster resources → meshlib clusters: discovery, load balancing, breakers, ejection, upstream TLS, names."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshlib._config.security import parse_spiffe_id
from meshlib._xds.translate_common import At, duration, duration_str, pb, type_name, unpack
from meshlib._xds.translate_endpoints import LbSettings, check_assignment

__all__ = ["ClusterPlan", "cluster_plan", "meshlib_names"]

# DiscoveryType: STATIC 0, STRICT_DNS 1, LOGICAL_DNS 2, EDS 3, ORIGINAL_DST 4.
_STATIC, _STRICT_DNS, _LOGICAL_DNS, _EDS = 0, 1, 2, 3
_TYPES = {0: "STATIC", 1: "STRICT_DNS", 2: "LOGICAL_DNS", 3: "EDS", 4: "ORIGINAL_DST"}
# LbPolicy: ROUND_ROBIN 0, LEAST_REQUEST 1, RING_HASH 2, RANDOM 3, MAGLEV 5, CLUSTER_PROVIDED 6, ..._CONFIG 7.
_LEGACY_LB = {0: "round_robin", 1: "least_request", 2: "ring_hash", 3: "random", 5: "ring_hash"}
_LB_POLICY_CONFIG = 7
_POLICIES = "envoy.extensions.load_balancing_policies."
_TYPED_LB = {
    _POLICIES + "round_robin.v3.RoundRobin": ("round_robin", "round_robin", "RoundRobin"),
    _POLICIES + "least_request.v3.LeastRequest": ("least_request", "least_request", "LeastRequest"),
    _POLICIES + "random.v3.Random": ("random", "random", "Random"),
    _POLICIES + "ring_hash.v3.RingHash": ("ring_hash", "ring_hash", "RingHash"),
    # meshlib has no Maglev table: a hash ring spreads keys the same consistent way (other hosts per key).
    _POLICIES + "maglev.v3.Maglev": ("ring_hash", "maglev", "Maglev"),
}
_WRR_LOCALITY = _POLICIES + "wrr_locality.v3.WrrLocality"
_TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_RAW_BUFFER = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
_CLUSTER_NAME = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*$"
)
_SAN_URI = 3


@dataclass(frozen=True)
class ClusterPlan:
    """One Cluster's translation, but for ``lb``/``hash_on`` (they depend on the routes that send to it)."""

    config: dict[str, Any]  # the meshlib cluster, without lb and hash_on
    lb: str  # round_robin, least_request, random, ring_hash
    xds_endpoints: bool  # discovery: {xds: ...}: endpoints come from Translation.endpoints
    eds_name: str | None  # the ClusterLoadAssignment an EDS cluster needs
    scheme: str  # http, or https with TLS
    settings: LbSettings


# ---------------------------------------------------------------------------------------------------- names


def _valid_name(name: str) -> bool:
    return len(name) <= 253 and _CLUSTER_NAME.match(name) is not None


def _sanitized(name: str) -> str:
    """``outbound|9080||reviews.default.svc.cluster.local`` → ``outbound_9080__reviews.default.svc.cluster.local``."""
    text = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    labels = [label.strip("_-") for label in text.split(".")]
    joined = ".".join(label for label in labels if label) or "cluster"
    return joined[:253].rstrip("._-") or "cluster"


def meshlib_names(xds_names: Iterable[str]) -> dict[str, str]:
    """xDS cluster name → a meshlib cluster name (a host name), the same for the same set of names.

    Valid names stay as they are; others get every other character replaced by
    ``_`` and bad label edges trimmed; when two of those (or one and a valid
    name) would meet, each such name gets ``-`` and 8 hex digits of its hash.
    """
    names = sorted(set(xds_names))
    result = {name: name for name in names if _valid_name(name)}
    taken = set(result.values())
    groups: dict[str, list[str]] = {}
    for name in names:
        if name not in result:
            groups.setdefault(_sanitized(name), []).append(name)
    for base, members in groups.items():
        if len(members) == 1 and base not in taken:
            result[members[0]] = base
            continue
        for member in members:
            digest = hashlib.sha256(member.encode("utf-8")).hexdigest()[:8]
            result[member] = f"{base[:244].rstrip('._-')}-{digest}"
    return result


# ---------------------------------------------------------------------------------------------------- lb


def _typed_lb(policies: Any, at: At, *, locality: bool) -> tuple[str, bool] | None:
    """The first supported policy of a LoadBalancingPolicy's list: (meshlib lb, locality weighted)."""
    mods = pb()
    for i, policy in enumerate(policies):
        packed = policy.typed_extension_config.typed_config
        name = type_name(packed)
        pat = at / i / "typed_extension_config" / "typed_config"
        if name == _WRR_LOCALITY:
            wrr = unpack(packed, mods.wrr_locality.WrrLocality, pat)
            inner = _typed_lb(
                wrr.endpoint_picking_policy.policies,
                pat / "(WrrLocality)" / "endpoint_picking_policy" / "policies",
                locality=True,
            )
            if inner is not None:
                return inner
            continue
        known = _TYPED_LB.get(name)
        if known is None:
            continue
        lb, module, cls = known
        message = unpack(packed, getattr(getattr(mods, module), cls), pat)
        weighted = locality
        if message.DESCRIPTOR.fields_by_name.get("locality_lb_config") is not None:
            weighted = weighted or message.locality_lb_config.HasField("locality_weighted_lb_config")
        if message.DESCRIPTOR.fields_by_name.get("locality_weighted_lb_config") is not None:
            weighted = weighted or message.HasField("locality_weighted_lb_config")
        return lb, weighted
    return None


def _lb(cluster: Any, at: At) -> tuple[str, bool]:
    locality = cluster.common_lb_config.HasField("locality_weighted_lb_config")
    if cluster.HasField("load_balancing_policy") or cluster.lb_policy == _LB_POLICY_CONFIG:
        pat = at / "load_balancing_policy" / "policies"
        found = _typed_lb(cluster.load_balancing_policy.policies, pat, locality=False)
        if found is None:
            pat.reject(
                "no supported policy: meshlib has round_robin, least_request, random, ring_hash, maglev, wrr_locality"
            )
        return found[0], found[1] or locality
    lb = _LEGACY_LB.get(int(cluster.lb_policy))
    if lb is None:
        policy = cluster.DESCRIPTOR.fields_by_name["lb_policy"].enum_type.values_by_number[cluster.lb_policy]
        (at / "lb_policy").reject(f"{policy.name} is not supported")
    return lb, locality


# ---------------------------------------------------------------------------------------------------- TLS


def _provider_file(
    instance: Any, providers: Mapping[str, Mapping[str, Any]], keys: tuple[str, ...], at: At
) -> tuple[str, ...]:
    """The files ``keys`` of a bootstrap certificate provider instance (gRFC A29: file_watcher only)."""
    provider = providers.get(instance.instance_name)
    if provider is None:
        known = ", ".join(sorted(providers)) or "none"
        (at / "instance_name").reject(
            f"no certificate provider {instance.instance_name!r} in the bootstrap (it has {known})"
        )
    plugin = provider.get("plugin_name")
    if plugin != "file_watcher":
        (at / "instance_name").reject(f"certificate provider plugin {plugin!r} is not supported: use file_watcher")
    config = provider.get("config") or {}
    missing = [key for key in keys if not isinstance(config.get(key), str) or not config.get(key)]
    if missing:
        (at / "instance_name").reject(
            f"certificate provider {instance.instance_name!r} has no {', '.join(missing)} in its config"
        )
    return tuple(str(config[key]) for key in keys)


def _file(source: Any, at: At) -> str:
    which = source.WhichOneof("specifier")
    if which != "filename":
        at.reject(f"meshlib reads certificates from files: use filename, not {which or 'nothing'}")
    return str(source.filename)


def _validation(vc: Any, at: At, providers: Mapping[str, Mapping[str, Any]]) -> tuple[str | None, bool, list[str]]:
    """(CA file, whether some CA is trusted, expected SPIFFE IDs) of a CertificateValidationContext."""
    for name in ("verify_certificate_spki", "verify_certificate_hash"):
        if getattr(vc, name):
            (at / name).reject("certificate pinning is not supported")
    for name in ("crl", "custom_validator_config"):
        if vc.HasField(name):
            (at / name).reject("not supported")
    if vc.allow_expired_certificate:
        (at / "allow_expired_certificate").reject("meshlib never accepts an expired certificate")
    if vc.trust_chain_verification != 0:
        (at / "trust_chain_verification").reject("meshlib always verifies the chain")
    ca: str | None = None
    trusted = False
    if vc.HasField("trusted_ca"):
        ca, trusted = _file(vc.trusted_ca, at / "trusted_ca"), True
    if vc.HasField("ca_certificate_provider_instance"):
        pat = at / "ca_certificate_provider_instance"
        (ca,) = _provider_file(vc.ca_certificate_provider_instance, providers, ("ca_certificate_file",), pat)
        trusted = True
    if vc.HasField("system_root_certs"):
        trusted = True
    identities: list[str] = []
    for i, san in enumerate(vc.match_typed_subject_alt_names):
        sat = at / "match_typed_subject_alt_names" / i
        if san.san_type != _SAN_URI:
            (sat / "san_type").reject("meshlib matches URI SANs (SPIFFE IDs) only")
        identities.append(_spiffe(san.matcher, sat / "matcher"))
    for i, matcher in enumerate(vc.match_subject_alt_names):
        identities.append(_spiffe(matcher, at / "match_subject_alt_names" / i))
    return ca, trusted, identities


def _spiffe(matcher: Any, at: At) -> str:
    if matcher.WhichOneof("match_pattern") != "exact" or matcher.ignore_case:
        at.reject("meshlib matches SANs exactly (a SPIFFE ID in exact, ignore_case false)")
    try:
        parse_spiffe_id(matcher.exact)
    except ValueError as exc:
        (at / "exact").reject(f"meshlib matches SPIFFE IDs only: {exc}")
    return str(matcher.exact)


def _tls(cluster: Any, at: At, providers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    if not cluster.HasField("transport_socket"):
        return None
    tat = at / "transport_socket"
    socket = cluster.transport_socket
    if not socket.HasField("typed_config"):
        if socket.name in ("envoy.transport_sockets.raw_buffer", "raw_buffer"):
            return None
        (tat / "typed_config").reject("a transport socket needs its typed_config (an UpstreamTlsContext)")
    name = type_name(socket.typed_config)
    if name == _RAW_BUFFER:
        return None
    if name != _TLS:
        (tat / "typed_config").reject(f"transport socket {name} is not supported: only UpstreamTlsContext")
    cat = tat / "typed_config" / "(UpstreamTlsContext)"
    context = unpack(socket.typed_config, pb().tls.UpstreamTlsContext, tat / "typed_config")
    for field in ("auto_host_sni", "auto_sni_san_validation"):
        if getattr(context, field):
            (cat / field).reject("not supported: set sni")
    common = context.common_tls_context
    ccat = cat / "common_tls_context"
    if common.tls_certificate_sds_secret_configs:
        (ccat / "tls_certificate_sds_secret_configs").reject(
            "SDS is not supported: use files or a certificate provider"
        )
    for field in ("custom_tls_certificate_selector", "tls_certificate_certificate_provider", "custom_handshaker"):
        if common.HasField(field):
            (ccat / field).reject("not supported")
    cert: tuple[str, ...] | None = None
    if len(common.tls_certificates) > 1:
        (ccat / "tls_certificates").reject("meshlib presents one client certificate")
    if common.tls_certificates:
        certificate = common.tls_certificates[0]
        cert_at = ccat / "tls_certificates" / 0
        for field in ("pkcs12", "private_key_provider", "password"):
            if certificate.HasField(field):
                (cert_at / field).reject("not supported: use certificate_chain and private_key files")
        cert = (
            _file(certificate.certificate_chain, cert_at / "certificate_chain"),
            _file(certificate.private_key, cert_at / "private_key"),
        )
    for field in ("tls_certificate_provider_instance", "tls_certificate_certificate_provider_instance"):
        if common.HasField(field):
            if cert is not None:
                (ccat / field).reject("set tls_certificates or a certificate provider, not both")
            cert = _provider_file(
                getattr(common, field), providers, ("certificate_file", "private_key_file"), ccat / field
            )
    which = common.WhichOneof("validation_context_type")
    ca: str | None = None
    trusted = False
    identities: list[str] = []
    if which == "validation_context":
        ca, trusted, identities = _validation(common.validation_context, ccat / "validation_context", providers)
    elif which == "combined_validation_context":
        combined = common.combined_validation_context
        vat = ccat / "combined_validation_context"
        for field in ("validation_context_sds_secret_config", "validation_context_certificate_provider"):
            if combined.HasField(field):
                (vat / field).reject("not supported: use files or a certificate provider instance")
        ca, trusted, identities = _validation(
            combined.default_validation_context, vat / "default_validation_context", providers
        )
        if combined.HasField("validation_context_certificate_provider_instance"):
            pat = vat / "validation_context_certificate_provider_instance"
            instance = combined.validation_context_certificate_provider_instance
            (ca,) = _provider_file(instance, providers, ("ca_certificate_file",), pat)
            trusted = True
    elif which == "validation_context_certificate_provider_instance":
        pat = ccat / which
        (ca,) = _provider_file(
            common.validation_context_certificate_provider_instance, providers, ("ca_certificate_file",), pat
        )
        trusted = True
    elif which is not None:
        (ccat / which).reject("not supported: use validation_context with files or a certificate provider")
    if not trusted:
        ccat.reject(
            "no validation context: Envoy would not verify the upstream's certificate, and meshlib always does:"
            " set validation_context.trusted_ca (or a CA certificate provider, or system_root_certs)"
        )
    if cert is not None and ca is None:
        ccat.reject("a client certificate (mutual TLS) needs the CA in a file or certificate provider")
    sni = str(context.sni)
    if sni and any(c in sni for c in " /:\r\n\x00@"):
        (cat / "sni").reject(f"invalid SNI {sni!r}: a host name")
    if not sni and not identities:
        cat.reject(
            "meshlib checks the upstream certificate's name: set sni, or match_typed_subject_alt_names (SPIFFE IDs)"
        )
    tls: dict[str, Any] = {"mode": "mutual" if cert is not None else "simple"}
    if ca is not None:
        tls["ca_file"] = ca
    if cert is not None:
        tls["cert_file"], tls["key_file"] = cert
    if sni:
        tls["server_name"] = sni
    if identities:
        tls["expected_identities"] = list(dict.fromkeys(identities))
    return tls


# ---------------------------------------------------------------------------------------------------- the rest


def _circuit_breaker(cluster: Any) -> dict[str, Any]:
    """Envoy's breaker is a set of limits, not a failure counter: only max_requests (DEFAULT priority) is modelled.

    max_connections, max_pending_requests (meshlib doesn't queue), max_retries and retry_budget (Envoy's
    retry concurrency limits; meshlib's retries here have no budget) and the HIGH priority are not modelled.
    """
    limit = 1024
    for threshold in cluster.circuit_breakers.thresholds:
        if threshold.priority == 0:
            if threshold.HasField("max_requests"):
                limit = int(threshold.max_requests.value)
            break
    return {"failure_threshold": None, "max_concurrent_requests": limit}


def _outlier(cluster: Any, at: At) -> dict[str, Any] | None:
    """Consecutive 5xx ejection; success-rate and failure-percentage ejection are not modelled (ignored)."""
    if not cluster.HasField("outlier_detection"):
        return None
    od = cluster.outlier_detection
    oat = at / "outlier_detection"
    if od.split_external_local_origin_errors:
        (oat / "split_external_local_origin_errors").reject("not supported: meshlib counts connect failures as 5xx")
    if od.HasField("enforcing_consecutive_gateway_failure") and od.enforcing_consecutive_gateway_failure.value > 0:
        (oat / "enforcing_consecutive_gateway_failure").reject("gateway-failure ejection is not supported")
    enforcing = od.enforcing_consecutive_5xx.value if od.HasField("enforcing_consecutive_5xx") else 100
    consecutive = od.consecutive_5xx.value if od.HasField("consecutive_5xx") else 5
    if enforcing == 0 or consecutive == 0:
        return None
    if enforcing != 100:
        (oat / "enforcing_consecutive_5xx").reject("meshlib enforces every ejection: use 0 or 100")
    base = duration(od.base_ejection_time) if od.HasField("base_ejection_time") else 30.0
    most = duration(od.max_ejection_time) if od.HasField("max_ejection_time") else 300.0
    return {
        "consecutive_5xx": int(consecutive),
        "interval": duration_str(duration(od.interval) if od.HasField("interval") else 10.0),
        "base_ejection_time": duration_str(base),
        # Envoy: "the default (300s) or base_ejection_time, whichever is larger".
        "max_ejection_time": duration_str(max(most, base)),
        "max_ejection_percent": float(od.max_ejection_percent.value if od.HasField("max_ejection_percent") else 10),
    }


def _rejected_fields(cluster: Any, at: At) -> None:
    if cluster.transport_socket_matches:
        (at / "transport_socket_matches").reject("not supported: use transport_socket")
    for field in ("transport_socket_matcher", "upstream_config"):
        if cluster.HasField(field):
            (at / field).reject("not supported")
    if cluster.filters:
        (at / "filters").reject("upstream network filters are not supported")
    if cluster.lb_subset_config.subset_selectors:
        (at / "lb_subset_config").reject("subset load balancing is not supported")
    options = cluster.upstream_http_protocol_options
    for field in ("auto_sni", "auto_san_validation"):
        if getattr(options, field):
            (at / "upstream_http_protocol_options" / field).reject("not supported: set the TLS context's sni")


def cluster_plan(cluster: Any, providers: Mapping[str, Mapping[str, Any]]) -> ClusterPlan:
    """Translate one Cluster (Rejected for anything meshlib can't honour)."""
    at = At("Cluster", cluster.name)
    which = cluster.WhichOneof("cluster_discovery_type")
    if which == "cluster_type":
        (at / "cluster_type").reject(f"custom cluster type {cluster.cluster_type.name!r} is not supported")
    kind = int(cluster.type)
    if kind not in (_STATIC, _STRICT_DNS, _LOGICAL_DNS, _EDS):
        (at / "type").reject(f"{_TYPES.get(kind, kind)} is not supported: use EDS, STATIC, STRICT_DNS or LOGICAL_DNS")
    _rejected_fields(cluster, at)
    lb, locality = _lb(cluster, at)
    tls = _tls(cluster, at, providers)
    scheme = "https" if tls is not None else "http"
    config: dict[str, Any] = {}
    eds = None
    if kind == _EDS:
        eds = cluster.eds_cluster_config.service_name or cluster.name
        config["discovery"] = {"xds": {"cluster": cluster.name}}
    elif kind == _STATIC:
        check_assignment(cluster.load_assignment, at / "load_assignment")
        config["discovery"] = {"xds": {"cluster": cluster.name}}
    else:
        config["discovery"] = {"dns": _dns(cluster, at, scheme)}
    config["connect_timeout"] = duration_str(
        duration(cluster.connect_timeout) if cluster.HasField("connect_timeout") else 5.0
    )
    config["circuit_breaker"] = _circuit_breaker(cluster)
    outlier = _outlier(cluster, at)
    if outlier is not None:
        config["outlier_detection"] = outlier
    if tls is not None:
        config["tls"] = tls
    # health_checks are ignored, as gRPC ignores them: EDS health_status says which hosts are healthy.
    panic = cluster.common_lb_config.healthy_panic_threshold
    settings = LbSettings(
        locality_weighted=locality,
        panic_threshold=float(panic.value) if cluster.common_lb_config.HasField("healthy_panic_threshold") else 50.0,
    )
    return ClusterPlan(config, lb, kind in (_EDS, _STATIC), eds, scheme, settings)


def _dns(cluster: Any, at: At, scheme: str) -> dict[str, Any]:
    """A STRICT_DNS/LOGICAL_DNS cluster of one name → meshlib DNS discovery (all its A/AAAA records)."""
    for field in ("dns_resolution_config", "typed_dns_resolver_config"):
        if cluster.HasField(field):
            (at / field).reject("custom DNS resolvers are not supported")
    if cluster.dns_resolvers:
        (at / "dns_resolvers").reject("custom DNS resolvers are not supported")
    lat = at / "load_assignment"
    check_assignment(cluster.load_assignment, lat, dns=True)
    hosts = [
        (i, j, e.endpoint.address.socket_address)
        for i, locality in enumerate(cluster.load_assignment.endpoints)
        for j, e in enumerate(locality.lb_endpoints)
    ]
    if len(hosts) != 1:
        lat.reject(f"meshlib resolves one name per DNS cluster, this one has {len(hosts)}")
    i, j, address = hosts[0]
    name = str(address.address)
    if not re.match(r"^[A-Za-z0-9_.-]+$", name) or len(name) > 253:
        (lat / "endpoints" / i / "lb_endpoints" / j / "endpoint" / "address" / "socket_address" / "address").reject(
            f"invalid DNS name {name!r}"
        )
    dns: dict[str, Any] = {"name": name, "port": int(address.port_value), "scheme": scheme}
    if cluster.HasField("dns_refresh_rate"):
        dns["refresh"] = duration_str(duration(cluster.dns_refresh_rate))
    return dns
