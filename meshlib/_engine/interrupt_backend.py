"""The network backend that lets a sync try's reads and writes be interrupted, and ended at its deadline.

What ``interrupt.py`` describes, as httpcore's pools take it: the stream and
backend classes subclass httpcore's, so this module imports httpcore, which
``interrupt.py`` (read on every sync try) must not. It is imported only where
an httpcore transport is in use: by ``make_interruptible`` for an
``httpx.HTTPTransport``, and by the TLS and sidecar-client backends that wrap
such a transport's pool. A sidecar, or a mesh on ``AsyncHTTP1Transport``,
never loads it (nor httpcore, nor trio, which httpcore imports when installed).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import httpcore

from meshlib._engine.interrupt import CURRENT, READ_DEADLINE, Interrupt, TryInterrupted
from meshlib._errors import chained

__all__ = ["InterruptibleBackend", "WrappingBackend"]


class _Stream(httpcore.NetworkStream):
    """A network stream whose reads and writes the current try's Interrupt can cut short."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        self._sock: socket.socket | None = inner.get_extra_info("socket")

    def _guarded(self, interrupt: Interrupt, fn: Any, *args: Any) -> Any:
        interrupt.enter(self._sock)
        try:
            result = fn(*args)
        except Exception:
            if interrupt.interrupted:
                raise chained(TryInterrupted(), None)  # noqa: B904 (mypyc drops "from")
            raise
        finally:
            interrupt.leave()
        if interrupt.interrupted:  # the read ended because the socket was shut down: nothing to trust
            raise TryInterrupted
        return result

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        deadline = READ_DEADLINE.get()
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise httpcore.ReadTimeout("the try's deadline passed")
            if timeout is None or left < timeout:
                timeout = left
        interrupt = CURRENT.get()
        if interrupt is None:
            return self._inner.read(max_bytes, timeout)
        data: bytes = self._guarded(interrupt, self._inner.read, max_bytes, timeout)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        interrupt = CURRENT.get()
        if interrupt is None:
            self._inner.write(buffer, timeout)
        else:
            self._guarded(interrupt, self._inner.write, buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class WrappingBackend(httpcore.NetworkBackend):
    """A connection pool's network backend whose connections come wrapped by ``wrap`` (a stream of its own)."""

    def __init__(
        self, inner: httpcore.NetworkBackend, wrap: Callable[[httpcore.NetworkStream], httpcore.NetworkStream]
    ) -> None:
        self._inner = inner
        self._wrap = wrap

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        return self._wrap(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        return self._wrap(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class InterruptibleBackend(WrappingBackend):
    """Wraps a connection pool's network backend so that its streams honour the current try's Interrupt."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        super().__init__(inner, _Stream)
