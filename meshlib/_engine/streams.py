"""Response body wrappers: run a callback once when the body is closed, and map errors while reading it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

import httpx

from meshlib._engine.errors import upstream_error

if TYPE_CHECKING:
    from meshlib._engine.context import CallContext

__all__ = ["OnCloseStream", "release_when_closed"]


class OnCloseStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Passes a response body through and calls ``on_close`` exactly once when it closes.

    A request is in flight until its response body is done, as in Envoy, so
    least-request balancing and concurrency limits see streamed responses as
    busy. With ``ctx``, httpx errors raised while the body is read (an upstream
    that resets or closes mid-body) become the mesh's typed errors too.
    """

    __slots__ = ("_closed", "_ctx", "_on_close", "_stream")

    def __init__(
        self,
        stream: httpx.SyncByteStream | httpx.AsyncByteStream,
        on_close: Callable[[], None],
        ctx: CallContext | None = None,
    ) -> None:
        self._stream = stream
        self._on_close = [on_close]
        self._ctx = ctx
        self._closed = False

    def also(self, on_close: Callable[[], None]) -> None:
        """Call ``on_close`` too when the body closes (one wrapper per response, however many policies wait)."""
        self._on_close.append(on_close)

    def _done(self) -> None:
        if not self._closed:
            self._closed = True
            for on_close in reversed(self._on_close):
                on_close()

    def __iter__(self) -> Iterator[bytes]:
        assert isinstance(self._stream, httpx.SyncByteStream)
        try:
            yield from self._stream
        except httpx.TransportError as exc:
            mapped = self._mapped(exc)
            if mapped is None:
                raise
            raise mapped from exc

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert isinstance(self._stream, httpx.AsyncByteStream)
        try:
            async for chunk in self._stream:
                yield chunk
        except httpx.TransportError as exc:
            mapped = self._mapped(exc)
            if mapped is None:
                raise
            raise mapped from exc

    def _mapped(self, exc: httpx.TransportError) -> httpx.TransportError | None:
        return upstream_error(exc, self._ctx) if self._ctx is not None else None

    def close(self) -> None:
        try:
            if isinstance(self._stream, httpx.SyncByteStream):
                self._stream.close()
        finally:
            self._done()

    async def aclose(self) -> None:
        try:
            if isinstance(self._stream, httpx.AsyncByteStream):
                await self._stream.aclose()
        finally:
            self._done()


def release_when_closed(
    response: httpx.Response, release: Callable[[], None], ctx: CallContext | None = None
) -> httpx.Response:
    """Call ``release`` when ``response``'s body is closed: now if it already is, else through its stream."""
    if response.is_closed:
        # Already read and closed (a Response built with content=, as httpx.MockTransport handlers
        # return): nobody will close it again, so the request is over now.
        release()
    elif isinstance(response.stream, OnCloseStream) and not response.stream._closed:
        response.stream.also(release)
    else:
        response.stream = OnCloseStream(response.stream, release, ctx)
    return response
