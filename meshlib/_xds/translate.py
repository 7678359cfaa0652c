"""Accepted xDS resources → a meshlib config, with Envoy's semantics (gRPC's proxyless clients' chain).

Listener (named by the authority the app calls) → its RouteConfiguration (RDS
or inline) → the Clusters its routes send to → their ClusterLoadAssignments.
Only the resources' policies apply, as in Envoy: no meshlib default retries,
Envoy's 15 s route timeout, breakers that are limits only.

* ``check_*`` run on each resource of a response before it is accepted and
  raise :class:`Rejected` for anything meshlib can't honour, naming the field;
* :func:`translate` turns the whole accepted state into a :class:`Translation`.
  What hasn't arrived yet translates to what Envoy does meanwhile: a listener
  without its route configuration answers 404 (Envoy's NR); a route to an
  unknown cluster, or a cluster without its assignment, reaches no endpoint
  (503 no healthy upstream).

The modules beside this one do the parts: ``translate_listeners`` (listeners,
their filters, the virtual host Envoy picks), ``translate_routes`` (routes,
actions, faults), ``translate_match`` (matches, header edits),
``translate_policies`` (retries, mirrors, hash policies),
``translate_clusters`` (clusters, TLS, names), ``translate_endpoints``
(Envoy's priority, health and locality shares), and ``translate_features``
(``FEATURES``: which field is honoured, ignored or rejected, for the docs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshlib._xds.translate_clusters import cluster_plan, meshlib_names
from meshlib._xds.translate_common import At, Rejected, pb, type_name
from meshlib._xds.translate_endpoints import check_assignment, weighted_endpoints
from meshlib._xds.translate_features import FEATURES
from meshlib._xds.translate_listeners import check_route_config, listener_plan, routes_for
from meshlib._xds.translate_policies import mirror_clusters
from meshlib._xds.translate_routes import RouteContext

__all__ = [
    "FEATURES",
    "Rejected",
    "Translation",
    "check_cluster",
    "check_listener",
    "check_load_assignment",
    "check_route_configuration",
    "eds_name",
    "referenced_clusters",
    "route_config_name",
    "translate",
]

_EDS = 3


@dataclass(frozen=True)
class Translation:
    """A meshlib config from xDS, and the endpoints of its clusters with ``discovery: {xds: ...}``."""

    config: dict[str, Any]  # {"clusters": {...}, "routes": [...]}, for MeshConfig.from_dict with the file's keys
    endpoints: dict[str, tuple[tuple[str, int], ...]]  # meshlib cluster name -> ((url, weight), ...)
    cluster_names: dict[str, str]  # xDS cluster name -> meshlib cluster name


def check_listener(listener: Any) -> None:
    """Rejected for anything of a Listener (and its inline route configuration) meshlib can't honour."""
    listener_plan(listener)


def check_route_configuration(rc: Any) -> None:
    """Rejected for anything of a RouteConfiguration meshlib can't honour."""
    check_route_config(rc, At("RouteConfiguration", rc.name))


def check_cluster(cluster: Any, certificate_providers: Mapping[str, Mapping[str, Any]]) -> None:
    """Rejected for anything of a Cluster meshlib can't honour (``certificate_providers``: the bootstrap's)."""
    cluster_plan(cluster, certificate_providers)


def check_load_assignment(cla: Any) -> None:
    """Rejected for endpoints meshlib can't use."""
    check_assignment(cla, At("ClusterLoadAssignment", cla.cluster_name))


def _hcm(listener: Any) -> Any:
    hcm = pb().hcm.HttpConnectionManager()
    packed = listener.api_listener.api_listener
    if type_name(packed) != hcm.DESCRIPTOR.full_name or not packed.Unpack(hcm):
        return None
    return hcm


def route_config_name(listener: Any) -> str | None:
    """The RDS name of a listener's route configuration; None when it is inline (or there is none)."""
    hcm = _hcm(listener)
    if hcm is None or hcm.WhichOneof("route_specifier") != "rds":
        return None
    return str(hcm.rds.route_config_name)


def referenced_clusters(rc: Any) -> set[str]:
    """The xDS clusters a RouteConfiguration sends to: route clusters, weighted legs and mirrors."""
    names: set[str] = set()
    for vhost in rc.virtual_hosts:
        for route in vhost.routes:
            if route.WhichOneof("action") != "route":
                continue
            action = route.route
            which = action.WhichOneof("cluster_specifier")
            if which == "cluster":
                names.add(str(action.cluster))
            elif which == "weighted_clusters":
                names |= {str(leg.name) for leg in action.weighted_clusters.clusters if leg.name}
    return (names | mirror_clusters(rc)) - {""}


def eds_name(cluster: Any) -> str | None:
    """The ClusterLoadAssignment an EDS cluster needs (service_name, else its name); None for other types."""
    if cluster.WhichOneof("cluster_discovery_type") != "type" or cluster.type != _EDS:
        return None
    return str(cluster.eds_cluster_config.service_name or cluster.name)


def translate(
    listeners: Mapping[str, Any],
    route_configs: Mapping[str, Any],
    clusters: Mapping[str, Any],
    assignments: Mapping[str, Any],
    *,
    certificate_providers: Mapping[str, Mapping[str, Any]] = {},
) -> Translation:
    """The meshlib config of the accepted xDS state (Rejected for anything meshlib can't honour)."""
    plans = {name: listener_plan(listener) for name, listener in sorted(listeners.items())}
    chosen: dict[str, tuple[Any, At]] = {}
    for name, plan in plans.items():
        if plan.inline is not None:
            chosen[name] = (plan.inline, plan.inline_at)
        elif plan.rds is not None and plan.rds in route_configs:
            chosen[name] = (route_configs[plan.rds], At("RouteConfiguration", plan.rds))
    wanted = set(clusters)
    for rc, _ in chosen.values():
        wanted |= referenced_clusters(rc)
    names = meshlib_names(wanted)
    routes: list[dict[str, Any]] = []
    hash_on: dict[str, dict[str, str]] = {}
    for name, plan in plans.items():
        rc, rc_at = chosen.get(name, (None, At("RouteConfiguration", plan.rds or "")))
        context = RouteContext(name, plan.authority, plan.fault, plan.max_stream_duration, names.__getitem__)
        routes.extend(routes_for(plan, rc, rc_at, context))
        for cluster_name, policy in context.hash_on.items():
            hash_on.setdefault(cluster_name, policy)
    configs: dict[str, dict[str, Any]] = {}
    endpoints: dict[str, tuple[tuple[str, int], ...]] = {}
    for xds_name in sorted(wanted):
        mesh_name = names[xds_name]
        cluster = clusters.get(xds_name)
        if cluster is None:  # not known (yet): a cluster with no endpoints, as Envoy's 503
            configs[mesh_name] = {"discovery": {"xds": {"cluster": xds_name}}}
            endpoints[mesh_name] = ()
            continue
        plan_ = cluster_plan(cluster, certificate_providers)
        config = dict(plan_.config)
        lb = plan_.lb
        if lb == "ring_hash":
            key = hash_on.get(xds_name)
            if key is None:
                lb = "random"  # Envoy hashes a request without a hash key randomly
            else:
                config["hash_on"] = key
        config["lb"] = lb
        if plan_.xds_endpoints:
            cla = assignments.get(plan_.eds_name) if plan_.eds_name is not None else cluster.load_assignment
            endpoints[mesh_name] = weighted_endpoints(cla, plan_.scheme, plan_.settings) if cla is not None else ()
        configs[mesh_name] = config
    return Translation({"clusters": configs, "routes": routes}, endpoints, names)
