"""Cluster level: pick an endpoint with the cluster's load balancer, then hand over to the endpoint level.

Built once per cluster per snapshot. Later policies (rate limit, concurrency,
breaker) sit in front of the pick, so that an admission refusal never costs an
endpoint choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from meshlib._engine.base import AsyncHandler, Filter, Request, Response, SyncHandler, compose, compose_async
from meshlib._engine.context import context_of
from meshlib._engine.endpoint_stack import send, send_async
from meshlib._engine.urls import with_origin
from meshlib._errors import NoHealthyUpstreamError
from meshlib._upstream.cluster import ClusterState
from meshlib._upstream.endpoint import Endpoint
from meshlib._upstream.lb import LoadBalancer

__all__ = ["CompiledCluster"]


@dataclass(eq=False)
class CompiledCluster:
    """A cluster as compiled into a snapshot: its endpoints, load balancer, filters and handlers."""

    name: str
    endpoints: tuple[Endpoint, ...]
    lb: LoadBalancer
    state: ClusterState
    filters: Sequence[Filter] = ()
    handle: SyncHandler = field(init=False, repr=False)
    handle_async: AsyncHandler = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.handle = compose(self.filters, self._pick_and_send)
        self.handle_async = compose_async(self.filters, self._pick_and_send_async)

    def _pick(self, request: Request) -> None:
        ctx = context_of(request)
        endpoint = self.lb.pick(request)
        if endpoint is None:
            raise NoHealthyUpstreamError(
                f"cluster {self.name!r} has no endpoint to take the request",
                request=ctx.original,
                route=ctx.route.name,
                cluster=self.name,
            )
        ctx.cluster = self.name
        ctx.endpoint = endpoint
        request.url = with_origin(request.url, endpoint.origin)

    def _pick_and_send(self, request: Request) -> Response:
        self._pick(request)
        return send(request)

    async def _pick_and_send_async(self, request: Request) -> Response:
        self._pick(request)
        return await send_async(request)
