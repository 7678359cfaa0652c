"""Route level: fault → header edits → rewrite → mirror → split (dispatch to a cluster) or direct response.

Built once per route per snapshot. The terminal handler of this level is the
dispatcher, which calls the route's leg into the chosen cluster
(cluster_stack.py). The split draws once per request: like Envoy's weighted
clusters, retries stay in the cluster that was drawn.
"""

from __future__ import annotations

from collections.abc import Mapping

from meshlib._config.models import RouteConfig
from meshlib._engine.base import AsyncHandler, Filter, Request, Response, SyncHandler, compose, compose_async
from meshlib._engine.cluster_stack import Leg
from meshlib._policies.direct_response import DirectResponsePolicy
from meshlib._policies.headers import HeadersFilter
from meshlib._policies.rewrite import RewriteFilter, RewritePolicy
from meshlib._policies.split import SplitPolicy

__all__ = ["build_route_handlers", "route_filters"]


def route_filters(config: RouteConfig, *, fault: Filter | None = None, mirror: Filter | None = None) -> list[Filter]:
    """The route's filters, outermost first; a policy that is not configured is left out."""
    filters: list[Filter] = []
    # Faults first: an injected abort must not reach a mirror, spend retry budget or trip a breaker.
    if fault is not None:
        filters.append(fault)
    # Header edits wrap everything below, so response edits also apply to direct responses.
    headers = HeadersFilter.from_config(config.headers)
    if headers is not None:
        filters.append(headers)
    # Rewrite changes what the upstream sees, not what matched.
    rewrite = RewritePolicy.from_route(config)
    if rewrite is not None:
        filters.append(RewriteFilter(rewrite))
    # Mirror last, so the shadow gets the request exactly as the primary cluster does (edited, rewritten),
    # and outside the cluster's timeout and retries, so the copy never eats the caller's time.
    if mirror is not None:
        filters.append(mirror)
    return filters


def build_route_handlers(
    config: RouteConfig,
    filters: list[Filter],
    legs: Mapping[str, Leg],
    split: SplitPolicy | None,
) -> tuple[SyncHandler, AsyncHandler]:
    """Compose ``filters`` over the route's terminal: a direct response or a split dispatch."""
    if config.direct_response is not None:
        direct = DirectResponsePolicy.from_config(config.direct_response)

        def respond(request: Request) -> Response:
            return direct.respond(request)

        async def respond_async(request: Request) -> Response:
            return direct.respond(request)

        return compose(filters, respond), compose_async(filters, respond_async)

    assert split is not None
    if len(split.clusters) == 1:
        # No draw needed: call the cluster's stack directly.
        only = legs[split.clusters[0]]
        return compose(filters, only.handle), compose_async(filters, only.handle_async)

    def dispatch(request: Request) -> Response:
        return legs[split.pick()].handle(request)

    async def dispatch_async(request: Request) -> Response:
        return await legs[split.pick()].handle_async(request)

    return compose(filters, dispatch), compose_async(filters, dispatch_async)
