"""A response body from the sidecar: its failure after the head raises the MeshError the sidecar named, as in process.

Requests from meshlib's sidecar client carry ``x-meshlib-client`` (a proxy
header, for the sidecar alone), so the sidecar sends every streamed body
chunked and ends one that failed with an error chunk (``_wire.error_chunk``).
The client's connections keep their last reads (:class:`_Tail`), where a body
read that fails finds that chunk. Without one, the way the connection ended
says the class: a FIN (an incomplete body) a timeout, an RST an upstream
failure (docs/sidecar.md, "When the body fails").
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpcore
import httpx

from meshlib._engine.errors import describe
from meshlib._engine.interrupt import WrappingBackend
from meshlib._errors import MeshError, RequestTimeoutError, UpstreamResetError
from meshlib._wire import LENGTH_HEADER, error_from_chunk

__all__ = ["keep_tails", "received"]


def keep_tails(transport: httpx.HTTPTransport | httpx.AsyncHTTPTransport) -> None:
    """Let ``transport``'s connections keep their last reads, as :func:`_body_error` needs."""
    pool = transport._pool
    if isinstance(pool, httpcore.ConnectionPool):
        pool._network_backend = WrappingBackend(pool._network_backend, _TailStream)
    elif isinstance(pool, httpcore.AsyncConnectionPool):
        pool._network_backend = _AsyncTailBackend(pool._network_backend)


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
            raise _body_error(error, self._request, self._tail) from error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert isinstance(self._stream, httpx.AsyncByteStream)
        try:
            async for chunk in self._stream:
                yield chunk
        except (httpx.NetworkError, httpx.RemoteProtocolError) as error:
            raise _body_error(error, self._request, self._tail) from error

    def close(self) -> None:
        if isinstance(self._stream, httpx.SyncByteStream):
            self._stream.close()

    async def aclose(self) -> None:
        if isinstance(self._stream, httpx.AsyncByteStream):
            await self._stream.aclose()


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


class _TailStream(_Tail, httpcore.NetworkStream):
    """A connection to the sidecar that keeps its last reads (:class:`_Tail`)."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        super().__init__()
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.keep(self._inner.read(max_bytes, timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return self._inner.start_tls(ssl_context, server_hostname, timeout)  # a tunnel: nothing to keep

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncTailStream(_Tail, httpcore.AsyncNetworkStream):
    """The async twin of :class:`_TailStream`."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        super().__init__()
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 - httpcore's
        return self.keep(await self._inner.read(max_bytes, timeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 - httpcore's
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.start_tls(ssl_context, server_hostname, timeout)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncTailBackend(httpcore.AsyncNetworkBackend):
    """Opens connections to the sidecar as :class:`_AsyncTailStream` (the sync pools get a ``WrappingBackend``)."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        return _AsyncTailStream(await self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
