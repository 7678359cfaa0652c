"""Endpoint level: the last step, sending one try to one endpoint through the front door's transport.

Errors from httpx are mapped to the mesh's typed errors here (``upstream_error``),
at the one boundary where they come in; the endpoint (and the cluster's
in-flight cap, in circuit_breaker.py) counts the request as busy until its
body closes.
"""

from __future__ import annotations

import httpx

from meshlib._engine.base import Request, Response
from meshlib._engine.context import context_of
from meshlib._engine.errors import upstream_error
from meshlib._engine.streams import release_when_closed

__all__ = ["send", "send_async"]


def send(request: Request) -> Response:
    """Send through the sync inner transport."""
    ctx = context_of(request)
    assert ctx.sender is not None
    assert ctx.endpoint is not None
    state = ctx.endpoint.state
    state.acquire()
    try:
        response = ctx.sender.handle_request(request)
    except httpx.TransportError as exc:
        state.release()
        mapped = upstream_error(exc, ctx)
        if mapped is None:
            raise
        raise mapped from exc
    except BaseException:
        state.release()
        raise
    return release_when_closed(response, state.release, ctx)


async def send_async(request: Request) -> Response:
    """The async twin of :func:`send`."""
    ctx = context_of(request)
    assert ctx.async_sender is not None
    assert ctx.endpoint is not None
    state = ctx.endpoint.state
    state.acquire()
    try:
        response = await ctx.async_sender.handle_async_request(request)
    except httpx.TransportError as exc:
        state.release()
        mapped = upstream_error(exc, ctx)
        if mapped is None:
            raise
        raise mapped from exc
    except BaseException:
        state.release()
        raise
    return release_when_closed(response, state.release, ctx)
