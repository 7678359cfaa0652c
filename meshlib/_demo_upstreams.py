"""Tiny local HTTP upstreams for ``meshlib demo``: asyncio servers on 127.0.0.1 that reply with who they are.

All upstreams share one event loop in one background thread. The stdlib's
``ThreadingHTTPServer`` was tried first: its thread per connection fights the
demo's client for the GIL and halves the demo's throughput. The HTTP/1.1
server side here is deliberately minimal (keep-alive, ``Content-Length``
bodies; no chunked uploads), enough for an httpx client; header parsing is
the stdlib's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import io
import json
import socket
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Self

__all__ = ["ROUTE_HEADER", "PortUnavailableError", "Upstream", "UpstreamGroup"]

ROUTE_HEADER = "x-mesh-route"  # the demo's routes set it; upstreams report it back as "route"

_MAX_HEAD = 64 * 1024  # bytes of request line + headers
_MAX_BODY = 1024 * 1024
_IDLE_TIMEOUT = 30.0  # a connection idle this long is closed (a safety net; the demo closes its clients)
_STOP_TIMEOUT = 5.0


class Upstream:
    """One upstream service instance: its identity (service, version, cluster) and, once started, its port."""

    def __init__(self, service: str, version: str, cluster: str, port: int = 0) -> None:
        self.service = service
        self.version = version
        self.cluster = cluster
        self.port = port  # 0: a free port, chosen when the group starts

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reply(self, method: str, target: str, headers: http.client.HTTPMessage) -> bytes:
        """The JSON body: who answered, and what arrived (path after rewrites, Host, the route's stamp)."""
        return json.dumps(
            {
                "service": self.service,
                "version": self.version,
                "cluster": self.cluster,
                "port": self.port,
                "method": method,
                "path": target,
                "host": headers.get("host"),
                "route": headers.get(ROUTE_HEADER),
            }
        ).encode()


def _response(status: int, reason: str, body: bytes, *, close: bool, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
        + ("connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode("latin-1") + body


async def _serve_connection(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _IDLE_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            request_line, _, rest = head.partition(b"\r\n")
            parts = request_line.decode("latin-1").split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                writer.write(_response(400, "Bad Request", b"bad request line", close=True, content_type="text/plain"))
                await writer.drain()
                return
            method, target, version = parts
            headers = http.client.parse_headers(io.BytesIO(rest))
            if headers.get("transfer-encoding"):
                writer.write(_response(501, "Not Implemented", b"chunked", close=True, content_type="text/plain"))
                await writer.drain()
                return
            length = int(headers.get("content-length") or 0)
            if not 0 <= length <= _MAX_BODY:
                writer.write(_response(413, "Content Too Large", b"", close=True, content_type="text/plain"))
                await writer.drain()
                return
            if length:
                await reader.readexactly(length)
            close = version == "HTTP/1.0" or (headers.get("connection") or "").lower() == "close"
            body = upstream.reply(method, target, headers)
            writer.write(_response(200, "OK", b"" if method == "HEAD" else body, close=close))
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError, http.client.HTTPException):
        return
    finally:
        writer.close()


class PortUnavailableError(OSError):
    """An upstream's port could not be bound (taken by another process, most often)."""

    def __init__(self, port: int, cause: OSError) -> None:
        reason = "address already in use" if cause.errno == errno.EADDRINUSE else (cause.strerror or str(cause))
        super().__init__(cause.errno, f"cannot listen on 127.0.0.1:{port}: {reason}")
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


class UpstreamGroup:
    """Runs upstreams on one event loop in a background thread; a context manager that always stops them all."""

    def __init__(self, upstreams: Sequence[Upstream]) -> None:
        self.upstreams = list(upstreams)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="meshlib-demo-upstreams", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start_servers(), loop).result(_STOP_TIMEOUT)

    async def _start_servers(self) -> None:
        for upstream in self.upstreams:
            # Bind the socket here: asyncio would otherwise resolve "127.0.0.1" in an executor thread.
            try:
                sock = socket.create_server(("127.0.0.1", upstream.port))
            except OSError as exc:
                raise PortUnavailableError(upstream.port, exc) from exc
            upstream.port = sock.getsockname()[1]

            async def handle(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Upstream = upstream
            ) -> None:
                task = asyncio.current_task()
                if task is not None:
                    self._connections[task] = writer
                    task.add_done_callback(self._forget)
                # Only _stop_servers cancels, and only a connection that outlived its abort. Returning
                # (not re-raising) matters on 3.11: its stream callback logs an error for cancelled tasks.
                with contextlib.suppress(asyncio.CancelledError):
                    await _serve_connection(upstream, reader, writer)

            self._servers.append(await asyncio.start_server(handle, sock=sock, limit=_MAX_HEAD))

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._connections.pop(task, None)

    async def _stop_servers(self) -> None:
        for server in self._servers:
            server.close()
        # Cut the open connections: each handler then sees EOF and ends normally.
        for writer in list(self._connections.values()):
            writer.transport.abort()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=_STOP_TIMEOUT / 2)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=_STOP_TIMEOUT / 2)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        try:
            if thread.is_alive():
                asyncio.run_coroutine_threadsafe(self._stop_servers(), loop).result(_STOP_TIMEOUT)
                asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(_STOP_TIMEOUT)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_STOP_TIMEOUT)
            if not thread.is_alive():
                loop.close()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
