"""The in-process door's work per request, compiled: through the engine, then the response freed once closed.

``MeshTransport`` and ``AsyncMeshTransport`` (``httpx_transport.py``) define
public names and stay interpreted; each request goes from them straight into
these functions (the async door returns the engine's own coroutine, with
:class:`FreedWhenClosed` as its last step): no interpreted frame of the
door's runs on a request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from meshlib._engine import outbound
from meshlib._engine.streams import OnCloseStream

if TYPE_CHECKING:
    from meshlib._tls.senders import TlsSenders

__all__ = ["FreedWhenClosed", "freed_when_closed", "send"]


def send(
    snapshot: outbound.OutboundSnapshot,
    request: httpx.Request,
    inner: httpx.BaseTransport,
    tls: TlsSenders,
    closed: httpx.SyncByteStream,
) -> httpx.Response:
    """``request`` through the mesh on ``inner`` (``tls`` for clusters with tls); see :func:`freed_when_closed`."""
    return freed_when_closed(outbound.handle(snapshot, request, inner, tls), closed)


class FreedWhenClosed:
    """The async door's last step (``finish`` of ``outbound.handle_async``): :func:`freed_when_closed`, bound."""

    def __init__(self, closed: httpx.AsyncByteStream) -> None:
        self.closed = closed

    def __call__(self, response: httpx.Response) -> httpx.Response:
        return freed_when_closed(response, self.closed)


def freed_when_closed(response: httpx.Response, closed: httpx.SyncByteStream | httpx.AsyncByteStream) -> httpx.Response:
    """Let ``response`` be freed by reference counting, not the cycle collector, once the caller closes it.

    An httpx client wraps each response's stream in one that refers back to
    the response (``BoundAsyncStream``, ``BoundSyncStream``): a cycle, so the
    response, the request and everything the mesh recorded for it stay in
    memory until the collector runs, and every collection walks them. When
    the response is closed (read to its end, or closed by the caller), an
    empty stream of the same kind (``closed``) takes the wrapper's place:
    httpx never reads a closed response's stream again, the cycle is gone,
    and the collector runs less often and finds less to walk.
    """
    stream = response.stream
    if isinstance(stream, OnCloseStream) and not stream.closed:
        stream.also(_Unbind(response, closed))
    return response


class _Unbind:
    """``freed_when_closed``'s callback: run when the mesh's stream closes, which the client's wrapper does last."""

    __slots__ = ("_closed", "_response")

    def __init__(self, response: httpx.Response, closed: httpx.SyncByteStream | httpx.AsyncByteStream) -> None:
        self._response = response
        self._closed = closed

    def __call__(self) -> None:
        # Closed through the response (httpx set `elapsed` on it first); a body that failed while it was read
        # closes itself, before the response knows: the wrapper must stay, so that closing the response sets it.
        if self._response.is_closed:
            self._response.stream = self._closed
