"""Network backends for httpx's transports that check the upstream's identity once TLS is up, before any write.

httpcore opens a connection with the backend's ``connect_tcp`` and then
calls ``start_tls`` on the stream; the wrapped stream runs the check on the
TLS stream it gets back and closes it on a mismatch, so the request is never
written (the sidecar's upstream client does the same in ``_transport/``).

The async TLS stream also maps ``ssl.SSLError`` raised by a read or write
(an upstream that refuses this workload's certificate says so with an alert
after the handshake, in TLS 1.3) to httpcore's ``ReadError``/``WriteError``:
httpcore's anyio backend lets it through unmapped, while its sync backend
maps it, so both modes raise the mesh's error for it.

Its classes subclass httpcore's, so this module imports httpcore:
``senders.py`` imports it only when it builds an httpx transport for a TLS
cluster, so neither the sidecar nor a mesh on ``AsyncHTTP1Transport`` loads
it (nor httpcore, nor trio, which httpcore imports when it is installed).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from typing import Any

import httpcore

from meshlib._engine.interrupt_backend import WrappingBackend

__all__ = ["AsyncCheckingBackend", "PeerCheck", "checking_backend"]

PeerCheck = Callable[[Any], None]
"""Called with a new connection's SSL object; raises to refuse the peer."""


class _CheckingStream(httpcore.NetworkStream):
    """A plaintext stream whose ``start_tls`` returns the TLS stream only once ``check`` accepted the peer."""

    def __init__(self, inner: httpcore.NetworkStream, check: PeerCheck) -> None:
        self._inner = inner
        self._check = check

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(ssl_context, server_hostname, timeout)
        try:
            self._check(stream.get_extra_info("ssl_object"))
        except BaseException:
            stream.close()
            raise
        return stream

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def checking_backend(inner: httpcore.NetworkBackend, check: PeerCheck) -> httpcore.NetworkBackend:
    """``inner`` (a sync pool's backend) with each new TLS connection's peer checked by ``check``."""
    return WrappingBackend(inner, lambda stream: _CheckingStream(stream, check))


class _AsyncCheckingStream(httpcore.AsyncNetworkStream):
    """The async twin of :class:`_CheckingStream` (``check`` None: no check, only the mapping of TLS errors)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream, check: PeerCheck | None) -> None:
        self._inner = inner
        self._check = check

    # httpcore's stream and backend interface passes timeouts as arguments (ASYNC109 below).
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        try:
            if self._check is not None:
                self._check(stream.get_extra_info("ssl_object"))
        except BaseException:
            await stream.aclose()
            raise
        return _AsyncTlsStream(stream)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncTlsStream(httpcore.AsyncNetworkStream):
    """An async TLS stream whose ``ssl.SSLError`` becomes httpcore's ReadError or WriteError (its cause kept)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        try:
            return await self._inner.read(max_bytes, timeout)
        except ssl.SSLError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        try:
            await self._inner.write(buffer, timeout)
        except ssl.SSLError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.start_tls(ssl_context, server_hostname, timeout)  # TLS in TLS: a proxy's, unused

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class AsyncCheckingBackend(httpcore.AsyncNetworkBackend):
    """An async pool's network backend: TLS connections checked by ``check`` (if any) before use, errors mapped."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, check: PeerCheck | None) -> None:
        self._inner = inner
        self._check = check

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _AsyncCheckingStream(stream, self._check)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(path, timeout, socket_options)
        return _AsyncCheckingStream(stream, self._check)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
