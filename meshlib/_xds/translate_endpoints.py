"""ClusterLoadAssignments (and STATIC clusters' ``load_assignment``) → weighted endpoint URLs.

meshlib balances over one weighted list, so the share of traffic Envoy's load
balancer would give each host is worked out here, from the EDS health
statuses, as Envoy's ``LoadBalancerBase`` and ``HostSetImpl`` do it:

* a host is healthy (UNKNOWN, HEALTHY), degraded (DEGRADED), unhealthy
  (UNHEALTHY, TIMEOUT) or excluded (DRAINING: left out of every ratio's
  denominator, as Envoy does with ``exclude_host_in_eds_status_draining``);
* each priority's healthy and degraded availability is
  ``min(100, overprovisioning_factor × eligible / hosts)`` (integer percent;
  factor 140 unless the CLA's policy says otherwise, host weights instead of
  counts with ``weighted_priority_health``), and the 100% of load is spread
  over priorities by healthy availability first, then degraded, normalised by
  the total availability: so P1 takes traffic only as P0 falls below 100/1.4 ≈
  71% healthy (priority spillover);
* a priority whose healthy + degraded share of hosts is below the cluster's
  ``healthy_panic_threshold`` (50% by default, 0 disables panic) is in panic
  when the total availability is under 100%: it sends its load to all its
  hosts, healthy or not; when every priority is in panic, load goes to each
  priority by its share of all hosts (total panic);
* with locality weighting (``locality_weighted_lb_config``, or a
  ``wrr_locality`` policy), a locality's share is its
  ``load_balancing_weight`` × ``min(1, factor × eligible / hosts)``, a
  locality without a weight gets nothing, and if no locality gets anything
  the priority's eligible hosts are used as if unweighted (Envoy drops the
  locality scheduler then); without it the localities of a priority are one pool;
* within a pool, hosts share by ``load_balancing_weight`` (default 1).

Spillover, panic, DRAINING, degraded shares and locality weights were
checked against Envoy 1.40 fed the same assignments. The resulting shares
are exact fractions, turned into the smallest integer
weights with the same ratios (scaled to about 10,000 in all when they don't
fit; meshlib's weighted round robin works on one such cycle). When a single
pool of one priority takes all traffic the hosts' own weights are kept as
they are. Hosts that end up with no share are left out; the same address
twice is one endpoint with the weights summed. This is a snapshot: Envoy
also moves load as outlier detection ejects hosts, which meshlib's outlier
detection does on its own within the list.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from functools import reduce
from typing import Any

from meshlib._xds.translate_common import At

__all__ = ["LbSettings", "check_assignment", "weighted_endpoints"]

# HealthStatus: UNKNOWN 0, HEALTHY 1, UNHEALTHY 2, DRAINING 3, TIMEOUT 4, DEGRADED 5.
_HEALTHY, _DEGRADED, _UNHEALTHY, _EXCLUDED = "healthy", "degraded", "unhealthy", "excluded"
_STATE = {0: _HEALTHY, 1: _HEALTHY, 2: _UNHEALTHY, 3: _EXCLUDED, 4: _UNHEALTHY, 5: _DEGRADED}
_TOTAL_WEIGHT = 10_000


@dataclass(frozen=True)
class LbSettings:
    """What the Cluster says about balancing its endpoints."""

    locality_weighted: bool = False
    panic_threshold: float = 50.0  # percent; 0 disables panic mode


@dataclass(frozen=True)
class _Host:
    url: str
    weight: int
    state: str
    locality: int  # index of its LocalityLbEndpoints in the assignment
    index: int  # its place in the assignment: two entries of one address stay two hosts until merged


def _url(socket_address: Any, scheme: str) -> str:
    address = ipaddress.ip_address(socket_address.address)
    host = f"[{address.compressed}]" if address.version == 6 else address.compressed
    return f"{scheme}://{host}:{int(socket_address.port_value)}"


def check_assignment(cla: Any, at: At, *, dns: bool = False) -> None:
    """Rejected for endpoints meshlib can't reach: not IP:port over TCP, named endpoints, LEDS, drops.

    ``dns``: the load_assignment of a STRICT_DNS/LOGICAL_DNS cluster, whose addresses are names.
    """
    if cla.named_endpoints:
        (at / "named_endpoints").reject("named endpoints are not supported")
    policy = cla.policy
    for i, drop in enumerate(policy.drop_overloads):
        if drop.drop_percentage.numerator > 0:
            (at / "policy" / "drop_overloads" / i).reject("dropping requests (drop_overloads) is not supported")
    for i, locality in enumerate(cla.endpoints):
        lat = at / "endpoints" / i
        if locality.HasField("leds_cluster_locality_config"):
            (lat / "leds_cluster_locality_config").reject("LEDS is not supported: list lb_endpoints")
        for j, lb_endpoint in enumerate(locality.lb_endpoints):
            eat = lat / "lb_endpoints" / j
            if lb_endpoint.HasField("endpoint_name"):
                (eat / "endpoint_name").reject("named endpoints are not supported")
            address = lb_endpoint.endpoint.address
            aat = eat / "endpoint" / "address"
            if not address.HasField("socket_address"):
                kind = address.WhichOneof("address") or "no address"
                aat.reject(f"meshlib connects to socket_address (IP and port) only, not {kind}")
            sat = aat / "socket_address"
            sa = address.socket_address
            if sa.protocol != 0:
                (sat / "protocol").reject("only TCP")
            if sa.HasField("named_port"):
                (sat / "named_port").reject("named ports are not supported: use port_value")
            if sa.resolver_name:
                (sat / "resolver_name").reject("custom resolvers are not supported")
            if not 1 <= sa.port_value <= 65535:
                (sat / "port_value").reject(f"port {sa.port_value} is not 1 to 65535")
            if not dns:
                try:
                    ipaddress.ip_address(sa.address)
                except ValueError:
                    (sat / "address").reject(f"{sa.address!r} is not an IP address (Envoy needs one here too)")


def _hosts(cla: Any, scheme: str) -> dict[int, list[_Host]]:
    by_priority: dict[int, list[_Host]] = {}
    count = 0
    for i, locality in enumerate(cla.endpoints):
        for lb_endpoint in locality.lb_endpoints:
            weight = lb_endpoint.load_balancing_weight.value if lb_endpoint.HasField("load_balancing_weight") else 1
            host = _Host(
                _url(lb_endpoint.endpoint.address.socket_address, scheme),
                max(1, int(weight)),
                _STATE.get(int(lb_endpoint.health_status), _UNHEALTHY),
                i,
                count,
            )
            count += 1
            by_priority.setdefault(int(locality.priority), []).append(host)
    return by_priority


def _availability(hosts: list[_Host], state: str, factor: int, weighted: bool) -> int:
    """Envoy's integer percent availability of ``state`` hosts in one priority."""
    counted = [h for h in hosts if h.state != _EXCLUDED]
    total = sum(h.weight for h in counted) if weighted else len(counted)
    if total == 0:
        return 0
    eligible = [h for h in counted if h.state == state]
    amount = sum(h.weight for h in eligible) if weighted else len(eligible)
    return min(100, factor * amount // total)


def _distribute(availability: list[int], load: int, normalized: int) -> tuple[list[int], int]:
    loads = []
    for available in availability:
        share = min(load, available * 100 // normalized)
        loads.append(share)
        load -= share
    return loads, load


def _in_panic(hosts: list[_Host], threshold: float) -> bool:
    counted = [h for h in hosts if h.state != _EXCLUDED]
    if not counted:
        return threshold > 0
    usable = sum(1 for h in counted if h.state in (_HEALTHY, _DEGRADED))
    return 100.0 * usable / len(counted) < threshold


def _pool_shares(
    hosts: list[_Host], state: str | None, cla: Any, settings: LbSettings, factor: int
) -> dict[_Host, Fraction]:
    """Each host's share of a priority's load sent to ``state`` hosts (None: all hosts, as in panic)."""
    eligible = [h for h in hosts if state is None or h.state == state]
    if settings.locality_weighted and state is not None:
        weights: dict[int, Fraction] = {}
        for index in sorted({h.locality for h in hosts}):
            locality = cla.endpoints[index]
            members = [h for h in hosts if h.locality == index and h.state != _EXCLUDED]
            chosen = [h for h in eligible if h.locality == index]
            weight = locality.load_balancing_weight.value if locality.HasField("load_balancing_weight") else 0
            if members and chosen and weight:
                ratio = min(Fraction(1), Fraction(factor, 100) * Fraction(len(chosen), len(members)))
                weights[index] = weight * ratio
        total = sum(weights.values(), Fraction(0))
        if total > 0:
            shares: dict[_Host, Fraction] = {}
            for index, weight in weights.items():
                chosen = [h for h in eligible if h.locality == index]
                in_locality = sum(h.weight for h in chosen)
                for h in chosen:
                    shares[h] = weight / total * Fraction(h.weight, in_locality)
            return shares
    pool_weight = sum(h.weight for h in eligible)
    return {h: Fraction(h.weight, pool_weight) for h in eligible} if pool_weight else {}


def _integers(values: list[Fraction]) -> list[int]:
    """The smallest positive integers in the ratios of ``values``, or a ~10,000 total rounding of them."""
    lcm = reduce(math.lcm, (v.denominator for v in values), 1)
    ints = [int(v * lcm) for v in values]
    divisor = reduce(math.gcd, ints)
    ints = [i // divisor for i in ints]
    total = sum(ints)
    if total > _TOTAL_WEIGHT:
        ints = [max(1, round(i * _TOTAL_WEIGHT / total)) for i in ints]
    return ints


def _merge(pairs: Iterable[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    merged: dict[str, int] = {}
    for url, weight in pairs:
        merged[url] = merged.get(url, 0) + weight
    return tuple(merged.items())


def weighted_endpoints(cla: Any, scheme: str, settings: LbSettings) -> tuple[tuple[str, int], ...]:
    """``((url, weight), ...)``: the hosts Envoy would send to, weighted by the share it would give each."""
    by_priority = _hosts(cla, scheme)
    if not by_priority:
        return ()
    policy = cla.policy
    factor = int(policy.overprovisioning_factor.value) if policy.HasField("overprovisioning_factor") else 140
    weighted = bool(policy.weighted_priority_health)
    levels = [by_priority.get(p, []) for p in range(max(by_priority) + 1)]
    healthy = [_availability(hosts, _HEALTHY, factor, weighted) for hosts in levels]
    degraded = [_availability(hosts, _DEGRADED, factor, weighted) for hosts in levels]
    normalized = min(100, sum(healthy) + sum(degraded))
    threshold = settings.panic_threshold
    if normalized == 0 and threshold == 0:
        return ()  # no host is available and panic is off: Envoy answers 503
    panic = [False if normalized == 100 else _in_panic(hosts, threshold) for hosts in levels]
    # (load, priority, which hosts): which hosts is a state, or None for all of them.
    pools: list[tuple[int, int, str | None]] = []
    which: str | None
    if all(panic):
        total_hosts = sum(len(hosts) for hosts in levels)
        loads = [100 * len(hosts) // total_hosts for hosts in levels]
        first = next(p for p, hosts in enumerate(levels) if hosts)
        loads[first] += 100 - sum(loads)
        pools = [(load, p, None) for p, load in enumerate(loads) if load]
    else:
        healthy_loads, left = _distribute(healthy, 100, normalized)
        degraded_loads, left = _distribute(degraded, left, normalized)
        if left:
            first_healthy = next((p for p, a in enumerate(healthy) if a > 0), None)
            if first_healthy is not None:
                healthy_loads[first_healthy] += left
            else:
                degraded_loads[next(p for p, a in enumerate(degraded) if a > 0)] += left
        for p in range(len(levels)):
            for load, which in ((healthy_loads[p], _HEALTHY), (degraded_loads[p], _DEGRADED)):
                if load:
                    pools.append((load, p, None if panic[p] else which))
    if len(pools) == 1 and not (settings.locality_weighted and pools[0][2] is not None):
        _, p, which = pools[0]
        return _merge((h.url, h.weight) for h in levels[p] if which is None or h.state == which)
    shares: dict[_Host, Fraction] = {}
    for load, p, which in pools:
        for host, share in _pool_shares(levels[p], which, cla, settings, factor).items():
            shares[host] = shares.get(host, Fraction(0)) + load * share
    chosen = [(h, s) for h, s in shares.items() if s > 0]
    if not chosen:
        return ()
    weights = _integers([s for _, s in chosen])
    return _merge((h.url, w) for (h, _), w in zip(chosen, weights, strict=True))
