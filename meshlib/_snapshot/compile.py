"""MeshConfig → Snapshot: the only place config meets runtime types.

Live state comes from the registry, so it survives reloads; filters and
handlers are built fresh for every snapshot.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshlib._background import Background
from meshlib._clock import Clock, SystemClock
from meshlib._config.hosts import authority_host
from meshlib._config.models import ClusterConfig, MeshConfig, RouteConfig, RouteMatchConfig
from meshlib._config.resilience import RetryBudgetConfig
from meshlib._config.security import InboundConfig
from meshlib._engine.cluster_stack import CompiledCluster, Leg, build_leg
from meshlib._engine.inbound_context import InboundFilter
from meshlib._engine.inbound_stack import InboundStack, build_inbound_stack
from meshlib._engine.outbound import LateRoutes
from meshlib._engine.route_stack import build_route_stack
from meshlib._engine.timeouts import TryTimeouts
from meshlib._errors import ConfigError
from meshlib._hooks import Hooks
from meshlib._observe.registry import ObserverRegistry
from meshlib._policies.authz import AuthzFilter, IpMatch, compile_policies
from meshlib._policies.direct_response import DirectResponsePolicy
from meshlib._policies.fault import FaultFilter
from meshlib._policies.headers import HeadersFilter
from meshlib._policies.hedge import HedgeFilter, SlowShare
from meshlib._policies.mirror import MirrorFilter
from meshlib._policies.path_normalize import NormalizeFilter
from meshlib._policies.peer_authn import PeerAuthnFilter
from meshlib._policies.retry import RetryFilter, RetryPolicy
from meshlib._policies.retry_budget import RetryBudget
from meshlib._policies.rewrite import RewriteFilter, RewritePolicy
from meshlib._policies.split import SplitPolicy
from meshlib._policies.storage import StorageRegistry
from meshlib._policies.timeout import DeadlineFilter, PerTryTimeoutFilter
from meshlib._snapshot.matchers import compile_match, path_literal
from meshlib._snapshot.route import CompiledRoute
from meshlib._snapshot.route_table import RouteTable
from meshlib._snapshot.snapshot import Snapshot
from meshlib._upstream.health import HealthChecker
from meshlib._upstream.lb import build_lb
from meshlib._upstream.outlier import OutlierDetector, OutlierFilter
from meshlib._upstream.registry import StateRegistry

# A discovered endpoint: its URL (weight 1), or (URL, weight) as xDS gives them.
Discovered = str | tuple[str, int]

if TYPE_CHECKING:
    from meshlib._policies.jwks import FileJwks, RemoteJwks, StaticJwks
    from meshlib._tls.cluster import ClusterTls

__all__ = ["Runtime", "compile_snapshot"]


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a mesh lends every snapshot it compiles: state, clock, randomness, background work, the user's hooks."""

    registry: StateRegistry
    clock: Clock
    rng: random.Random
    background: Background
    storages: StorageRegistry
    hooks: Hooks
    observers: ObserverRegistry

    @classmethod
    def create(
        cls, *, clock: Clock | None = None, rng: random.Random | None = None, hooks: Hooks | None = None
    ) -> Runtime:
        return cls(
            StateRegistry(),
            clock or SystemClock(),
            rng or random.Random(),
            Background(),
            StorageRegistry(),
            hooks or Hooks(),
            ObserverRegistry(),
        )


def _compile_cluster(
    name: str, config: ClusterConfig, rt: Runtime, tls: ClusterTls | None, discovered: Sequence[Discovered]
) -> CompiledCluster:
    if config.discovery is None:
        given = [(e.url, e.weight) for e in config.endpoints]
    else:  # a URL, or (URL, weight) from xDS
        given = [(d, 1) if isinstance(d, str) else d for d in discovered]
    endpoints = rt.registry.endpoints(name, given)
    hash_on = config.hash_on
    lb = build_lb(
        config.lb,
        endpoints,
        rt.rng,
        header=hash_on.header if hash_on else None,
        cookie=hash_on.cookie if hash_on else None,
    )
    state = rt.registry.cluster(name)
    health = config.health_check
    if health is not None:
        # Keyed by the endpoint set and tls too: a reload that changes either starts a new prober.
        identity = (health, tuple(e.url for e in endpoints), config.tls)
        rt.registry.component(
            "health_check",
            name,
            identity,
            lambda: HealthChecker(health, state, endpoints, rt.clock, tls=tls),
            start=HealthChecker.start,  # once the whole snapshot compiled
        )
    checks_health = config.outlier_detection is not None or health is not None
    return CompiledCluster(name, endpoints, lb, state, rt.clock, checks_health, tls)


def _compile_tls(config: MeshConfig, rt: Runtime) -> dict[str, ClusterTls]:
    """The clusters' live TLS (certificate files read now; a ConfigError names every bad one) and inbound mTLS's."""
    inbound = config.inbound.mtls if config.inbound is not None else None
    if all(c.tls is None or c.tls.mode == "disable" for c in config.clusters.values()) and (
        inbound is None or inbound.mode == "disable"
    ):
        return {}
    # Imported here: cryptography loads only for a mesh with TLS.
    from meshlib._tls.cluster import compile_tls

    return compile_tls(config, rt.registry)[0]


_NO_OVERRIDES = RouteConfig(cluster="-")


def _leg(route: RouteConfig, route_name: str, cluster: CompiledCluster, config: ClusterConfig, rt: Runtime) -> Leg:
    """The filters of one route's way into one cluster; the route's keys override the cluster's.

    Each policy is made here; where it goes in the leg is cluster_stack.build_leg's.
    """
    state = cluster.state
    timeout = route.timeout if route.timeout is not None else config.timeout
    # A route's retry replaces the cluster's, but may take its retriable_status_codes (RetryConfig.inheriting_codes).
    retry = route.retry.inheriting_codes(config.retry) if route.retry is not None else config.retry
    rate_limit = route.rate_limit or config.rate_limit
    hedge = route.hedge or config.hedge
    deadline_filter = rate_limit_filter = retry_filter = hedge_filter = breaker_filter = None
    outlier_filter = per_try_filter = None

    if timeout is not None:
        deadline_filter = DeadlineFilter(timeout, rt.clock)
    if rate_limit is not None:
        # Imported here: limits (and redis) load only for a mesh that limits rates.
        from meshlib._policies import rate_limit as rate_limit_module

        key = f"route:{route_name}" if route.rate_limit else f"cluster:{cluster.name}"
        limiter = rt.registry.component(
            "rate_limit", key, rate_limit, lambda: rate_limit_module.RateLimiter(rate_limit, key, rt.storages)
        )
        rate_limit_filter = rate_limit_module.RateLimitFilter(limiter, state)
    retries = retry is not None and retry.attempts > 1
    # Hedges spend the retry budget too (gRFC A6; Envoy's retry_budget counts hedges). With hedging and no
    # retry configured, the default budget bounds them, so that hedging cannot double an overloaded upstream's load.
    budget_config = retry.budget if retry is not None else RetryBudgetConfig()
    budget = None
    if budget_config is not None and (retries or hedge is not None):
        budget_key = (cluster.name, route_name if route.retry else None)
        owner = f"cluster {cluster.name!r}" + (f" (route {route_name!r})" if route.retry else "")
        budget = rt.registry.component(
            "retry_budget", budget_key, budget_config, lambda: RetryBudget(budget_config, rt.clock, owner)
        )
    if retry is not None and retries:
        retry_filter = RetryFilter(RetryPolicy.from_config(retry, rt.rng), budget, rt.clock, state, rt.hooks)
    # The retry filter counts each request in the budget once; without one, the hedge filter does.
    if hedge is not None:
        # The overload guard's estimate: per cluster, and per route with its own hedge (its `after` defines slow).
        load_key = (cluster.name, route_name if route.hedge else None)
        load = rt.registry.component("hedge_load", load_key, hedge.after, SlowShare)
        endpoints = tuple(e.url for e in cluster.endpoints)
        hedge_filter = HedgeFilter(
            hedge, state, rt.background, budget, deposits=not retries, load=load, endpoints=endpoints
        )
    if config.circuit_breaker is not None:
        # Imported here: pybreaker imports redis when it is installed, about 20 MB a mesh without breakers saves.
        from meshlib._policies import circuit_breaker as breaker_module

        breaker_config = config.circuit_breaker
        breaker = rt.registry.component(
            "circuit_breaker",
            cluster.name,
            breaker_config,
            lambda: breaker_module.BreakerState(breaker_config, state, rt.clock, listeners=rt.hooks.breaker_listeners),
        )
        breaker_filter = breaker_module.CircuitBreakerFilter(breaker)
    if config.outlier_detection is not None:
        outlier_config = config.outlier_detection
        detector = rt.registry.component(
            "outlier_detection", cluster.name, outlier_config, lambda: OutlierDetector(outlier_config, state, rt.clock)
        )
        outlier_filter = OutlierFilter(detector, cluster.endpoints)
    # Bounds each try by per_try_timeout, connect_timeout and the deadline: needed when any of them is set.
    per_try = retry.per_try_timeout if retry is not None else None
    if per_try is not None or config.connect_timeout is not None or timeout is not None:
        per_try_filter = PerTryTimeoutFilter(TryTimeouts(per_try, config.connect_timeout), rt.clock)
    return build_leg(
        cluster,
        timeout=deadline_filter,
        rate_limit=rate_limit_filter,
        retry=retry_filter,
        hedge=hedge_filter,
        circuit_breaker=breaker_filter,
        outlier=outlier_filter,
        per_try_timeout=per_try_filter,
    )


def _compile_route(
    config: RouteConfig,
    index: int,
    clusters: dict[str, CompiledCluster],
    mesh: MeshConfig,
    rt: Runtime,
    *,
    implicit: bool = False,
) -> CompiledRoute:
    name = config.name or f"route-{index}"
    fault = mirror = rewrite = None
    if config.fault is not None:
        targets = [
            clusters[c].state for c in ([config.cluster] if config.cluster else [s.cluster for s in config.split or ()])
        ]
        fault = FaultFilter(config.fault, rt.rng, rt.clock, targets)
    # A mirror onto an undefined cluster mirrors nothing (the config loads with a warning).
    if config.mirror is not None and config.mirror.cluster in clusters:
        shadow = config.mirror.cluster
        shadow_leg = _leg(_NO_OVERRIDES, name, clusters[shadow], mesh.clusters[shadow], rt)
        mirror = MirrorFilter(config.mirror, shadow_leg, rt.rng, rt.background)
    rewrite_policy = RewritePolicy.from_route(config)
    if rewrite_policy is not None:
        rewrite = RewriteFilter(rewrite_policy)
    direct = split = None
    if config.direct_response is not None:
        direct = DirectResponsePolicy.from_config(config.direct_response)
    else:
        split = SplitPolicy.from_route(config, rt.rng)
    legs = {c: _leg(config, name, clusters[c], mesh.clusters[c], rt) for c in (split.clusters if split else ())}
    filters, handle, handle_async = build_route_stack(
        legs,
        fault=fault,
        headers=HeadersFilter.from_config(config.headers),
        rewrite=rewrite,
        mirror=mirror,
        draw=split.pick if split is not None else None,
        direct_response=direct.respond if direct is not None else None,
    )
    return CompiledRoute(
        name=name,
        index=index,
        host=config.match.host if config.match.authority is None else authority_host(config.match.authority),
        predicates=compile_match(config.match, rt.rng),
        path_literal=path_literal(config.match),
        filters=filters,
        clusters=split.clusters if split else (),
        legs=legs,
        handle=handle,
        handle_async=handle_async,
        implicit=implicit,
    )


def _compile_inbound(config: InboundConfig | None, service: str, rt: Runtime) -> InboundStack:
    """The inbound policy: JWKS files and inline sets are read now (errors name their field), URLs in the background.

    Each policy is made here; where it goes in the stack is inbound_stack.build_inbound_stack's.
    """
    trusted = IpMatch(config.trusted_proxies if config is not None else InboundConfig().trusted_proxies)
    if config is None:
        return build_inbound_stack(None, normalize=NormalizeFilter(), trusted=trusted)
    jwt: InboundFilter | None = None
    if config.jwt:
        # Here: PyJWT and cryptography load only for a mesh that checks tokens: idle memory and start-up stay small.
        from meshlib._policies.authn import JwtFilter, JwtProvider

        keys = _compile_jwks(config, rt)
        providers = [JwtProvider.from_config(p, k) for p, k in zip(config.jwt, keys, strict=True)]
        jwt = JwtFilter(providers, realm=service)
    return build_inbound_stack(
        config,
        normalize=NormalizeFilter(),
        trusted=trusted,
        peer_authn=PeerAuthnFilter(config.mtls) if config.mtls is not None else None,
        jwt=jwt,
        authz=AuthzFilter(compile_policies(config.authorization)) if config.authorization else None,
    )


def _compile_jwks(config: InboundConfig, rt: Runtime) -> list[StaticJwks | FileJwks | RemoteJwks]:
    """The key sources of ``config.jwt``, one per provider; a ConfigError names every one that cannot be read."""
    from meshlib._policies.jwks import FileJwks, JwksError, RemoteJwks, StaticJwks

    sources: list[StaticJwks | FileJwks | RemoteJwks] = []
    errors: list[tuple[str, str]] = []
    for i, provider in enumerate(config.jwt):
        where = f"inbound.jwt[{i}]"
        try:
            if provider.jwks_file is not None:
                sources.append(FileJwks(provider.jwks_file))
            elif provider.jwks is not None:
                sources.append(StaticJwks(provider.jwks))
            else:
                uri, duration = provider.jwks_uri or "", provider.jwks_cache_duration
                sources.append(
                    rt.registry.component(
                        "jwks_uri", uri, duration, functools.partial(RemoteJwks, uri, duration), start=RemoteJwks.start
                    )
                )
        except OSError as exc:
            errors.append((f"{where}.jwks_file", f"cannot read the JWKS file: {exc.strerror or exc}"))
        except JwksError as exc:
            key = "jwks_file" if provider.jwks_file is not None else "jwks"
            errors.append((f"{where}.{key}", f"invalid JWKS: {exc}"))
    if errors:
        raise ConfigError(errors)
    return sources


def compile_snapshot(
    config: MeshConfig,
    rt: Runtime,
    *,
    version: int = 1,
    discovered: Mapping[str, Sequence[Discovered]] | None = None,
    xds: LateRoutes | None = None,
) -> Snapshot:
    """Compile ``config`` against the live state in ``rt.registry``.

    ``discovered`` holds the endpoints found so far for each cluster with
    ``discovery`` (none yet: the cluster has no endpoints and refuses requests);
    ``xds`` is the gate first requests to an authority wait at under xDS.

    Every cluster but an xDS one is also reachable by its own name as host,
    through an implicit route placed after the configured ones (so a
    configured route for that host wins).

    Transactional: the live state the new snapshot needs is built beside the
    old (the registry's transaction), and only a compile that succeeds
    commits it; one that raises leaves the state of the snapshot in force untouched.
    """
    with rt.registry.transaction():
        tls = _compile_tls(config, rt)
        found = discovered or {}
        clusters = {
            name: _compile_cluster(name, c, rt, tls.get(name), found.get(name, ()))
            for name, c in config.clusters.items()
        }
        routes = [_compile_route(r, i, clusters, config, rt) for i, r in enumerate(config.routes)]
        inbound = _compile_inbound(config.inbound, config.service, rt)
        for name, cluster in config.clusters.items():
            if cluster.discovery is not None and cluster.discovery.xds is not None:
                continue  # as in Envoy, an xDS cluster's name is not a host: its listeners' routes reach it
            implicit = RouteConfig(name=f"cluster:{name}", match=RouteMatchConfig(host=name.lower()), cluster=name)
            routes.append(_compile_route(implicit, len(routes), clusters, config, rt, implicit=True))
    # Last, once nothing else can fail: a replaced observer is closed here.
    observers = rt.observers.observers_for(config, rt)
    return Snapshot(
        config=config,
        version=version,
        routes=RouteTable(routes),
        clusters=clusters,
        passthrough=config.outbound_policy == "allow_any",
        clock=rt.clock,
        inbound=inbound,
        observers=observers,
        xds=xds,
    )
