"""Route policies: RetryPolicy → meshlib ``retry``, mirrors, hash policies, and Envoy's hedging (refused)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshlib._xds.translate_common import At, duration, duration_str, fraction_percent, type_name

__all__ = ["check_hedge", "hash_on", "mirror", "mirror_clusters", "retry"]

_PREVIOUS_HOSTS = (
    "envoy.retry_host_predicates.previous_hosts",
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
)

# retry_on condition → meshlib's retry_on. Envoy's 5xx/gateway-error also cover a try that never answered (connect
# failure, reset, per-try timeout); reset covers the per-try timeout too ("read timeout"). reset-before-request
# is a failure before the request went out: meshlib's connect-failure, which retries any method, is that.
# refused-stream is HTTP/2's REFUSED_STREAM, and the gRPC status conditions need gRPC: neither can happen on the
# HTTP/1.1 upstreams meshlib talks to, so they add nothing (Envoy wouldn't retry a reset for them either).
_RETRY_ON: dict[str, tuple[str, ...]] = {
    "5xx": ("5xx", "connect-failure", "reset", "per-try-timeout"),
    "gateway-error": ("gateway-error", "connect-failure", "reset", "per-try-timeout"),
    "reset": ("reset", "per-try-timeout"),
    "connect-failure": ("connect-failure",),
    "reset-before-request": ("connect-failure",),
    "retriable-status-codes": ("retriable-status-codes",),
    "retriable-4xx": ("retriable-status-codes",),
    "refused-stream": (),
    "cancelled": (),
    "deadline-exceeded": (),
    "internal": (),
    "resource-exhausted": (),
    "unavailable": (),
}
_RETRY_REJECTED = ("retriable-headers", "envoy-ratelimited", "http3-post-connect-failure")


def check_hedge(message: Any, at: At) -> None:
    """Rejected for a hedge_policy that would hedge (Envoy's hedging isn't meshlib's ``hedge``)."""
    if not message.HasField("hedge_policy"):
        return
    hedge = message.hedge_policy
    if (
        (hedge.HasField("initial_requests") and hedge.initial_requests.value > 1)
        or hedge.additional_request_chance.numerator > 0
        or hedge.hedge_on_per_try_timeout
    ):
        (at / "hedge_policy").reject("Envoy's hedging is not supported")


def retry(policy: Any, at: At) -> dict[str, Any] | None:
    """A RetryPolicy → meshlib ``retry``; None when it retries nothing.

    Envoy retries any method; meshlib retries idempotent ones plus ``methods`` (POST, PATCH). Envoy bounds
    retries by concurrency (max_retries, 3 by default), not by a budget of recent requests: no budget here.
    """
    for name in ("retry_priority", "rate_limited_retry_back_off"):
        if policy.HasField(name):
            (at / name).reject("not supported")
    for name in ("retriable_headers", "retriable_request_headers", "retry_options_predicates"):
        if getattr(policy, name):
            (at / name).reject("not supported")
    for i, predicate in enumerate(policy.retry_host_predicate):
        # meshlib never sends a retry to an endpoint this request already tried: that is previous_hosts.
        kind = type_name(predicate.typed_config) if predicate.HasField("typed_config") else predicate.name
        if kind not in _PREVIOUS_HOSTS and predicate.name not in _PREVIOUS_HOSTS:
            (at / "retry_host_predicate" / i).reject(f"retry host predicate {predicate.name!r} is not supported")
    conditions: list[str] = []
    codes: list[int] = []
    for token in str(policy.retry_on).split(","):
        token = token.strip()
        if not token:
            continue
        if token in _RETRY_REJECTED:
            (at / "retry_on").reject(f"retry condition {token!r} is not supported")
        # Envoy accepts and ignores a condition it doesn't know.
        conditions.extend(_RETRY_ON.get(token, ()))
        if token == "retriable-4xx":
            codes.append(409)
        elif token == "retriable-status-codes":
            codes.extend(int(c) for c in policy.retriable_status_codes if 100 <= c <= 599)
    if not codes and "retriable-status-codes" in conditions:
        conditions = [c for c in conditions if c != "retriable-status-codes"]  # no code to retry
    conditions = list(dict.fromkeys(conditions))
    attempts = (int(policy.num_retries.value) if policy.HasField("num_retries") else 1) + 1
    if not conditions or attempts == 1:
        return None
    retry: dict[str, Any] = {
        "attempts": attempts,
        "retry_on": conditions,
        "budget": None,
        "methods": ["POST", "PATCH"],
    }
    if codes:
        retry["retriable_status_codes"] = sorted(set(codes))
    if policy.HasField("per_try_timeout") and duration(policy.per_try_timeout) > 0:
        retry["per_try_timeout"] = duration_str(duration(policy.per_try_timeout))
    back_off = policy.retry_back_off
    base = duration(back_off.base_interval) if back_off.HasField("base_interval") else 0.025
    most = duration(back_off.max_interval) if back_off.HasField("max_interval") else 10 * base
    if most < base:
        (at / "retry_back_off" / "max_interval").reject("must be at least base_interval (Envoy refuses it too)")
    retry["backoff"] = {"base": duration_str(base), "max": duration_str(most)}
    return retry


def mirror(
    action: Any, at: At, vhost: Any, vat: At, rc: Any, rc_at: At, cluster_name: Callable[[str], str]
) -> dict[str, Any] | None:
    """The route's mirror policies, else the virtual host's, else the route configuration's (one at most)."""
    for message, mat in ((action, at), (vhost, vat), (rc, rc_at)):
        policies = message.request_mirror_policies
        if not policies:
            continue
        pat = mat / "request_mirror_policies"
        if len(policies) > 1:
            pat.reject("meshlib mirrors to one cluster")
        policy = policies[0]
        pat = pat / 0
        if policy.cluster_header:
            (pat / "cluster_header").reject("not supported: name the cluster")
        if policy.request_headers_mutations:
            (pat / "request_headers_mutations").reject("not supported")
        if policy.host_rewrite_literal:
            (pat / "host_rewrite_literal").reject("not supported")
        mirror: dict[str, Any] = {"cluster": cluster_name(policy.cluster)}
        if policy.HasField("runtime_fraction"):
            mirror["percent"] = fraction_percent(policy.runtime_fraction.default_value)
        return mirror
    return None


def hash_on(action: Any, at: At) -> dict[str, str] | None:
    """The first header or cookie hash policy (what meshlib's ring_hash hashes), checked."""
    found: dict[str, str] | None = None
    for i, policy in enumerate(action.hash_policy):
        pat = at / "hash_policy" / i
        which = policy.WhichOneof("policy_specifier")
        if which == "header":
            if policy.header.HasField("regex_rewrite"):
                (pat / "header" / "regex_rewrite").reject("not supported")
            name = str(policy.header.header_name).lower()
            if name.startswith(":"):
                (pat / "header" / "header_name").reject("hashing a pseudo-header is not supported")
            found = found or {"header": name}
        elif which == "cookie":
            if policy.cookie.HasField("ttl"):
                (pat / "cookie" / "ttl").reject("meshlib doesn't generate cookies: leave ttl unset")
            found = found or {"cookie": str(policy.cookie.name)}
    return found


def mirror_clusters(rc: Any) -> set[str]:
    """The clusters a route configuration mirrors to."""
    names = {str(p.cluster) for p in rc.request_mirror_policies if p.cluster}
    for vhost in rc.virtual_hosts:
        names |= {str(p.cluster) for p in vhost.request_mirror_policies if p.cluster}
        for route in vhost.routes:
            names |= {str(p.cluster) for p in route.route.request_mirror_policies if p.cluster}
    return names
