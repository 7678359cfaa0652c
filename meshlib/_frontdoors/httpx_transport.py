"""In-process front door: httpx transports that send through the mesh, and wrap() for existing clients."""

from __future__ import annotations

import threading
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from meshlib._engine import outbound
from meshlib._engine.interrupt import interrupts_needed, make_interruptible
from meshlib._frontdoors.httpx_send import FreedWhenClosed, send
from meshlib._tls.senders import TlsSenders

if TYPE_CHECKING:
    from meshlib._mesh import Mesh
    from meshlib._snapshot.snapshot import Snapshot

__all__ = ["AsyncMeshTransport", "MeshTransport", "quick_cookies", "wrap"]

C = TypeVar("C", httpx.Client, httpx.AsyncClient)


class MeshTransport(httpx.BaseTransport):
    """An ``httpx.BaseTransport`` that routes each request through a :class:`meshlib.Mesh`.

    ``inner`` does the network I/O (default: ``httpx.HTTPTransport()``); since
    it is httpx's own transport, respx mocks sit under the whole mesh. When
    the mesh's config has a hedge or a timeout for a sync try
    (``interrupts_needed``), an ``httpx.HTTPTransport`` gets a network
    backend that lets a winning hedge interrupt a try blocked in a read, and
    ends a read at the try's deadline (see ``_engine/interrupt.py``): at
    once, or at the first request after a reload that brings one in. Until
    then, httpx's own backend is left untouched. Clusters with ``tls`` are
    sent through transports of the mesh's own, built with their TLS settings
    (an ``httpx.MockTransport`` inner is used for them too: it does no
    network I/O).
    """

    def __init__(self, mesh: Mesh, inner: httpx.BaseTransport | None = None) -> None:
        self.mesh = mesh
        self.inner = inner if inner is not None else httpx.HTTPTransport()
        self._tls = TlsSenders(sync_base=self.inner)
        self._lock = threading.Lock()
        self._interruptible = False  # the backend is installed (never taken out: a reload may bring it back)
        self._checked: Snapshot | None = None  # the snapshot whose config was last asked
        self._check(mesh.snapshot)

    def _check(self, snapshot: Snapshot) -> None:
        """Install the interrupting backend if ``snapshot``'s config needs it (once per snapshot, and only once)."""
        with self._lock:
            if self._checked is snapshot:
                return
            if not self._interruptible and interrupts_needed(snapshot.config):
                make_interruptible(self.inner)
                self._interruptible = True
            self._checked = snapshot

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # One read of the current snapshot: a reload mid-request does not change this request's view.
        snapshot = self.mesh.snapshot
        if snapshot is not self._checked:  # a reload since: it may bring the first hedge or timeout
            self._check(snapshot)
        return send(snapshot, request, self.inner, self._tls, _CLOSED_SYNC)

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self._tls.close()


class AsyncMeshTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`MeshTransport`, for ``httpx.AsyncClient``."""

    def __init__(self, mesh: Mesh, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.mesh = mesh
        self.inner = inner if inner is not None else httpx.AsyncHTTPTransport()
        self._tls = TlsSenders(async_base=self.inner)

    def handle_async_request(self, request: httpx.Request) -> Coroutine[Any, Any, httpx.Response]:
        """Send ``request`` through the mesh: await it, as httpx does (the engine's compiled coroutine, no frame of
        this door's)."""
        return outbound.handle_async(self.mesh.snapshot, request, self.inner, self._tls, _FREED_ASYNC)

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            await self._tls.aclose()


class _ClosedSync(httpx.SyncByteStream):
    """A closed sync response's stream: nothing more to read (httpx checks before it would try)."""

    def __iter__(self) -> Iterator[bytes]:
        return iter(())


class _ClosedAsync(httpx.AsyncByteStream):
    """A closed async response's stream: nothing more to read, and still an async one, as httpx checks on close."""

    def __aiter__(self) -> _ClosedAsync:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


class _MeshCookies(httpx.Cookies):
    """A client's cookies, as httpx keeps them, that skip a response which sets none.

    httpx hands every response to ``extract_cookies``, which builds urllib's
    request and response views of it and has ``http.cookiejar`` parse its
    headers: about 11 µs a request, for the few responses that carry a
    ``Set-Cookie``. Those still go through httpx's own code; the others leave
    the jar as it would have left them.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        # httpx's (raw name, lower-case name, value) entries: a scan, no copy of the headers.
        for entry in response.headers._list:
            if entry[1] == b"set-cookie" or entry[1] == b"set-cookie2":
                super().extract_cookies(response)
                return


_CLOSED_SYNC = _ClosedSync()
_FREED_ASYNC = FreedWhenClosed(_ClosedAsync())


def wrap(client: C, mesh: Mesh) -> C:
    """Put an existing client's traffic through ``mesh``, keeping all of its own settings.

    The client's transport (and any mounted transports, such as proxies taken
    from the environment) become the mesh's inner transports. Returns the same
    client object. Wrapping a client twice with the same mesh is a no-op.
    """
    if isinstance(client, httpx.AsyncClient):
        if not isinstance(client._transport, AsyncMeshTransport):
            client._transport = AsyncMeshTransport(mesh, client._transport)
        client._mounts = {
            pattern: t if t is None or isinstance(t, AsyncMeshTransport) else AsyncMeshTransport(mesh, t)
            for pattern, t in client._mounts.items()
        }
    elif isinstance(client, httpx.Client):
        if not isinstance(client._transport, MeshTransport):
            client._transport = MeshTransport(mesh, client._transport)
        client._mounts = {
            pattern: t if t is None or isinstance(t, MeshTransport) else MeshTransport(mesh, t)
            for pattern, t in client._mounts.items()
        }
    else:
        raise TypeError(f"wrap() takes an httpx.Client or httpx.AsyncClient, not {type(client).__name__}")
    return quick_cookies(client)


def quick_cookies(client: C) -> C:
    """Have ``client``'s cookies skip responses that set none (see :class:`_MeshCookies`); returns the client.

    The same ``httpx.Cookies`` object, jar and all, so whoever holds it sees no change: only its
    ``extract_cookies`` gets quicker. Cookies of another class (a subclass of the user's) are left alone.
    """
    if type(client._cookies) is httpx.Cookies:
        client._cookies.__class__ = _MeshCookies
    return client
