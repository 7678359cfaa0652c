"""Outbound entry: match a route on the snapshot, then run that route's stack.

The front door passes the request and its innermost transport; the engine
builds its own copy of the request (the caller's stays untouched, so
``response.request`` is what the caller sent) and carries the transport in
the CallContext down to the endpoint level.
"""

from __future__ import annotations

from collections.abc import Callable
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
    from meshlib._observe.observers import Observers
    from meshlib._tls.senders import TlsSenders

__all__ = ["Finish", "LateRoutes", "OutboundSnapshot", "Routes", "handle", "handle_async"]


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


# A door's last step on the response (freed once closed, a header removed): handle_async calls it in its own
# coroutine, so the door adds none of its own.
Finish = Callable[[httpx.Response], httpx.Response]


async def handle_async(
    snapshot: OutboundSnapshot,
    request: httpx.Request,
    sender: httpx.AsyncBaseTransport,
    tls: TlsSenders | None,
    finish: Finish,
) -> httpx.Response:
    """The async twin of :func:`handle`, and an async door's whole request: ``finish`` is the door's last step.

    A door returns this coroutine as its own (``handle_async_request``, the
    sidecar's handler) rather than awaiting it in one of its own: with the
    observers' hooks run here too, a request's stack is this one coroutine
    over the route's, each level of which costs every request and every
    suspension of it (``base.Filter`` says more).
    """
    late = snapshot.xds
    if late is not None and request.url.netloc not in late.settled:  # the first request for this authority
        snapshot = await late.wait_async(request.url.netloc)
    prepared = _prepare(snapshot, request, None, sender, tls)
    if prepared is None:
        return finish(await sender.handle_async_request(request))
    route, upstream = prepared
    ctx = context_of(upstream)
    observers = ctx.observers
    if observers is None:
        return finish(await route.handle_async(upstream))
    exchange = ctx.exchange
    assert exchange is not None
    observers.started(exchange)
    try:
        response = await route.handle_async(upstream)
    except BaseException as exc:
        failed(exchange, observers, exc)
        raise
    return finish(observed(response, exchange, observers))
