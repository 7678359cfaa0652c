"""A response body from the sidecar: its failure after the head raises the MeshError the sidecar named, as in process.

Requests from meshlib's sidecar client carry ``x-meshlib-client`` (a proxy
header, for the sidecar alone), so the sidecar sends every streamed body
chunked and ends one that failed with an error chunk (``_wire.error_chunk``).
The client's connections keep their last reads (:class:`_Tail`), where a body
read that fails finds that chunk. Without one, the way the connection ended
says the class: a FIN (an incomplete body) a timeout, an RST an upstream
failure (docs/sidecar.md, "When the body fails").

The streams that keep those reads subclass httpcore's, so they live in
``sidecar_tails.py``, imported only by :func:`keep_tails`: this module is
imported with ``meshlib``, and the sidecar, or a mesh on
``AsyncHTTP1Transport``, never imports httpcore (nor trio with it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx

from meshlib._engine.errors import describe
from meshlib._errors import MeshError, RequestTimeoutError, UpstreamResetError, chained
from meshlib._wire import LENGTH_HEADER, error_from_chunk

__all__ = ["keep_tails", "received"]


def keep_tails(transport: httpx.HTTPTransport | httpx.AsyncHTTPTransport) -> None:
    """Let ``transport``'s connections keep their last reads, as :func:`_body_error` needs."""
    # httpcore loads only where an httpcore transport is used: ``transport`` is one (its streams are in there).
    from meshlib._frontdoors import sidecar_tails

    sidecar_tails.keep_tails(transport)


def received(response: httpx.Response, request: httpx.Request) -> httpx.Response:
    """A response of the sidecar's as the caller gets it: its framing undone, its body's failures mapped."""
    headers = response.headers
    length = headers.get(LENGTH_HEADER)
    if length is not None:  # the sidecar chunked it for the error chunk's sake: the upstream sent a length
        del headers[LENGTH_HEADER]
        del headers["transfer-encoding"]
        headers["content-length"] = length
    if request.url.scheme == "http":  # not through a tunnel, where the sidecar only passes bytes on
        tail = response.extensions.get("network_stream")
        response.stream = _SidecarBody(response.stream, request, tail if isinstance(tail, _Tail) else None)
    return response


def _body_error(error: httpx.TransportError, request: httpx.Request, tail: _Tail | None) -> MeshError:
    """The MeshError for a body from the sidecar that failed with ``error``, as in process.

    The error chunk the sidecar ended the body with names it; without one
    (a Content-Length body to a client that did not mark its request, or a
    chunk lost to the reset), the way the connection ended says which class.
    """
    named = error_from_chunk(tail.last if tail is not None else b"", request)
    if named is not None:
        return named
    words = describe(error)
    if isinstance(error, httpx.RemoteProtocolError):  # closed before the body's end: the sidecar's timeout signal
        return RequestTimeoutError(f"a timeout ran out while the response body was read: {words}", request=request)
    return UpstreamResetError(f"the upstream failed while the response body was read: {words}", request=request)


class _SidecarBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body from the sidecar: a read that fails raises the MeshError the sidecar says failed it."""

    __slots__ = ("_request", "_stream", "_tail")

    def __init__(
        self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, request: httpx.Request, tail: _Tail | None
    ) -> None:
        self._stream = stream
        self._request = request
        self._tail = tail

    def __iter__(self) -> Iterator[bytes]:
        assert isinstance(self._stream, httpx.SyncByteStream)
        try:
            yield from self._stream
        except (httpx.NetworkError, httpx.RemoteProtocolError) as error:
            raise chained(_body_error(error, self._request, self._tail), error)  # noqa: B904 (mypyc drops "from")

    def __aiter__(self) -> AsyncIterator[bytes]:
        assert isinstance(self._stream, httpx.AsyncByteStream)
        return _MappedChunks(self._stream.__aiter__(), self._request, self._tail)

    def close(self) -> None:
        if isinstance(self._stream, httpx.SyncByteStream):
            self._stream.close()

    async def aclose(self) -> None:
        if isinstance(self._stream, httpx.AsyncByteStream):
            await self._stream.aclose()


class _MappedChunks:
    """Iterates a ``_SidecarBody``'s chunks, mapping a failed read: an iterator object, not an async generator."""

    __slots__ = ("_chunks", "_request", "_tail")

    def __init__(self, chunks: AsyncIterator[bytes], request: httpx.Request, tail: _Tail | None) -> None:
        self._chunks = chunks
        self._request = request
        self._tail = tail

    def __aiter__(self) -> _MappedChunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except (httpx.NetworkError, httpx.RemoteProtocolError) as error:
            raise chained(_body_error(error, self._request, self._tail), error)  # noqa: B904 (mypyc drops "from")


class _Tail:
    """The last two reads of a connection to the sidecar: an error chunk is short, so they hold it whole."""

    __slots__ = ("_previous", "_recent")

    def __init__(self) -> None:
        self._previous = b""
        self._recent = b""

    def keep(self, data: bytes) -> bytes:
        if data:
            self._previous = self._recent
            self._recent = data
        return data

    @property
    def last(self) -> bytes:
        return self._previous + self._recent
