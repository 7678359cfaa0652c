"""The connections to the sidecar of an httpx transport, keeping their last reads (see ``sidecar_body.py``).

These streams subclass httpcore's, so this module imports httpcore; only
``sidecar_body.keep_tails`` imports it, for an ``httpx.HTTPTransport`` or
``AsyncHTTPTransport`` to the sidecar (which has loaded httpcore already).
"""

from __future__ import annotations

import ssl
from typing import Any

import httpcore
import httpx

from meshlib._engine.interrupt_backend import WrappingBackend
from meshlib._frontdoors.sidecar_body import _Tail

__all__ = ["keep_tails"]


def keep_tails(transport: httpx.HTTPTransport | httpx.AsyncHTTPTransport) -> None:
    """Let ``transport``'s connections keep their last reads (what ``sidecar_body.keep_tails`` does)."""
    pool = transport._pool
    if isinstance(pool, httpcore.ConnectionPool):
        pool._network_backend = WrappingBackend(pool._network_backend, _TailStream)
    elif isinstance(pool, httpcore.AsyncConnectionPool):
        pool._network_backend = _AsyncTailBackend(pool._network_backend)


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
