"""One HTTP/1.1 client connection: an asyncio ``Protocol`` feeding httptools' response parser (llhttp).

A request writes its head (and a small body) in one call and then waits on at
most one future at a time, with cheap FIFO alarms for its timeouts. The
response body is a :class:`ResponseStream` the parser callbacks fill; after
``101 Switching Protocols`` the connection becomes a :class:`NetworkStream`.

llhttp has no end-of-stream signal, so truncation is judged here when the
connection is lost: a body delimited by the close ends there; any other
response that is not complete raises.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Final, cast

import httptools
import httpx

from meshlib._engine.alarms import Alarm, on_grid, schedule
from meshlib._errors import chained
from meshlib._httpx_shortcuts import response_from_wire
from meshlib._transport.flow import HIGH_WATER, LOW_WATER
from meshlib._transport.wire import LAST_CHUNK, MAX_HEAD_BYTES, MAX_HEADERS, VERSIONS, close_delimited, truncated

if TYPE_CHECKING:
    from meshlib._transport.origin import Origin

_HTTP11_STATUS: Final = b"HTTP/1.1 "


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


class ResponseStream(httpx.AsyncByteStream):
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
        "said_11",
        "shared_timer",
        "size",
        "stale",
        "status",
        "version",
    )

    def __init__(self, conn: Connection, request: httpx.Request, keep_alive: bool, read_timeout: float | None) -> None:
        self.conn: Connection | None = conn
        self.request = request
        self.keep_alive = keep_alive
        self.read_timeout = read_timeout
        self.head_only = request.method == "HEAD"
        self.status = 0
        self.reason = b""
        self.version = b"HTTP/1.1"
        self.said_11 = False  # the response's first bytes were "HTTP/1.1 ": its version, without asking llhttp
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
        self.shared_timer = False  # its read_timeout is the one the previous request on the origin had
        self.error: httpx.TransportError | None = None

    @property
    def complete(self) -> bool:
        """Whether the whole body is here, so no read of it waits (the mesh's body wrapper then bounds nothing)."""
        return self.done

    def take_whole(self) -> list[bytes] | None:
        """The rest of the body at once when all of it is here and nothing failed (else None: iterate it).

        A listener writes such a body with its head. Iterating it ends in ``StopAsyncIteration``, which
        costs a traceback in every compiled frame it leaves (about 7,000 instructions a response).
        """
        if not self.done or self.error is not None or self.closed:
            return None
        chunks = list(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        conn = self.conn
        if conn is not None and conn.reading_paused:
            conn.resume()
        return chunks

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        chunks = self.chunks
        while True:
            if chunks:
                chunk = chunks.popleft()
                self.buffered -= len(chunk)
                conn = self.conn
                if conn is not None and conn.reading_paused and self.buffered <= LOW_WATER:
                    conn.resume()
                return chunk
            if self.error is not None:
                raise self.error
            if self.done or self.closed:
                raise StopAsyncIteration
            conn = self.conn
            assert conn is not None  # attached until done
            try:
                timed_out = await conn.wait(self.read_timeout, self.shared_timer)
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


class NetworkStream:
    """The connection after ``101 Switching Protocols``: raw bytes both ways (``extensions["network_stream"]``)."""

    __slots__ = ("_buffer", "_conn")

    def __init__(self, conn: Connection, leftover: bytes) -> None:
        self._conn = conn
        self._buffer = bytearray(leftover)

    def feed(self, data: bytes) -> None:
        self._buffer += data
        conn = self._conn
        if len(self._buffer) > HIGH_WATER and not conn.reading_paused:
            conn.pause()
        conn.wake()

    async def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` bytes, waiting for at least one; b"" once the peer closed."""
        conn = self._conn
        buffer = self._buffer
        while not buffer:
            if conn.lost:
                if conn.lost_error is not None:
                    raise chained(httpx.ReadError(str(conn.lost_error) or "Connection reset"), conn.lost_error)
                return b""
            await conn.wait(None)
        data = bytes(buffer[:max_bytes])
        del buffer[:max_bytes]
        if conn.reading_paused and len(buffer) <= LOW_WATER:
            conn.resume()
        return data

    async def write(self, data: bytes) -> None:
        """Send ``data``; waits while the socket's send buffer is full."""
        conn = self._conn
        if conn.lost or conn.transport is None or conn.transport.is_closing():
            raise httpx.WriteError("The upgraded connection is closed")
        conn.transport.write(data)
        await conn.wait_writable(None, None)

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


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: the protocol asyncio calls, and the protocol httptools' parser calls.

    At most one exchange at a time (no pipelining). ``usable`` turns False for
    good as soon as the connection must not carry another request.
    """

    __slots__ = (
        "counted",
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
        "writable_waiter",
        "write_paused",
    )

    def __init__(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: ResponseStream | None = None
        self.tunnel: NetworkStream | None = None
        self.waiter: asyncio.Future[bool] | None = None
        self.writable_waiter: asyncio.Future[bool] | None = None
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
            if not ex.received:
                ex.said_11 = data.startswith(_HTTP11_STATUS)
            ex.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
        else:
            if ex.received > MAX_HEAD_BYTES and not ex.head_done and ex.error is None:
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
                words = (str(exc) or type(exc).__name__) if exc is not None else truncated(ex)
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
        if len(headers) > MAX_HEADERS:
            raise httpx.RemoteProtocolError(f"More than {MAX_HEADERS} header lines in the response")

    def on_headers_complete(self) -> None:
        ex = self.exchange
        assert ex is not None
        parser = self.parser
        status = parser.get_status_code()
        ex.status = status
        if ex.received > MAX_HEAD_BYTES and sum(len(n) + len(v) + 4 for n, v in ex.headers) > MAX_HEAD_BYTES:
            # A large head read at once (data_received checks one that is still incomplete).
            raise httpx.RemoteProtocolError("The response head is too large")
        if 200 <= status < 600:
            ex.head_done = True
            # httptools formats its version as a str each time it is asked (about 2,200 instructions).
            ex.version = b"HTTP/1.1" if ex.said_11 else VERSIONS.get(parser.get_http_version(), b"HTTP/1.1")
            if not parser.should_keep_alive():
                ex.keep_alive = False
                ex.close_delimited = close_delimited(ex)
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
        if ex.buffered > HIGH_WATER and not self.reading_paused:
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
            ex.said_11 = False  # the final response's version is llhttp's to tell
            return
        if ex.status == 101:
            return
        self._complete(ex)

    # -- internals ----------------------------------------------------------------------------------------------

    def _complete(self, ex: ResponseStream) -> None:
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
        self.tunnel = NetworkStream(self, leftover)
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
        """Resolve whatever waits on this connection (the reader, and a writer waiting for the buffer to empty)."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(False)
        waiter = self.writable_waiter
        if waiter is not None:
            self.writable_waiter = None
            if not waiter.done():
                waiter.set_result(False)

    async def wait(self, seconds: float | None, shared: bool = False) -> bool:
        """Wait until the connection wakes its reader; True when ``seconds`` passed first (None: no limit).

        ``shared``: ``seconds`` is a delay that repeats (see ``ResponseStream.shared_timer``).
        """
        future: asyncio.Future[bool] = self.loop.create_future()
        self.waiter = future
        if seconds is None:
            return await future
        timer = schedule(self.loop, seconds, _Timer(future), shared=shared)
        try:
            return await future
        finally:
            timer.cancel()

    async def wait_writable(self, seconds: float | None, ex: ResponseStream | None) -> None:
        """Wait while the transport's write buffer is full (or until ``ex`` got its response head or failed)."""
        while self.write_paused and not self.lost and (ex is None or not (ex.head_done or ex.error)):
            future: asyncio.Future[bool] = self.loop.create_future()
            self.writable_waiter = future
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
        read = timeouts.get("read")
        # A read timeout that requests repeat (the client's own, the sidecar's default, what is left of a route's
        # timeout on a first try once on the millisecond grid of alarms.on_grid) shares its delay's FIFO alarm
        # queue: an append, not a loop timer. One that differs from the last (a retry's budget) takes a timer of
        # its own, so it does not churn the queues.
        ex = ResponseStream(self, request, keep_alive, on_grid(read) if read is not None else None)
        origin = self.origin
        ex.shared_timer = ex.read_timeout == origin.last_read_timeout
        origin.last_read_timeout = ex.read_timeout
        self.exchange = ex
        transport = self.transport
        assert transport is not None
        try:
            if stream is None:
                ex.request_sent = True
                transport.write(payload)
                if self.write_paused:
                    await self.wait_writable(timeouts.get("write"), ex)
            else:
                transport.write(payload)
                if await self._send_body(ex, stream, length, timeouts.get("write")) and not ex.done:
                    ex.request_sent = True
            while not ex.head_done:
                if ex.error is not None:
                    raise ex.error
                if await self.wait(ex.read_timeout, ex.shared_timer) and not ex.head_done and ex.error is None:
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
            extensions = {"http_version": ex.version, "reason_phrase": ex.reason}
            return response_from_wire(ex.status, ex.headers, ex, extensions)
        except BaseException:
            if not ex.done:
                self.abort()
            raise

    async def _send_body(self, ex: ResponseStream, stream: Any, length: int, write_timeout: float | None) -> bool:
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
                await self.wait_writable(write_timeout, ex)
        if chunked:
            if not self.lost:
                transport.write(LAST_CHUNK)
        elif remaining:
            raise httpx.LocalProtocolError("The request body is shorter than its Content-Length", request=ex.request)
        return True
