"""Route level: fault → header edits → rewrite → mirror → split (dispatch to a cluster) or direct response.

Built once per route per snapshot, by :func:`build_route_stack` below: it
says where each filter goes; ``_snapshot/compile.py`` makes each policy from
the route's config and hands it in. The terminal handler of this level is the
dispatcher, which calls the route's leg into the chosen cluster
(cluster_stack.py). The split draws once per request: like Envoy's weighted
clusters, retries stay in the cluster that was drawn.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import NamedTuple, Protocol

from meshlib._engine.base import AsyncHandler, Filter, Request, Response, SyncHandler, compose, compose_async
from meshlib._engine.cluster_stack import Leg

__all__ = ["Route", "RouteStack", "build_route_stack"]


class Route(Protocol):
    """A route as the engine runs it: the snapshot's ``CompiledRoute`` (``_snapshot/route.py``).

    ``handle``/``handle_async`` are the route's stack, composed by :func:`build_route_stack`;
    ``legs`` its ways into its clusters (cluster_stack.py), by cluster name.
    """

    @property
    def name(self) -> str: ...

    @property
    def legs(self) -> Mapping[str, Leg]: ...

    @property
    def handle(self) -> SyncHandler: ...

    @property
    def handle_async(self) -> AsyncHandler: ...


class RouteStack(NamedTuple):
    """What :func:`build_route_stack` composed: the route's filters, outermost first, and its handlers."""

    filters: Sequence[Filter]
    handle: SyncHandler
    handle_async: AsyncHandler


def build_route_stack(
    legs: Mapping[str, Leg],
    *,
    fault: Filter | None = None,
    headers: Filter | None = None,
    rewrite: Filter | None = None,
    mirror: Filter | None = None,
    draw: Callable[[], str] | None = None,
    direct_response: SyncHandler | None = None,
) -> RouteStack:
    """The route's stack: its filters in the documented order over its terminal; a policy not given is left out.

    The terminal is ``direct_response`` when given, else the dispatch into
    ``legs``: the only leg, or ``legs[draw()]`` (the split's draw) when there are several.
    """
    filters = [
        f
        for f in (
            # Faults first: an injected abort must not reach a mirror, spend retry budget or trip a breaker.
            fault,
            # Header edits wrap everything below, so response edits also apply to direct responses.
            headers,
            # Rewrite changes what the upstream sees, not what matched.
            rewrite,
            # Mirror last, so the shadow gets the request exactly as the primary cluster does (edited, rewritten),
            # and outside the cluster's timeout and retries, so the copy never eats the caller's time.
            mirror,
        )
        if f is not None
    ]
    if direct_response is not None:
        respond = direct_response

        async def respond_async(request: Request) -> Response:
            return respond(request)

        return RouteStack(filters, compose(filters, respond), compose_async(filters, respond_async))

    if len(legs) == 1:
        # No draw needed: call the cluster's stack directly.
        only = next(iter(legs.values()))
        return RouteStack(filters, compose(filters, only.handle), compose_async(filters, only.handle_async))

    assert draw is not None, "a route into several clusters needs the split's draw"
    pick = draw

    def dispatch(request: Request) -> Response:
        return legs[pick()].handle(request)

    def dispatch_async(request: Request) -> Awaitable[Response]:
        return legs[pick()].handle_async(request)  # the leg's own awaitable: no coroutine of this level (base.Filter)

    return RouteStack(filters, compose(filters, dispatch), compose_async(filters, dispatch_async))
