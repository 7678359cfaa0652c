"""In-process front door: httpx transports that send through the mesh, and wrap() for existing clients."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import httpx

from meshlib._engine import outbound
from meshlib._engine.interrupt import make_interruptible
from meshlib._tls.senders import TlsSenders

if TYPE_CHECKING:
    from meshlib._mesh import Mesh

__all__ = ["AsyncMeshTransport", "MeshTransport", "wrap"]

C = TypeVar("C", httpx.Client, httpx.AsyncClient)


class MeshTransport(httpx.BaseTransport):
    """An ``httpx.BaseTransport`` that routes each request through a :class:`meshlib.Mesh`.

    ``inner`` does the network I/O (default: ``httpx.HTTPTransport()``); since
    it is httpx's own transport, respx mocks sit under the whole mesh. An
    ``httpx.HTTPTransport`` gets a network backend that lets a winning hedge
    interrupt a try blocked in a read (see ``_engine/interrupt.py``).
    Clusters with ``tls`` are sent through transports of the mesh's own,
    built with their TLS settings (an ``httpx.MockTransport`` inner is used
    for them too: it does no network I/O).
    """

    def __init__(self, mesh: Mesh, inner: httpx.BaseTransport | None = None) -> None:
        self.mesh = mesh
        self.inner = inner if inner is not None else httpx.HTTPTransport()
        make_interruptible(self.inner)
        self._tls = TlsSenders(sync_base=self.inner)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # One read of the current snapshot: a reload mid-request does not change this request's view.
        return outbound.handle(self.mesh.snapshot, request, self.inner, self._tls)

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

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await outbound.handle_async(self.mesh.snapshot, request, self.inner, self._tls)

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            await self._tls.aclose()


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
    return client
