"""Tunnels: raw bytes both ways between a client connection and an upstream, after CONNECT or an upgrade.

* :func:`open_connect` answers ``CONNECT host:port``: the listener's
  :data:`ConnectPolicy` says whether it may, then the TCP connection is
  opened (within :data:`CONNECT_TIMEOUT`); a refusal is a whole response.
* :class:`TcpTunnel` (CONNECT host:port): the listener opens a TCP connection
  itself and joins two asyncio transports. Half-close aware: an end of stream
  from one side is passed on as a half-close to the other, and the tunnel
  closes once both sides have finished (or either one is lost).
* :class:`StreamTunnel` (``Upgrade: websocket`` answered 101): the sender's
  response carries the upstream connection as ``extensions["network_stream"]``
  (async ``read``/``write``/``aclose``, as httpcore returns it); two pumps move
  the bytes. The tunnel ends when the upstream closes. The client's end of
  stream is passed on as a half-close when the stream has a ``write_eof``
  (the sidecar's pooled upstream client does); httpcore's streams have none,
  so there it ends the tunnel.

Both apply flow control: a side that can't keep up pauses reading on the other.
The listener's connection protocol forwards its client-side events
(``client_data``, ``client_eof``, ``client_lost``, pause/resume writing) to
the tunnel it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, Final, Protocol, cast

from meshlib._engine.errors import describe
from meshlib._errors import MeshError, RouteNotFoundError, UpstreamConnectError
from meshlib._frontdoors.sidecar_requests import ConnectPolicy
from meshlib._sidecar import http1
from meshlib._transport.flow import HIGH_WATER, LOW_WATER
from meshlib._wire import error_head

__all__ = [
    "CONNECTED",
    "CONNECT_TIMEOUT",
    "ConnectPolicy",
    "NetworkStream",
    "StreamTunnel",
    "TcpTunnel",
    "Tunnel",
    "open_connect",
]

CONNECT_TIMEOUT: Final = 10.0
# What an accepted CONNECT is answered, before the tunnel runs.
CONNECTED: Final = b"HTTP/1.1 200 Connection established\r\n\r\n"
_READ_SIZE: Final = 64 * 1024


class NetworkStream(Protocol):
    """The upstream connection an upgrade response hands over (httpcore's ``AsyncNetworkStream`` shape)."""

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes: ...  # noqa: ASYNC109

    async def write(self, buffer: bytes, timeout: float | None = None) -> None: ...  # noqa: ASYNC109

    async def aclose(self) -> None: ...


class Tunnel(Protocol):
    """What the listener's connection calls once it has handed its client transport to a tunnel."""

    def client_data(self, data: bytes) -> None: ...

    def client_eof(self) -> bool: ...

    def client_lost(self) -> None: ...

    def client_pause_writing(self) -> None: ...

    def client_resume_writing(self) -> None: ...


def _half_close(transport: asyncio.WriteTransport) -> bool:
    """Send an end of stream, keeping the read side open; False when the transport can't."""
    if transport.is_closing():
        return False
    try:
        if transport.can_write_eof():
            transport.write_eof()
            return True
    except (OSError, RuntimeError):
        pass
    return False


class _UpstreamSide(asyncio.Protocol):
    """The TCP connection a CONNECT tunnel opened: its events go to the tunnel."""

    def __init__(self, tunnel: TcpTunnel) -> None:
        self.tunnel = tunnel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Nothing may reach the client before its "200 Connection established": run() resumes reading.
        cast(asyncio.Transport, transport).pause_reading()  # uvloop's transports aren't subclasses

    def data_received(self, data: bytes) -> None:
        self.tunnel.upstream_data(data)

    def eof_received(self) -> bool:
        return self.tunnel.upstream_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.upstream_lost()

    def pause_writing(self) -> None:
        self.tunnel.client.pause_reading()

    def resume_writing(self) -> None:
        if not self.tunnel.client.is_closing():
            self.tunnel.client.resume_reading()


class TcpTunnel:
    """Joins the client's transport and a TCP connection to ``host:port``; ``done`` resolves when both closed."""

    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client
        self.upstream: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._client_eof = False
        self._upstream_eof = False

    @classmethod
    async def open(cls, client: asyncio.Transport, host: str, port: int, *, connect_timeout: float) -> TcpTunnel:
        """Connect to ``host:port`` within ``connect_timeout`` seconds (raises OSError or TimeoutError)."""
        tunnel = cls(client)
        loop = asyncio.get_running_loop()
        connecting = loop.create_connection(lambda: _UpstreamSide(tunnel), host, port)
        transport, _ = await asyncio.wait_for(connecting, connect_timeout)
        tunnel.upstream = transport
        return tunnel

    async def run(self, initial: bytes) -> None:
        """Forward ``initial`` (client bytes that came with the CONNECT) and wait until the tunnel is over."""
        if initial:
            self.client_data(initial)
        if self.upstream is not None and not self.upstream.is_closing():
            self.upstream.resume_reading()
        try:
            await self.done
        finally:
            self.close()

    def close(self) -> None:
        """Close both sides (pending bytes are still written)."""
        if self.upstream is not None:
            self.upstream.close()
        self.client.close()
        if not self.done.done():
            self.done.set_result(None)

    def _finish_if_both_ended(self) -> None:
        if self._client_eof and self._upstream_eof:
            self.close()

    # client → upstream
    def client_data(self, data: bytes) -> None:
        if self.upstream is not None and not self.upstream.is_closing():
            self.upstream.write(data)

    def client_eof(self) -> bool:
        self._client_eof = True
        if self.upstream is None or not _half_close(self.upstream):
            self.close()
            return False
        self._finish_if_both_ended()
        return not self.done.done()

    def client_lost(self) -> None:
        self.close()

    def client_pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def client_resume_writing(self) -> None:
        if self.upstream is not None and not self.upstream.is_closing():
            self.upstream.resume_reading()

    # upstream → client
    def upstream_data(self, data: bytes) -> None:
        if not self.client.is_closing():
            self.client.write(data)

    def upstream_eof(self) -> bool:
        self._upstream_eof = True
        if not _half_close(self.client):
            self.close()
            return False
        self._finish_if_both_ended()
        return not self.done.done()

    def upstream_lost(self) -> None:
        self.close()


class StreamTunnel:
    """Joins the client's transport and an upgraded upstream ``NetworkStream`` with two pumps."""

    def __init__(self, client: asyncio.Transport, stream: NetworkStream) -> None:
        self.client = client
        self.stream = stream
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._client_eof = False
        self._lost = False
        self._client_paused = False  # the client's transport asked us to stop writing to it
        self._reading_paused = False  # we paused reading from the client
        self._wake_up: asyncio.Future[None] | None = None  # the up pump waits for client bytes
        self._wake_down: asyncio.Future[None] | None = None  # the down pump waits until the client is writable
        # Resolved when the tunnel must end before the upstream closes: True to abort the client's connection
        # (it is gone, or writing upstream failed), False to close it after what was written.
        self._ended: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def _end(self, *, abort: bool) -> None:
        if not self._ended.done():
            self._ended.set_result(abort)

    async def run(self, initial: bytes) -> None:
        """Pump until the upstream closes, either pump fails or the client goes away; then close both."""
        if initial:
            self.client_data(initial)
        loop = asyncio.get_running_loop()
        down = loop.create_task(self._pump_down())
        up = loop.create_task(self._pump_up())
        failed = False
        try:
            waiting: list[asyncio.Future[Any]] = [down, self._ended]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            for task in (up, down):
                with contextlib.suppress(BaseException):
                    await task
                failed = failed or (task.done() and not task.cancelled() and task.exception() is not None)
            with contextlib.suppress(Exception):
                await self.stream.aclose()
            if failed or (self._ended.done() and self._ended.result()):
                self.client.abort()
            else:
                self.client.close()

    async def _pump_down(self) -> None:
        """Upstream → client, until the upstream's end of stream."""
        loop = asyncio.get_running_loop()
        while not self._lost:
            data = await self.stream.read(_READ_SIZE)
            if not data:
                break
            if self.client.is_closing():
                return
            self.client.write(data)
            if self._client_paused:
                self._wake_down = loop.create_future()
                await self._wake_down

    async def _pump_up(self) -> None:
        """Client → upstream, until the client's end of stream."""
        try:
            await self._pump_up_until_eof()
        except Exception:
            self._end(abort=True)
            raise

    async def _pump_up_until_eof(self) -> None:
        loop = asyncio.get_running_loop()
        stream: Any = self.stream
        while True:
            while self._queue:
                data = self._queue.popleft()
                self._queued -= len(data)
                if self._reading_paused and self._queued <= LOW_WATER and not self.client.is_closing():
                    self._reading_paused = False
                    self.client.resume_reading()
                await self.stream.write(data)
            if self._client_eof or self._lost:
                break
            self._wake_up = loop.create_future()
            await self._wake_up
        if self._lost:
            return
        write_eof = getattr(stream, "write_eof", None)
        if write_eof is None:
            self._end(abort=False)
            return
        result = write_eof()
        if asyncio.iscoroutine(result):
            await result

    def _wake(self, which: str) -> None:
        waiter: asyncio.Future[None] | None = getattr(self, which)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def client_data(self, data: bytes) -> None:
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.client.pause_reading()
        self._wake("_wake_up")

    def client_eof(self) -> bool:
        self._client_eof = True
        self._wake("_wake_up")
        self._wake("_wake_down")
        return True

    def client_lost(self) -> None:
        self._lost = True
        self._client_eof = True
        self._end(abort=True)

    def client_pause_writing(self) -> None:
        self._client_paused = True

    def client_resume_writing(self) -> None:
        self._client_paused = False
        self._wake("_wake_down")


async def open_connect(
    policy: ConnectPolicy | None, client: asyncio.Transport, host: str, port: int
) -> TcpTunnel | bytes:
    """Answer ``CONNECT host:port`` from ``client``: the tunnel, opened (the caller answers :data:`CONNECTED` and
    runs it), or the whole response that refuses it: 405 without a ``policy``; the MeshError's answer when the
    policy refuses (False or a raised MeshError) or the connection fails (an UpstreamConnectError)."""
    if policy is None:
        return http1.plain_error(405, "CONNECT is not served on this listener")
    try:
        if not await policy(host, port):
            raise RouteNotFoundError(f"CONNECT to {host}:{port} is not allowed: outbound_policy is registry_only")
        try:
            return await TcpTunnel.open(client, host, port, connect_timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise UpstreamConnectError(f"CONNECT {host}:{port}: {describe(exc)}") from exc
    except MeshError as error:
        status, headers, body = error_head(error)
        return http1.local_response(status, headers, body, close=True)
