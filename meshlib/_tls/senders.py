"""Per front door, the transports a TLS cluster's requests go through: one per version of the cluster's material.

A front door's inner transport has one SSL context, while each cluster with
``tls`` has its own CA, client certificate and SPIFFE check. So each front
door (a mesh client's transport, the sidecar) keeps, per cluster, a transport
built for that cluster's material in force: httpx's own in process (respx
still mocks it: it patches httpcore's pool), and the sidecar's pooled client
in the sidecar (a base transport with ``tls_variant``). A base that does no
network I/O (``httpx.MockTransport``) is used as it is.

When the files rotate, the next request builds a transport for the new
material and later requests go through it; the old one closes once its last
response is done, so requests in flight finish on the connections they
started on, and no connection made with the old certificate is reused.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import httpx

from meshlib._engine.interrupt import make_interruptible

if TYPE_CHECKING:
    from meshlib._tls.backends import PeerCheck
    from meshlib._tls.cluster import ClusterTls

__all__ = ["AsyncTlsTransport", "TlsCapable", "TlsSenders", "TlsTransport"]

T = TypeVar("T", httpx.BaseTransport, httpx.AsyncBaseTransport)


class TlsCapable(Protocol):
    """A base transport that makes its own TLS variant (the sidecar's ``AsyncHTTP1Transport``)."""

    def tls_variant(self, context: ssl.SSLContext, verify_peer: PeerCheck | None) -> httpx.AsyncBaseTransport: ...


class _Generation(Generic[T]):
    """The transport built for one version of the material, and how many responses still use it."""

    __slots__ = ("active", "retired", "transport", "version")

    def __init__(self, version: int, transport: T) -> None:
        self.version = version
        self.transport: T = transport
        self.active = 0
        self.retired = False


class _Generations(Generic[T]):
    """Which transport a request takes, and when an old one may close: the bookkeeping, without I/O."""

    def __init__(self, tls: ClusterTls, build: Callable[[ssl.SSLContext, PeerCheck | None], T]) -> None:
        self.tls = tls
        self._build: Callable[[ssl.SSLContext, PeerCheck | None], T] = build
        self._lock = threading.Lock()  # sync clients send from many threads
        self._current: _Generation[T] | None = None
        self._closed = False

    def acquire(self) -> tuple[_Generation[T], T | None]:
        """The generation for a new request (counted as in use), and an old transport to close now, if any."""
        version, context = self.tls.current()
        idle = None
        with self._lock:
            if self._closed:
                raise RuntimeError("the transport is closed")
            gen = self._current
            if gen is None or gen.version != version:
                old = gen
                gen = self._current = _Generation(version, self._build(context, self.tls.verify_peer))
                if old is not None:
                    old.retired = True
                    if old.active == 0:
                        idle = old.transport
            gen.active += 1
        return gen, idle

    def release(self, gen: _Generation[T]) -> T | None:
        """A response is done with ``gen``: its transport, when it is retired and now unused (to close)."""
        with self._lock:
            gen.active -= 1
            return gen.transport if gen.retired and gen.active == 0 else None

    def retire(self) -> T | None:
        """No new requests: the current transport, to close now if unused (else its last response closes it)."""
        with self._lock:
            gen, self._current = self._current, None
            if gen is None:
                return None
            gen.retired = True
            return gen.transport if gen.active == 0 else None

    def close(self) -> T | None:
        """Closing for good: the current transport, to close now whatever is in flight."""
        with self._lock:
            self._closed = True
            gen, self._current = self._current, None
        return gen.transport if gen is not None else None


def _whole(stream: object) -> bool:
    """Whether a response body is all here: in memory, or saying so (the sidecar's pooled client's ``complete``)."""
    return isinstance(stream, httpx.ByteStream) or getattr(stream, "complete", False) is True


class _Releasing(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Passes a body through and tells its generation once, when the body closes."""

    __slots__ = ("_done", "_release", "_stream")

    def __init__(self, stream: Any, release: Callable[[], Any]) -> None:
        self._stream = stream
        self._release = release
        self._done = False

    @property
    def complete(self) -> bool:
        """What the inner stream says (the mesh's body deadline is off once a body is all here)."""
        return _whole(self._stream)

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    def _finish(self) -> Any:
        if self._done:
            return None
        self._done = True
        return self._release()

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            idle = self._finish()
            if idle is not None:
                idle.close()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            idle = self._finish()
            if idle is not None:
                await idle.aclose()


class TlsTransport(httpx.BaseTransport):
    """Sends to one TLS cluster through a transport built for its material in force (sync)."""

    def __init__(self, tls: ClusterTls, build: Callable[[ssl.SSLContext, PeerCheck | None], httpx.BaseTransport]):
        self._generations = _Generations(tls, build)
        self._sni = tls.server_name

    @property
    def tls(self) -> ClusterTls:
        return self._generations.tls

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        generations = self._generations
        gen, idle = generations.acquire()
        if idle is not None:
            idle.close()
        if self._sni is not None:
            request.extensions["sni_hostname"] = self._sni
        try:
            response = gen.transport.handle_request(request)
        except BaseException:
            idle = generations.release(gen)
            if idle is not None:
                idle.close()
            raise
        if _whole(response.stream):
            # Read whole already: its connection is back in the pool, nothing more of this response uses gen.
            idle = generations.release(gen)
            if idle is not None:
                idle.close()
        else:
            response.stream = _Releasing(response.stream, lambda: generations.release(gen))
        return response

    def retire(self) -> None:
        idle = self._generations.retire()
        if idle is not None:
            idle.close()

    def close(self) -> None:
        transport = self._generations.close()
        if transport is not None:
            transport.close()


class AsyncTlsTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`TlsTransport`."""

    def __init__(
        self, tls: ClusterTls, build: Callable[[ssl.SSLContext, PeerCheck | None], httpx.AsyncBaseTransport]
    ) -> None:
        self._generations = _Generations(tls, build)
        self._sni = tls.server_name

    @property
    def tls(self) -> ClusterTls:
        return self._generations.tls

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        generations = self._generations
        gen, idle = generations.acquire()
        if idle is not None:
            await idle.aclose()
        if self._sni is not None:
            request.extensions["sni_hostname"] = self._sni
        try:
            response = await gen.transport.handle_async_request(request)
        except BaseException:
            idle = generations.release(gen)
            if idle is not None:
                await idle.aclose()
            raise
        if _whole(response.stream):
            idle = generations.release(gen)
            if idle is not None:
                await idle.aclose()
        else:
            response.stream = _Releasing(response.stream, lambda: generations.release(gen))
        return response

    async def retire(self) -> None:
        idle = self._generations.retire()
        if idle is not None:
            await idle.aclose()

    async def aclose(self) -> None:
        transport = self._generations.close()
        if transport is not None:
            await transport.aclose()


def _httpx_sync(context: ssl.SSLContext, verify_peer: PeerCheck | None) -> httpx.BaseTransport:
    transport = httpx.HTTPTransport(verify=context)
    if verify_peer is not None:
        from meshlib._tls.backends import checking_backend  # httpcore loads only where an httpcore transport is used

        # httpx takes no network backend: its pool's is wrapped, as interrupt.make_interruptible does.
        pool = transport._pool
        pool._network_backend = checking_backend(pool._network_backend, verify_peer)
    make_interruptible(transport)
    return transport


def _httpx_async(context: ssl.SSLContext, verify_peer: PeerCheck | None) -> httpx.AsyncBaseTransport:
    from meshlib._tls.backends import AsyncCheckingBackend  # httpcore loads only where an httpcore transport is used

    transport = httpx.AsyncHTTPTransport(verify=context)
    pool = transport._pool
    pool._network_backend = AsyncCheckingBackend(pool._network_backend, verify_peer)  # also maps TLS errors
    return transport


class TlsSenders:
    """One front door's transports for TLS clusters, made on first use from its base transport(s).

    ``sync(tls)`` / ``async_(tls)`` return the transport for a cluster's
    ``tls``; those of clusters whose ``tls`` a reload dropped are retired
    (closed once idle) when a new one is made. ``close()`` / ``aclose()``
    close them all, with the front door.
    """

    def __init__(
        self, *, sync_base: httpx.BaseTransport | None = None, async_base: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._sync_base = sync_base
        self._async_base = async_base
        self._lock = threading.Lock()
        self._sync: dict[ClusterTls, httpx.BaseTransport] = {}
        self._async: dict[ClusterTls, httpx.AsyncBaseTransport] = {}

    def sync(self, tls: ClusterTls) -> httpx.BaseTransport:
        transport = self._sync.get(tls)
        if transport is None:
            transport = self._add_sync(tls)
        return transport

    def _add_sync(self, tls: ClusterTls) -> httpx.BaseTransport:
        base = self._sync_base
        if isinstance(base, httpx.MockTransport):
            return base  # no network I/O, so nothing to secure: a test double answers as it is told
        with self._lock:
            transport = self._sync.get(tls)
            if transport is None:
                stale = [t for t in self._sync if t.closed and t is not tls]
                transport = self._sync[tls] = TlsTransport(tls, _httpx_sync)
                retired = [self._sync.pop(t) for t in stale]
        for old in retired:
            if isinstance(old, TlsTransport):
                old.retire()
        return transport

    def async_built(self, tls: ClusterTls) -> httpx.AsyncBaseTransport | None:
        """The async transport for ``tls`` when there is one already (every request but the first): no await."""
        return self._async.get(tls)

    async def async_(self, tls: ClusterTls) -> httpx.AsyncBaseTransport:
        transport = self._async.get(tls)
        if transport is not None:
            return transport
        base = self._async_base
        if isinstance(base, httpx.MockTransport):
            return base
        variant = getattr(base, "tls_variant", None)
        stale = [t for t in self._async if t.closed and t is not tls]
        transport = self._async[tls] = AsyncTlsTransport(tls, variant if variant is not None else _httpx_async)
        for old in [self._async.pop(t) for t in stale]:
            if isinstance(old, AsyncTlsTransport):
                await old.retire()
        return transport

    def close(self) -> None:
        with self._lock:
            transports, self._sync = list(self._sync.values()), {}
        for transport in transports:
            transport.close()

    async def aclose(self) -> None:
        transports, self._async = list(self._async.values()), {}
        for transport in transports:
            await transport.aclose()
