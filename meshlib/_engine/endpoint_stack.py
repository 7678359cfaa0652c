"""Endpoint level: outlier → per_try_timeout → send, one try to the endpoint the leg picked.

Built once per leg per snapshot: :func:`endpoint_filters` puts the filters in
this order (``_snapshot/compile.py`` makes them), :func:`build_endpoint_stack`
composes them over the send. The last step sends through the front door's
transport. Errors from httpx are mapped to the mesh's typed errors here
(``upstream_error``), at the one boundary where they come in; the endpoint
(and the cluster's in-flight cap, in circuit_breaker.py) counts the request
as busy until its body closes. A cluster with ``tls`` sends through the front
door's transport for that cluster's TLS settings (``_tls/senders.py``)
instead of its inner one: its leg binds ``tls`` once (:func:`build_endpoint_stack`),
and a cluster without it pays one ``is None`` test.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import httpx

from meshlib._engine.base import (
    AsyncHandler,
    Filter,
    Request,
    Response,
    SyncHandler,
    compose,
    compose_async,
    context_of,
)
from meshlib._engine.errors import upstream_error
from meshlib._engine.streams import release_when_closed
from meshlib._errors import chained
from meshlib._observe.hooks import try_started

if TYPE_CHECKING:
    from meshlib._tls.cluster import ClusterTls

__all__ = ["build_endpoint_stack", "endpoint_filters", "send", "send_async"]


def endpoint_filters(*, outlier: Filter | None = None, per_try_timeout: Filter | None = None) -> list[Filter]:
    """The endpoint level's filters in the documented order; a policy not given is left out."""
    return [
        f
        for f in (
            # Outlier detection sees every try's outcome on its endpoint, timeouts of this try included.
            outlier,
            # Per try, below the endpoint pick: bounds this try by per_try_timeout, connect_timeout and the deadline.
            per_try_timeout,
        )
        if f is not None
    ]


def build_endpoint_stack(filters: Sequence[Filter], tls: ClusterTls | None) -> tuple[SyncHandler, AsyncHandler]:
    """``filters`` (from :func:`endpoint_filters`) composed over the send, sync and async."""
    # Chosen once per leg: a cluster without tls pays nothing for TLS on its requests.
    terminal = send if tls is None else functools.partial(send, tls=tls)
    terminal_async = send_async if tls is None else functools.partial(send_async, tls=tls)
    return compose(filters, terminal), compose_async(filters, terminal_async)


def send(request: Request, tls: ClusterTls | None = None) -> Response:
    """Send through the sync inner transport, or the front door's transport for ``tls``."""
    ctx = context_of(request)
    if tls is None:
        sender = ctx.sender
    else:
        assert ctx.tls is not None, "this front door sends to no cluster with tls"
        sender = ctx.tls.sync(tls)
    assert sender is not None
    assert ctx.endpoint is not None
    state = ctx.endpoint.state
    watch = None
    if ctx.observers is not None and ctx.exchange is not None:
        watch = try_started(ctx.exchange, ctx.observers, request, ctx.attempt, ctx.cluster, ctx.endpoint.url)
    state.acquire()
    try:
        response = sender.handle_request(request)
    except httpx.TransportError as exc:
        state.release()
        mapped = upstream_error(exc, ctx)
        if watch is not None:
            watch.failed(ctx.exchange, mapped or exc)
        if mapped is None:
            raise
        raise chained(mapped, exc)  # noqa: B904 (mypyc drops "from")
    except BaseException as exc:
        state.release()
        if watch is not None:
            watch.failed(ctx.exchange, exc)
        raise
    if watch is not None:
        watch.ended(ctx.exchange, response)
    return release_when_closed(response, state.release, ctx)


async def send_async(request: Request, tls: ClusterTls | None = None) -> Response:
    """The async twin of :func:`send`."""
    ctx = context_of(request)
    if tls is None:
        sender = ctx.async_sender
    else:
        assert ctx.tls is not None, "this front door sends to no cluster with tls"
        sender = ctx.tls.async_built(tls) or await ctx.tls.async_(tls)
    assert sender is not None
    assert ctx.endpoint is not None
    state = ctx.endpoint.state
    watch = None
    if ctx.observers is not None and ctx.exchange is not None:
        watch = try_started(ctx.exchange, ctx.observers, request, ctx.attempt, ctx.cluster, ctx.endpoint.url)
    state.acquire()
    try:
        response = await sender.handle_async_request(request)
    except httpx.TransportError as exc:
        state.release()
        mapped = upstream_error(exc, ctx)
        if watch is not None:
            watch.failed(ctx.exchange, mapped or exc)
        if mapped is None:
            raise
        raise chained(mapped, exc)  # noqa: B904 (mypyc drops "from")
    except BaseException as exc:
        state.release()
        if watch is not None:
            watch.failed(ctx.exchange, exc)
        raise
    if watch is not None:
        watch.ended(ctx.exchange, response)
    return release_when_closed(response, state.release, ctx)
