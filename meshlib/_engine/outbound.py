"""Outbound entry: match a route on the snapshot, then run that route's stack.

The front door passes the request and its innermost transport; the engine
builds its own copy of the request (the caller's stays untouched, so
``response.request`` is what the caller sent) and carries the transport in
the CallContext down to the endpoint level.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

import httpx

from meshlib._engine.base import context_of
from meshlib._engine.context import EXTENSION, CallContext
from meshlib._errors import RouteNotFoundError
from meshlib._httpx_shortcuts import copy_request
from meshlib._observe.hooks import failed, observed, outbound_exchange

if TYPE_CHECKING:
    from meshlib._clock import Clock
    from meshlib._engine.route_stack import Route
    from meshlib._observe.exchange import Exchange
    from meshlib._observe.observers import Observers
    from meshlib._tls.senders import TlsSenders

__all__ = ["LateRoutes", "OutboundSnapshot", "Routes", "handle", "handle_async"]


class Routes(Protocol):
    """A snapshot's route table (``_snapshot/route_table.py``): the route that claims a request, or None."""

    def match(self, request: httpx.Request) -> Route | None: ...


class LateRoutes(Protocol):
    """xDS's gate (``_xds/manager.py``): authorities whose routes have arrived or been waited for, and the wait."""

    settled: frozenset[bytes]

    def wait(self, netloc: bytes) -> OutboundSnapshot: ...

    async def wait_async(self, netloc: bytes) -> OutboundSnapshot: ...


class OutboundSnapshot(Protocol):
    """What the outbound entry reads of a snapshot (``_snapshot/snapshot.py``), which the engine does not import."""

    @property
    def routes(self) -> Routes: ...

    @property
    def passthrough(self) -> bool: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def observers(self) -> Observers | None: ...

    @property
    def xds(self) -> LateRoutes | None: ...


def _prepare(
    snapshot: OutboundSnapshot,
    request: httpx.Request,
    sender: httpx.BaseTransport | None,
    async_sender: httpx.AsyncBaseTransport | None,
    tls: TlsSenders | None,
) -> tuple[Route, httpx.Request] | None:
    route = snapshot.routes.match(request)
    if route is None:
        if snapshot.passthrough:
            return None
        error = RouteNotFoundError(
            f"no route or cluster for host {request.url.host!r} and outbound_policy is registry_only",
            request=request,
        )
        if snapshot.observers is not None:  # a refused request is one to observe too (the access log's NR)
            exchange = outbound_exchange(request, None)
            snapshot.observers.started(exchange)
            failed(exchange, snapshot.observers, error)
        raise error
    ctx = CallContext(
        original=request, route=route, clock=snapshot.clock, sender=sender, async_sender=async_sender, tls=tls
    )
    observers = snapshot.observers
    if observers is not None:
        ctx.observers = observers
        ctx.exchange = outbound_exchange(request, route.name)
    upstream = copy_request(request)
    upstream.extensions[EXTENSION] = ctx
    return route, upstream


def handle(
    snapshot: OutboundSnapshot, request: httpx.Request, sender: httpx.BaseTransport, tls: TlsSenders | None = None
) -> httpx.Response:
    """Send ``request`` through the mesh, using ``sender`` for the network (sync), ``tls`` for clusters with tls."""
    late = snapshot.xds
    if late is not None and request.url.netloc not in late.settled:  # the first request for this authority
        snapshot = late.wait(request.url.netloc)
    prepared = _prepare(snapshot, request, sender, None, tls)
    if prepared is None:
        return sender.handle_request(request)
    route, upstream = prepared
    ctx = context_of(upstream)
    if ctx.observers is None:
        return route.handle(upstream)
    assert ctx.exchange is not None
    ctx.observers.started(ctx.exchange)
    try:
        response = route.handle(upstream)
    except BaseException as exc:
        failed(ctx.exchange, ctx.observers, exc)
        raise
    return observed(response, ctx.exchange, ctx.observers)


def handle_async(
    snapshot: OutboundSnapshot, request: httpx.Request, sender: httpx.AsyncBaseTransport, tls: TlsSenders | None = None
) -> Awaitable[httpx.Response]:
    """The async twin of :func:`handle`: await what it returns.

    A plain function, not a coroutine: in the common case (routes settled, no
    observers) it returns the route's own awaitable, so the caller awaits the
    route's stack directly (base.Filter says why that counts).
    """
    late = snapshot.xds
    if late is not None and request.url.netloc not in late.settled:
        return _after_late_routes(late, request, sender, tls)
    return _handle_async(snapshot, request, sender, tls)


async def _after_late_routes(
    late: LateRoutes, request: httpx.Request, sender: httpx.AsyncBaseTransport, tls: TlsSenders | None
) -> httpx.Response:
    """The first request for an authority whose routes xDS has not sent yet: wait for them, then handle it."""
    snapshot = await late.wait_async(request.url.netloc)
    return await _handle_async(snapshot, request, sender, tls)


def _handle_async(
    snapshot: OutboundSnapshot, request: httpx.Request, sender: httpx.AsyncBaseTransport, tls: TlsSenders | None
) -> Awaitable[httpx.Response]:
    prepared = _prepare(snapshot, request, None, sender, tls)
    if prepared is None:
        return sender.handle_async_request(request)
    route, upstream = prepared
    ctx = context_of(upstream)
    observers = ctx.observers
    if observers is None:
        return route.handle_async(upstream)
    assert ctx.exchange is not None
    return _observed_async(route, upstream, ctx.exchange, observers)


async def _observed_async(
    route: Route, upstream: httpx.Request, exchange: Exchange, observers: Observers
) -> httpx.Response:
    """The route's stack for a request the snapshot's observers watch: started, then observed or failed."""
    observers.started(exchange)
    try:
        response = await route.handle_async(upstream)
    except BaseException as exc:
        failed(exchange, observers, exc)
        raise
    return observed(response, exchange, observers)
