"""The sidecar's upstream client: a pooled HTTP/1.1 ``httpx.AsyncBaseTransport`` on asyncio protocols and llhttp.

httpx's own transport spends about 1 ms of CPU per request at concurrency 16,
far too much for a proxy's data path. Here each connection is one asyncio
``Protocol`` feeding httptools' response parser (llhttp); a request writes its
head (and a small body) in one call and then waits on at most one future at a
time, with cheap FIFO alarms for its timeouts. The mesh's async engine drives
:class:`PooledTransport` like any httpx transport, as its innermost sender.

Per origin (scheme, host, port) the pool keeps idle connections, reused last
in first out, for at most ``keepalive_expiry`` seconds (5, as httpx's pool, so
both modes leave an upstream's keep-alive timeout the same margin). A
connection that got bytes or an end of stream while idle is closed, never
reused; a request that finds its reused connection closed by the server
before any response byte is sent once more on a fresh connection when it is
idempotent and its body can be replayed (the keep-alive race browsers retry).

llhttp has no end-of-stream signal, so truncation is judged here when the
connection is lost: a body delimited by the close ends there; any other
response that is not complete raises.

A host name is looked up once for all the connections being opened to it at
that moment (and looked up anew for later ones: nothing is cached). Lookups
run on a small thread pool (libuv's 4 threads under uvloop, the loop's
default executor under asyncio); one lookup per request would let a burst of
requests to a name that resolves slowly or not at all (a host the config no
longer routes, passed through) queue up there, and every later connection
needing a lookup, even to a healthy upstream, would wait behind them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, Final, cast

import httptools
import httpx

from meshlib._engine.alarms import Alarm, schedule
from meshlib._policies.retry import IDEMPOTENT_METHODS

__all__ = ["PooledTransport"]

# Limits on a response head, as Envoy's defaults: 60 KiB and 100 header lines.
_MAX_HEAD_BYTES: Final = 60 * 1024
_MAX_HEADERS: Final = 100
# Response body flow control: stop reading the socket while this much body waits for the consumer.
_HIGH_WATER: Final = 256 * 1024
_LOW_WATER: Final = 64 * 1024

_DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}
_METHODS: Final = {m: m.encode() for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
_VERSIONS: Final = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}
_NO_TIMEOUTS: Final[dict[str, float | None]] = {}
_LAST_CHUNK: Final = b"0\r\n\r\n"


class _Timer(Alarm):
    """Resolves a wait's future with True (timed out) unless something woke it first."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[bool]) -> None:
        self.when = 0.0
        self.callback = None
        self.cancelled = False
        self.handle = None
        self.future: asyncio.Future[bool] | None = future

    def ring(self) -> None:
        future = self.future
        if future is not None and not future.done():
            future.set_result(True)

    def cancel(self) -> None:
        Alarm.cancel(self)
        self.future = None  # a cancelled alarm may wait in its queue a while: let the future go now


class _Response(httpx.AsyncByteStream):
    """One exchange on a connection: the response head as parsed, then its body as an ``AsyncByteStream``.

    The connection's parser callbacks fill it in; the body keeps the chunks the
    consumer has not taken yet. Once the message is complete and the connection
    went back to the pool (or closed), ``conn`` is None and only the buffered
    chunks remain.
    """

    __slots__ = (
        "buffered",
        "chunks",
        "close_delimited",
        "closed",
        "conn",
        "done",
        "error",
        "head_done",
        "head_only",
        "headers",
        "keep_alive",
        "read_timeout",
        "reason",
        "received",
        "request",
        "request_sent",
        "size",
        "stale",
        "status",
        "version",
    )

    def __init__(self, conn: _Connection, request: httpx.Request, keep_alive: bool, read_timeout: float | None) -> None:
        self.conn: _Connection | None = conn
        self.request = request
        self.keep_alive = keep_alive
        self.read_timeout = read_timeout
        self.head_only = request.method == "HEAD"
        self.status = 0
        self.reason = b""
        self.version = b"HTTP/1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.head_done = False
        self.done = False
        self.closed = False
        self.close_delimited = False
        self.request_sent = False
        self.received = 0  # bytes of the response so far, for the head size limit (counted until the head is done)
        self.size = 0  # bytes of the body so far
        self.stale = False
        self.error: httpx.TransportError | None = None

    @property
    def complete(self) -> bool:
        """Whether the whole body is here, so no read of it waits (the mesh's body wrapper then bounds nothing)."""
        return self.done

    def __aiter__(self) -> _Response:
        return self

    async def __anext__(self) -> bytes:
        chunks = self.chunks
        while True:
            if chunks:
                chunk = chunks.popleft()
                self.buffered -= len(chunk)
                conn = self.conn
                if conn is not None and conn.reading_paused and self.buffered <= _LOW_WATER:
                    conn.resume()
                return chunk
            if self.error is not None:
                raise self.error
            if self.done or self.closed:
                raise StopAsyncIteration
            conn = self.conn
            assert conn is not None  # attached until done
            try:
                timed_out = await conn.wait(self.read_timeout)
            except BaseException:
                conn.abort()  # cancelled mid-body: the rest of the body is unread, so the connection is lost
                raise
            if timed_out and not chunks and not self.done and self.error is None:
                self.error = httpx.ReadTimeout("Timed out reading the response body", request=self.request)
                conn.abort()

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        if conn is not None and not self.done:
            conn.abort()  # body not read to its end: the connection cannot carry another request
        self.chunks.clear()


class _NetworkStream:
    """The connection after ``101 Switching Protocols``: raw bytes both ways (``extensions["network_stream"]``)."""

    __slots__ = ("_buffer", "_conn")

    def __init__(self, conn: _Connection, leftover: bytes) -> None:
        self._conn = conn
        self._buffer = bytearray(leftover)

    def feed(self, data: bytes) -> None:
        self._buffer += data
        conn = self._conn
        if len(self._buffer) > _HIGH_WATER and not conn.reading_paused:
            conn.pause()
        conn.wake()

    async def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` bytes, waiting for at least one; b"" once the peer closed."""
        conn = self._conn
        buffer = self._buffer
        while not buffer:
            if conn.lost:
                if conn.lost_error is not None:
                    raise httpx.ReadError(str(conn.lost_error) or "Connection reset") from conn.lost_error
                return b""
            await conn.wait(None)
        data = bytes(buffer[:max_bytes])
        del buffer[:max_bytes]
        if conn.reading_paused and len(buffer) <= _LOW_WATER:
            conn.resume()
        return data

    async def write(self, data: bytes) -> None:
        """Send ``data``; waits while the socket's send buffer is full."""
        conn = self._conn
        if conn.lost or conn.transport is None or conn.transport.is_closing():
            raise httpx.WriteError("The upgraded connection is closed")
        conn.transport.write(data)
        await conn.drain(None, None)

    def write_eof(self) -> None:
        """Half-close: the peer sees the end of stream and may still answer (the tunnel passes a client's on)."""
        transport = self._conn.transport
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            raise httpx.WriteError("The upgraded connection cannot be half-closed")
        transport.write_eof()

    async def aclose(self) -> None:
        """Close the connection."""
        self._conn.close()

    def get_extra_info(self, info: str) -> Any:
        """The transport's extra info (``"peername"``, ``"ssl_object"``, ...), as httpcore's streams offer."""
        transport = self._conn.transport
        return transport.get_extra_info(info) if transport is not None else None


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: the protocol asyncio calls, and the protocol httptools' parser calls.

    At most one exchange at a time (no pipelining). ``usable`` turns False for
    good as soon as the connection must not carry another request.
    """

    __slots__ = (
        "counted",
        "drain_waiter",
        "exchange",
        "idle",
        "idle_since",
        "loop",
        "lost",
        "lost_error",
        "origin",
        "parser",
        "reading_paused",
        "reused",
        "transport",
        "tunnel",
        "usable",
        "waiter",
        "write_paused",
    )

    def __init__(self, origin: _Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Response | None = None
        self.tunnel: _NetworkStream | None = None
        self.waiter: asyncio.Future[bool] | None = None
        self.drain_waiter: asyncio.Future[bool] | None = None
        self.usable = False
        self.lost = False
        self.lost_error: Exception | None = None
        self.counted = True  # holds one of the origin's connection slots until lost or upgraded
        self.idle = False
        self.idle_since = 0.0  # loop time when it last went back to the pool
        self.reused = False
        self.reading_paused = False
        self.write_paused = False

    # -- asyncio.Protocol ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport
        self.usable = True

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            if self.tunnel is not None:
                self.tunnel.feed(data)
            else:
                self.close()  # bytes nobody asked for (a late or unsolicited response): never reuse
            return
        if not ex.head_done:
            ex.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
        else:
            if ex.received > _MAX_HEAD_BYTES and not ex.head_done and ex.error is None:
                ex.error = httpx.RemoteProtocolError("The response head is too large", request=ex.request)
                self.abort()

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost judges whether the response was complete

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self.lost = True
        self.lost_error = exc
        if self.counted:
            self.counted = False
            self.origin.forget(self)
        ex = self.exchange
        if ex is not None and not ex.done and ex.error is None:
            if ex.head_done and ex.close_delimited and exc is None:
                ex.done = True  # the body ran to the close, as its framing says
                ex.conn = None
            elif not ex.head_done:
                ex.stale = self.reused and not ex.received
                if exc is not None and not ex.received:
                    cls: type[httpx.TransportError] = httpx.ReadError if ex.request_sent else httpx.WriteError
                    ex.error = cls(str(exc) or type(exc).__name__, request=ex.request)
                    ex.error.__cause__ = exc  # an ssl.SSLError (a TLS alert) is described as such, as in process
                else:
                    ex.error = httpx.RemoteProtocolError(
                        "Server disconnected without sending a response.", request=ex.request
                    )
            else:
                # In httpcore's words, so a failure reads the same through the sidecar as in process: the OS's
                # for a reset, h11's for a close.
                words = (str(exc) or type(exc).__name__) if exc is not None else _truncated(ex)
                ex.error = httpx.ReadError(words, request=ex.request)
        self.wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.wake()

    # -- httptools callbacks ------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        ex = self.exchange
        if ex is None or ex.done:
            raise httpx.RemoteProtocolError("Received a response nobody asked for")

    def on_status(self, reason: bytes) -> None:
        self.exchange.reason = reason  # type: ignore[union-attr]  # on_message_begin checked it

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.exchange.headers  # type: ignore[union-attr]
        headers.append((name, value))
        if len(headers) > _MAX_HEADERS:
            raise httpx.RemoteProtocolError(f"More than {_MAX_HEADERS} header lines in the response")

    def on_headers_complete(self) -> None:
        ex = self.exchange
        assert ex is not None
        parser = self.parser
        status = parser.get_status_code()
        ex.status = status
        if ex.received > _MAX_HEAD_BYTES and sum(len(n) + len(v) + 4 for n, v in ex.headers) > _MAX_HEAD_BYTES:
            # A large head read at once (data_received checks one that is still incomplete).
            raise httpx.RemoteProtocolError("The response head is too large")
        if 200 <= status < 600:
            ex.head_done = True
            ex.version = _VERSIONS.get(parser.get_http_version(), b"HTTP/1.1")
            if not parser.should_keep_alive():
                ex.keep_alive = False
                ex.close_delimited = _close_delimited(ex)
            if ex.head_only:
                # llhttp cannot be told the request was HEAD: finish here, and parse the next response
                # with a new parser (one that does not expect the body the headers announce).
                self.parser = httptools.HttpResponseParser(self)
                self._complete(ex)
            self.wake()
        elif status == 101:
            if not parser.should_upgrade():
                raise httpx.RemoteProtocolError("101 Switching Protocols without Upgrade and Connection: upgrade")
            ex.head_done = True
            ex.keep_alive = False  # _upgraded() takes over when llhttp stops at the end of this head
        elif status < 100 or status >= 600:
            raise httpx.RemoteProtocolError(f"Invalid status code {status}")
        # else an interim 1xx response: skipped, its headers are dropped in on_message_complete

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is None or ex.done:
            raise httpx.RemoteProtocolError("Received body bytes after the response ended")
        ex.chunks.append(body)
        ex.buffered += len(body)
        ex.size += len(body)
        if ex.buffered > _HIGH_WATER and not self.reading_paused:
            self.pause()
        if self.waiter is not None:
            self.wake()

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is None or ex.done:
            return  # a HEAD response finished at its head
        if not ex.head_done:  # the end of an interim 1xx response
            ex.headers = []
            ex.reason = b""
            return
        if ex.status == 101:
            return
        self._complete(ex)

    # -- internals ----------------------------------------------------------------------------------------------

    def _complete(self, ex: _Response) -> None:
        """The response was received in full: hand the connection back (or close it) unless the request is unsent."""
        ex.done = True
        self.wake()
        if not ex.request_sent:
            # An early response (say 413) while the body is still being sent: the sender stops and closes.
            ex.keep_alive = False
            return
        self.exchange = None
        ex.conn = None
        if ex.keep_alive and self.usable:
            if self.reading_paused:
                self.resume()
            self.origin.release(self)
        else:
            self.close()

    def _upgraded(self, leftover: bytes) -> None:
        ex = self.exchange
        assert ex is not None
        self.tunnel = _NetworkStream(self, leftover)
        self.exchange = None
        ex.done = True
        ex.conn = None
        if self.counted:  # the connection leaves the pool for good: free its slot now
            self.counted = False
            self.origin.forget(self)
        self.wake()

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        ex = self.exchange
        if ex is not None and not ex.done and ex.error is None:
            cause = exc.__context__ if isinstance(exc.__context__, httpx.TransportError) else exc
            ex.error = httpx.RemoteProtocolError(f"Malformed response: {cause}", request=ex.request)
        self.abort()

    def wake(self) -> None:
        """Resolve whatever waits on this connection (the reader, and a writer waiting for the buffer to drain)."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(False)
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(False)

    async def wait(self, seconds: float | None) -> bool:
        """Wait until the connection wakes its reader; True when ``seconds`` passed first (None: no limit)."""
        future: asyncio.Future[bool] = self.loop.create_future()
        self.waiter = future
        if seconds is None:
            return await future
        # The read timeout is what is left of the request's budget, different every time: a timer of its own.
        timer = schedule(self.loop, seconds, _Timer(future), shared=False)
        try:
            return await future
        finally:
            timer.cancel()

    async def drain(self, seconds: float | None, ex: _Response | None) -> None:
        """Wait while the transport's write buffer is full (or until ``ex`` got its response head or failed)."""
        while self.write_paused and not self.lost and (ex is None or not (ex.head_done or ex.error)):
            future: asyncio.Future[bool] = self.loop.create_future()
            self.drain_waiter = future
            timer = schedule(self.loop, seconds, _Timer(future), shared=False) if seconds is not None else None
            try:
                timed_out = await future
            finally:
                if timer is not None:
                    timer.cancel()
            if timed_out:
                raise httpx.WriteTimeout("Timed out writing", request=ex.request if ex is not None else None)

    def pause(self) -> None:
        if self.transport is not None and not self.lost:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        self.reading_paused = False
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()

    def close(self) -> None:
        """Close gracefully (what was written is still sent): after a complete response that ends the connection."""
        self.usable = False
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now: after an error, a timeout, a cancellation or a body left unread."""
        self.usable = False
        if self.transport is not None:
            self.transport.abort()

    # -- one request --------------------------------------------------------------------------------------------

    async def send(
        self,
        request: httpx.Request,
        payload: bytes,
        stream: Any,
        length: int,
        keep_alive: bool,
        timeouts: dict[str, float | None],
    ) -> httpx.Response:
        """Send ``payload`` (the head, plus the whole body when it is bytes), then ``stream`` if given.

        ``length`` frames a streamed body: its Content-Length, or -1 to chunk-encode it.
        """
        ex = _Response(self, request, keep_alive, timeouts.get("read"))
        self.exchange = ex
        transport = self.transport
        assert transport is not None
        try:
            if stream is None:
                ex.request_sent = True
                transport.write(payload)
                if self.write_paused:
                    await self.drain(timeouts.get("write"), ex)
            else:
                transport.write(payload)
                if await self._send_body(ex, stream, length, timeouts.get("write")) and not ex.done:
                    ex.request_sent = True
            while not ex.head_done:
                if ex.error is not None:
                    raise ex.error
                if await self.wait(ex.read_timeout) and not ex.head_done and ex.error is None:
                    raise httpx.ReadTimeout("Timed out waiting for the response", request=request)
            if not ex.request_sent:
                # Answered before the body was all sent (say 413): the connection cannot carry another request.
                ex.request_sent = True
                ex.keep_alive = False
                if ex.done:
                    self.exchange = None
                    ex.conn = None
                    self.close()
            if ex.status == 101:
                return httpx.Response(
                    101,
                    headers=ex.headers,
                    stream=ex,
                    extensions={"http_version": ex.version, "reason_phrase": ex.reason, "network_stream": self.tunnel},
                )
            return httpx.Response(
                ex.status,
                headers=ex.headers,
                stream=ex,
                extensions={"http_version": ex.version, "reason_phrase": ex.reason},
            )
        except BaseException:
            if not ex.done:
                self.abort()
            raise

    async def _send_body(self, ex: _Response, stream: Any, length: int, write_timeout: float | None) -> bool:
        """Stream the request body as it comes, chunk-encoded unless ``length`` is its Content-Length.

        Returns False when it stopped at a response head (or an error) that came
        before the body's end. A body that does not match its Content-Length
        raises: the upstream would take the difference for the next request.
        """
        transport = self.transport
        assert transport is not None
        chunked = length < 0
        remaining = length
        iterator = stream.__aiter__() if hasattr(stream, "__aiter__") else None
        sync_iterator = iter(stream) if iterator is None else None
        while True:
            if ex.head_done or ex.error is not None or self.lost:
                if iterator is not None and hasattr(iterator, "aclose"):
                    await iterator.aclose()  # let the body's producer clean up now, not when collected
                return False
            try:
                chunk = await iterator.__anext__() if iterator is not None else next(sync_iterator)  # type: ignore[arg-type]
            except (StopAsyncIteration, StopIteration):
                break
            if not chunk:
                continue
            if chunked:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                remaining -= len(chunk)
                if remaining < 0:
                    raise httpx.LocalProtocolError(
                        "The request body is longer than its Content-Length", request=ex.request
                    )
                transport.write(chunk)
            if self.write_paused:
                await self.drain(write_timeout, ex)
        if chunked:
            if not self.lost:
                transport.write(_LAST_CHUNK)
        elif remaining:
            raise httpx.LocalProtocolError("The request body is shorter than its Content-Length", request=ex.request)
        return True


def _truncated(ex: _Response) -> str:
    """What a body cut short by the upstream's close lacks, as h11 says it."""
    for name, value in ex.headers:
        if name.lower() == b"content-length" and value.isdigit():
            return (
                "peer closed connection without sending complete message body"
                f" (received {ex.size} bytes, expected {int(value)})"
            )
    return "peer closed connection without sending complete message body (incomplete chunked read)"


def _close_delimited(ex: _Response) -> bool:
    """Whether the body of a response that ends the connection runs until the close (RFC 9112 §6.3)."""
    if ex.head_only or ex.status in (204, 304):
        return False
    chunked = False
    for name, value in ex.headers:
        lower = name.lower()
        if lower == b"content-length":
            return False
        if lower == b"transfer-encoding":
            chunked = value.rstrip().lower().endswith(b"chunked")
    return not chunked


class _Origin:
    """The connections to one (scheme, host, port): idle ones (LIFO), a count of all, and requests waiting for one."""

    __slots__ = (
        "count",
        "expiry",
        "host",
        "idle",
        "limit",
        "lookup",
        "max_idle",
        "numeric",
        "pool",
        "port",
        "server_hostname",
        "ssl",
        "waiters",
    )

    def __init__(self, pool: PooledTransport, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self.pool = pool
        self.host = host
        self.port = port
        self.numeric = _is_ip(host)  # an address needs no lookup
        self.lookup: asyncio.Task[list[_AddrInfo]] | None = None  # the lookup in progress, shared by its waiters
        self.ssl = ssl_context
        self.server_hostname = host if ssl_context is not None else None
        self.idle: list[_Connection] = []
        self.count = 0
        self.limit = pool._max_connections
        self.max_idle = pool._max_idle
        self.expiry = pool._keepalive_expiry
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()

    def pop_idle(self) -> _Connection | None:
        idle = self.idle
        if idle and self.expiry is not None:
            self._expire(idle)
        while idle:
            conn = idle.pop()
            conn.idle = False
            if conn.usable:
                return conn
        return None

    def _expire(self, idle: list[_Connection]) -> None:
        """Close the connections idle for longer than ``expiry``: a prefix of the list, which is oldest first."""
        assert self.expiry is not None
        limit = idle[0].loop.time() - self.expiry
        stale = 0
        for conn in idle:
            if conn.idle_since >= limit:
                break
            stale += 1
        if stale:
            expired = idle[:stale]
            del idle[:stale]
            for conn in expired:
                conn.idle = False
                conn.close()  # its connection_lost frees the slot

    def release(self, conn: _Connection) -> None:
        """Take back a connection whose exchange completed with keep-alive."""
        conn.reused = True
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)  # straight to the longest waiting request
                return
        if len(self.idle) >= self.max_idle or self.pool._closed:
            conn.close()
            return
        conn.idle = True
        conn.idle_since = conn.loop.time()
        self.idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        """A connection was lost (or upgraded): out of the idle list, and its slot freed."""
        if conn.idle:
            conn.idle = False
            self.idle.remove(conn)
        self.free_slot()

    def free_slot(self) -> None:
        """One connection fewer: the slot goes to the longest waiting request, if any."""
        self.count -= 1
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                self.count += 1
                waiter.set_result(None)  # None: the slot is the waiter's, to connect with
                return

    async def acquire(self, request: httpx.Request, timeouts: dict[str, float | None]) -> _Connection:
        """A usable connection: a new one while under the limit, else the next one released (or slot freed)."""
        deadline: float | None = None
        while True:
            if self.limit is None or self.count < self.limit:
                self.count += 1
                return await self.connect(request, timeouts)
            loop = asyncio.get_running_loop()
            pool_timeout = timeouts.get("pool")
            if pool_timeout is not None and deadline is None:
                deadline = loop.time() + pool_timeout
            future: asyncio.Future[_Connection | None] = loop.create_future()
            self.waiters.append(future)
            timer = loop.call_at(deadline, _pool_timeout, future, request) if deadline is not None else None
            try:
                got = await future
            except BaseException:
                if future.done() and not future.cancelled() and future.exception() is None:
                    self._give_back(future.result())  # handed over just as this request was cancelled
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            if got is None:
                return await self.connect(request, timeouts)
            if got.usable:
                return got
            # handed a connection that closed before this request could use it: try again

    def _give_back(self, conn: _Connection | None) -> None:
        if conn is None:
            self.free_slot()
        elif conn.usable:
            self.release(conn)

    async def connect(self, request: httpx.Request, timeouts: dict[str, float | None]) -> _Connection:
        """Open a connection; its slot in ``count`` is already taken and is given back if this fails."""
        loop = asyncio.get_running_loop()
        conn = _Connection(self, loop)
        server_hostname = self.server_hostname
        if server_hostname is not None:
            sni = request.extensions.get("sni_hostname")
            if sni:
                server_hostname = sni.decode("ascii") if isinstance(sni, bytes) else str(sni)
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                if self.numeric:
                    await loop.create_connection(
                        lambda: conn, self.host, self.port, ssl=self.ssl, server_hostname=server_hostname
                    )
                else:
                    await self._connect_resolved(loop, conn, server_hostname)
            verify_peer = self.pool._verify_peer
            if verify_peer is not None:
                # After the handshake, before any byte of the request: a peer refused never sees it.
                assert conn.transport is not None
                verify_peer(conn.transport.get_extra_info("ssl_object"))
        except BaseException as exc:
            if conn.transport is not None:
                conn.abort()  # connected, but cancelled or timed out right after: connection_lost frees the slot
            else:
                conn.counted = False
                self.free_slot()
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout(f"Timed out connecting to {self.host}:{self.port}", request=request) from exc
            if isinstance(exc, OSError):
                raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
            raise
        return conn

    async def _connect_resolved(
        self, loop: asyncio.AbstractEventLoop, conn: _Connection, server_hostname: str | None
    ) -> None:
        """Connect ``conn`` to the first of the host's addresses that accepts, as ``create_connection`` does."""
        errors: list[OSError] = []
        for family, _, proto, _, address in await self._resolve(loop):
            try:
                # An address as host: create_connection looks nothing up (asyncio and uvloop both check).
                await loop.create_connection(
                    lambda: conn,
                    address[0],
                    address[1],
                    family=family,
                    proto=proto,
                    ssl=self.ssl,
                    server_hostname=server_hostname,
                )
                return
            except ssl.SSLError:
                raise  # connected, and TLS failed: another address of the same host would not help
            except OSError as exc:
                errors.append(exc)
        if len(errors) == 1 or len({str(e) for e in errors}) == 1:
            raise errors[0]
        raise OSError(f"Multiple exceptions: {', '.join(map(str, errors))}")

    async def _resolve(self, loop: asyncio.AbstractEventLoop) -> list[_AddrInfo]:
        """The host's addresses: one lookup at a time, awaited by every connection that needs it meanwhile."""
        lookup = self.lookup
        if lookup is None:
            lookup = self.lookup = loop.create_task(_getaddrinfo(loop, self.host, self.port))
            lookup.add_done_callback(self._looked_up)
        # Shielded: a waiter that gives up (its connect timeout) must not cancel the others' lookup.
        return await asyncio.shield(lookup)

    def _looked_up(self, task: asyncio.Task[list[_AddrInfo]]) -> None:
        if self.lookup is task:
            self.lookup = None  # the next connection looks up afresh: DNS answers are not cached here
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have given up already


_AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]


async def _getaddrinfo(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[_AddrInfo]:
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned no address")
    return cast(list[_AddrInfo], infos)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _pool_timeout(future: asyncio.Future[_Connection | None], request: httpx.Request) -> None:
    if not future.done():
        future.set_exception(httpx.PoolTimeout("Timed out waiting for a connection", request=request))


class PooledTransport(httpx.AsyncBaseTransport):
    """A fast pooled HTTP/1.1 transport for asyncio (uvloop when it runs the loop), built on httptools.

    Drop-in for ``httpx.AsyncHTTPTransport`` where only HTTP/1.1 to known
    upstreams is needed: ``mesh.async_transport(inner=PooledTransport())``.
    Raises httpx's exceptions (``ConnectError``, ``ConnectTimeout``,
    ``ReadTimeout``, ``WriteTimeout``, ``PoolTimeout``, ``ReadError``,
    ``RemoteProtocolError``), so the mesh maps them as it maps httpx's own.
    A ``101 Switching Protocols`` response carries the raw connection as
    ``extensions["network_stream"]`` (``read``, ``write``, ``aclose``).

    ``max_idle_per_origin`` bounds the idle connections kept per origin and
    ``keepalive_expiry`` how long one may stay idle (seconds; None: no limit),
    checked when a request looks for one, as httpx does;
    ``max_connections_per_origin`` (default unbounded) bounds all of them,
    and requests beyond it wait up to the ``pool`` timeout.

    ``https://`` origins use ``ssl_context`` (default: the system's CAs, host
    names checked); ``verify_peer``, when given, is called with each new TLS
    connection's ``ssl.SSLObject`` once the handshake is done and before the
    request is written, and whatever it raises (``meshlib._tls``'s identity
    check raises an ``httpx.ConnectError``) fails the request with nothing sent.
    TLS sessions are not resumed (asyncio's ``create_connection`` takes no
    session): connections are kept alive and reused instead.
    """

    def __init__(
        self,
        *,
        max_idle_per_origin: int = 64,
        max_connections_per_origin: int | None = None,
        keepalive_expiry: float | None = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        verify_peer: Callable[[Any], None] | None = None,
    ) -> None:
        if max_idle_per_origin < 0:
            raise ValueError("max_idle_per_origin must be at least 0")
        if max_connections_per_origin is not None and max_connections_per_origin < 1:
            raise ValueError("max_connections_per_origin must be at least 1")
        if keepalive_expiry is not None and keepalive_expiry < 0:
            raise ValueError("keepalive_expiry must be at least 0")
        self._keepalive_expiry = keepalive_expiry
        self._max_idle = max_idle_per_origin
        self._max_connections = max_connections_per_origin
        self._ssl_context = ssl_context
        self._verify_peer = verify_peer
        self._origins: dict[tuple[bytes, bytes, int | None], _Origin] = {}
        self._closed = False

    def tls_variant(self, context: ssl.SSLContext, verify_peer: Callable[[Any], None] | None) -> PooledTransport:
        """A transport with this one's limits that connects with ``context`` and checks peers with ``verify_peer``.

        Its own pools: a connection made with one client certificate is never
        reused for a cluster (or a rotation) that asked for another.
        """
        return PooledTransport(
            max_idle_per_origin=self._max_idle,
            max_connections_per_origin=self._max_connections,
            keepalive_expiry=self._keepalive_expiry,
            ssl_context=context,
            verify_peer=verify_peer,
        )

    @property
    def idle_connections(self) -> int:
        """How many connections wait in the pool, over all origins."""
        return sum(len(origin.idle) for origin in self._origins.values())

    def _origin(self, url: httpx.URL, key: tuple[bytes, bytes, int | None]) -> _Origin:
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol '{url.scheme}://'.")
        if not url.raw_host:
            raise httpx.UnsupportedProtocol("Request URL is missing a host.")
        context: ssl.SSLContext | None = None
        if scheme == b"https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        origin = _Origin(self, url.raw_host.decode("ascii"), url.port or _DEFAULT_PORTS[scheme], context)
        self._origins[key] = origin
        return origin

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on a pooled connection and return the response with its body still streaming."""
        if self._closed:
            raise RuntimeError("The transport is closed")
        url = request.url
        key = (url.raw_scheme, url.raw_host, url.port)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origin(url, key)
        payload, stream, length, keep_alive = _encode(request)
        timeouts = request.extensions.get("timeout") or _NO_TIMEOUTS
        conn = origin.pop_idle()
        if conn is None:
            conn = await origin.acquire(request, timeouts)
        try:
            return await conn.send(request, payload, stream, length, keep_alive, timeouts)
        except httpx.TransportError:
            ex = conn.exchange
            # Only idempotent requests (RFC 9110 §9.2.2): a POST the server took before closing must not run twice.
            if stream is not None or ex is None or not ex.stale or request.method not in IDEMPOTENT_METHODS:
                raise
        # The server closed the reused connection as this request went out: once more, on a new connection.
        conn = await origin.acquire(request, timeouts)
        return await conn.send(request, payload, stream, length, keep_alive, timeouts)

    async def aclose(self) -> None:
        """Close every idle connection and stop pooling (responses being read are left to finish)."""
        self._closed = True
        for origin in self._origins.values():
            while origin.idle:
                conn = origin.idle.pop()
                conn.idle = False
                conn.close()
        # Let the transports' connection_lost callbacks run, so sockets close before the loop may end.
        await asyncio.sleep(0)


def _encode(request: httpx.Request) -> tuple[bytes, Any, int, bool]:
    """Serialize ``request`` for the wire.

    Returns the head (followed by the body when that is bytes), the body
    stream (None when the body was bytes), the stream's Content-Length or -1
    to chunk-encode it, and whether the request lets the connection live on.
    """
    method = request.method
    parts = [_METHODS.get(method) or method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    content_length = -1
    chunked = False
    keep_alive = True
    lines = 2  # the request line and the empty line; one more per header line
    raw = request.headers.raw
    for name, value in raw:
        size = len(name)
        if size == 14 or size == 17 or size == 10:  # content-length, transfer-encoding, connection
            lower = name.lower()
            if lower == b"content-length":
                if not value.isdigit() or content_length != -1:
                    raise httpx.LocalProtocolError(f"Invalid Content-Length {value!r}", request=request)
                content_length = int(value)
            elif lower == b"transfer-encoding":
                if chunked or not value.rstrip().lower().endswith(b"chunked"):
                    raise httpx.LocalProtocolError(f"Unsupported Transfer-Encoding {value!r}", request=request)
                chunked = True
            elif lower == b"connection" and b"close" in value.lower():
                keep_alive = False
        parts += (name, b": ", value, b"\r\n")
    if chunked and content_length != -1:
        raise httpx.LocalProtocolError("Both Content-Length and Transfer-Encoding", request=request)
    stream: Any = request.stream
    body: bytes | None = stream._stream if isinstance(stream, httpx.ByteStream) else None
    if body is not None:
        if content_length == -1 and not chunked and body:
            parts += (b"Content-Length: ", str(len(body)).encode(), b"\r\n")
            lines += 1
        elif content_length != -1 and content_length != len(body):
            raise httpx.LocalProtocolError("Content-Length does not match the body", request=request)
    elif content_length == -1 and not chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")  # a stream of unknown length needs a framing
        chunked = True
        lines += 1
    parts.append(b"\r\n")
    head = b"".join(parts)
    # No CR or LF inside the method, target, names or values: each line adds exactly one CRLF.
    lines += len(raw)
    if head.count(b"\n") != lines or head.count(b"\r") != lines or b"\0" in head:
        raise httpx.LocalProtocolError("Illegal characters in the request head", request=request)
    if body is None:
        return head, stream, -1 if chunked else content_length, keep_alive
    if chunked:
        if body:
            return b"".join((head, b"%x\r\n" % len(body), body, b"\r\n", _LAST_CHUNK)), None, -1, keep_alive
        return head + _LAST_CHUNK, None, -1, keep_alive
    return (head + body if body else head), None, -1, keep_alive
