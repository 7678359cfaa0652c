"""The engine's currency (httpx messages) and how filters compose into handlers."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, Final, Protocol

import httpx

if TYPE_CHECKING:
    from meshlib._engine.context import CallContext

__all__ = [
    "EXTENSION",
    "AsyncHandler",
    "Filter",
    "Request",
    "Response",
    "SyncHandler",
    "compose",
    "compose_async",
    "context_of",
]

# The request extension that carries the engine's CallContext (``_engine/context.py``).
EXTENSION: Final = "meshlib"

Request = httpx.Request
Response = httpx.Response
SyncHandler = Callable[[Request], Response]
AsyncHandler = Callable[[Request], Awaitable[Response]]


def context_of(request: Request) -> CallContext:
    """The CallContext the engine attached to ``request``.

    Here, not beside ``CallContext``: this module is compiled, so the compiled stages call it as C, where
    a call into the interpreted ``context.py`` ran Python code six times a request.
    """
    ctx: CallContext = request.extensions[EXTENSION]
    return ctx


class Filter(Protocol):
    """Wraps a handler: sees the request on the way in and the response on the way out.

    A filter never stores the next handler, so one instance serves the sync and
    async stacks of many routes. Per-request state lives in the request's
    ``CallContext``, never on the filter.
    """

    name: ClassVar[str]  # shown in stack-order tests and, later, /config_dump

    def handle(self, request: Request, call_next: SyncHandler) -> Response: ...

    def handle_async(self, request: Request, call_next: AsyncHandler) -> Awaitable[Response]:
        """The async twin of ``handle``: usually an ``async def``.

        A filter with nothing to do once the response is back (it sets up the
        request, or only looks at it) may be a plain ``def`` that returns
        ``call_next(request)`` as it is: the caller awaits the next handler
        directly, one coroutine fewer on every request and on every suspension
        of it. What it raises then comes out of the call rather than the await,
        inside the same ``await handler(request)`` for the caller.
        """
        ...


def compose(filters: Sequence[Filter], terminal: SyncHandler) -> SyncHandler:
    """Wrap ``terminal`` so that ``filters[0]`` sees each request first."""
    handler = terminal
    for f in reversed(filters):
        handler = functools.partial(f.handle, call_next=handler)
    return handler


def compose_async(filters: Sequence[Filter], terminal: AsyncHandler) -> AsyncHandler:
    """The async twin of :func:`compose`."""
    handler = terminal
    for f in reversed(filters):
        handler = functools.partial(f.handle_async, call_next=handler)
    return handler
