"""MeshConfig → Snapshot: the only place config meets runtime types."""

from __future__ import annotations

import random

import httpx

from meshlib._config.models import ClusterConfig, MeshConfig, RouteConfig, RouteMatchConfig
from meshlib._engine.cluster_stack import CompiledCluster
from meshlib._engine.route_stack import build_route_handlers, route_filters
from meshlib._policies.split import SplitPolicy
from meshlib._snapshot.matchers import compile_match
from meshlib._snapshot.route import CompiledRoute
from meshlib._snapshot.route_table import RouteTable
from meshlib._snapshot.snapshot import Snapshot
from meshlib._upstream.endpoint import Endpoint
from meshlib._upstream.lb import build_lb
from meshlib._upstream.registry import StateRegistry

__all__ = ["compile_snapshot"]


def _compile_cluster(name: str, config: ClusterConfig, registry: StateRegistry, rng: random.Random) -> CompiledCluster:
    endpoints = tuple(
        Endpoint(e.url, e.weight, httpx.URL(e.url), registry.endpoint(name, e.url)) for e in config.endpoints
    )
    hash_on = config.hash_on
    lb = build_lb(
        config.lb,
        endpoints,
        rng,
        header=hash_on.header if hash_on else None,
        cookie=hash_on.cookie if hash_on else None,
    )
    return CompiledCluster(name, endpoints, lb, registry.cluster(name))


def _compile_route(
    config: RouteConfig,
    index: int,
    clusters: dict[str, CompiledCluster],
    rng: random.Random,
    *,
    implicit: bool = False,
) -> CompiledRoute:
    filters = route_filters(config)
    split = None if config.direct_response is not None else SplitPolicy.from_route(config, rng)
    handle, handle_async = build_route_handlers(config, filters, clusters, split)
    return CompiledRoute(
        name=config.name or f"route-{index}",
        index=index,
        host=config.match.host,
        predicates=compile_match(config.match),
        filters=filters,
        clusters=split.clusters if split else (),
        handle=handle,
        handle_async=handle_async,
        implicit=implicit,
    )


def compile_snapshot(
    config: MeshConfig,
    registry: StateRegistry,
    *,
    rng: random.Random | None = None,
    version: int = 1,
) -> Snapshot:
    """Compile ``config`` against the live state in ``registry``.

    Every cluster is also reachable by its own name as host, through an
    implicit route placed after the configured ones (so a configured route for
    that host wins).
    """
    rng = rng or random.Random()
    clusters = {name: _compile_cluster(name, c, registry, rng) for name, c in config.clusters.items()}
    routes = [_compile_route(r, i, clusters, rng) for i, r in enumerate(config.routes)]
    for name in config.clusters:
        implicit = RouteConfig(name=f"cluster:{name}", match=RouteMatchConfig(host=name.lower()), cluster=name)
        routes.append(_compile_route(implicit, len(routes), clusters, rng, implicit=True))
    registry.retain((name, e.url) for name, c in clusters.items() for e in c.endpoints)
    return Snapshot(
        config=config,
        version=version,
        routes=RouteTable(routes),
        clusters=clusters,
        passthrough=config.outbound_policy == "allow_any",
    )
