"""Endpoint level: the last step, sending one try to one endpoint through the front door's transport."""

from __future__ import annotations

from collections.abc import Callable

from meshlib._engine.base import Request, Response
from meshlib._engine.context import context_of
from meshlib._engine.streams import OnCloseStream

__all__ = ["send", "send_async"]


def _release_on_close(response: Response, release: Callable[[], None]) -> Response:
    if response.is_closed:
        # Already read and closed (a Response built with content=, as httpx.MockTransport handlers
        # return): nobody will close it again, so the request is over now.
        release()
    else:
        response.stream = OnCloseStream(response.stream, release)
    return response


def send(request: Request) -> Response:
    """Send through the sync inner transport; the endpoint counts as busy until the body closes."""
    ctx = context_of(request)
    assert ctx.sender is not None
    assert ctx.endpoint is not None
    state = ctx.endpoint.state
    state.acquire()
    try:
        response = ctx.sender.handle_request(request)
    except BaseException:
        state.release()
        raise
    return _release_on_close(response, state.release)


async def send_async(request: Request) -> Response:
    """The async twin of :func:`send`."""
    ctx = context_of(request)
    assert ctx.async_sender is not None
    assert ctx.endpoint is not None
    state = ctx.endpoint.state
    state.acquire()
    try:
        response = await ctx.async_sender.handle_async_request(request)
    except BaseException:
        state.release()
        raise
    return _release_on_close(response, state.release)
