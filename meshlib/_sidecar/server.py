"""The sidecar's listener: an asyncio HTTP/1.1 server facing untrusted clients, one handler call per request.

Each connection is an asyncio ``Protocol`` (no streams) with a small state
machine: read a head (checked strictly by :mod:`http1`), read or stream the
body, call the handler, write the response, and then the next request —
pipelined requests wait in the buffer until the one before is answered, so
responses go out in order and a request is never parsed while the previous
body's framing is still in doubt.

* Bodies: a request body with a Content-Length up to 64 KiB is read whole and
  handed over as an ``httpx.ByteStream`` (the engine can retry, hedge and
  mirror it); larger and chunked bodies stream, pausing the socket while the
  engine is behind. ``Expect: 100-continue`` is answered here. Responses keep
  the upstream's Content-Length, else are chunked (HTTP/1.1) or end with the
  connection (HTTP/1.0).
* Responses: the head is :func:`http1.response_head`'s. A body the handler
  has whole already (in memory, or one whose chunks all come without
  waiting, as the upstream client's usually do by the time its head is
  there) goes out with the head in one ``transport.write``, with no flush
  queued for later: a stream that says it is ``complete`` is read at once,
  any other is read by hand until a read would wait (:func:`_take_ready`).
  Once one does, the head and what came go out, and the rest streams with
  flow control (reads wait while the client's socket buffer is full).
* Errors: a ``MeshError`` becomes :func:`meshlib._wire.error_head`; other
  httpx transport errors (passthrough traffic goes straight to the sender)
  first become the matching ``MeshError`` (``_engine/errors.py``'s
  :func:`~meshlib._engine.errors.mesh_error`). Once response bytes went out, a
  failure ends the body short instead (an error chunk when chunked, then a
  FIN for a timeout, an RST otherwise), so a client never sees a truncated
  but well-framed response, and can tell why (``_end_failed_body``).
* Limits (``sidecar.limits``): ``header_timeout`` from accept or a request's
  first byte to the end of its head (408); ``idle_timeout`` between requests
  on a keep-alive connection (closed quietly) and while a request body
  stalls; ``max_connections``: a connection beyond it is accepted and closed
  at once without a byte, as Envoy's listener connection limit does.
* Every refusal is a whole response with ``Connection: close``, then a
  lingering close: our side half-closes and drops whatever the client still
  sends, so the answer isn't lost to a reset.
* CONNECT and upgrades: :mod:`tunnel` answers a CONNECT and runs the tunnel;
  the connection hands it its client-side events.
* Tasks: one per connection, not per request. The connection's worker serves
  each request the parser hands it and waits between them; it ends when the
  connection closes, and, as a request's own task would, with a request that
  fails or leaves a cancellation behind (the next request gets a new one).

The request extensions a handler reads, and the handler's type, are the
front door's (``meshlib/_frontdoors/sidecar_requests.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from typing import Any, Final, cast

import httpx

from meshlib._config.sidecar import SidecarLimitsConfig
from meshlib._engine.errors import mesh_error
from meshlib._errors import MeshError, RequestTimeoutError
from meshlib._frontdoors.sidecar_requests import DOWNSTREAM, REQUEST_LINE, ConnectPolicy, Downstream, Handler
from meshlib._httpx_shortcuts import ASYNC_BYTE_STREAM, BYTE_STREAM, EMPTY_BODY, raw_items, request_from_wire
from meshlib._sidecar import http1
from meshlib._sidecar.http1 import BadResponseError, ProtocolError, RequestHead
from meshlib._sidecar.tls_accept import FixedTls, ServerTls, accept_loop
from meshlib._sidecar.tunnel import CONNECTED, StreamTunnel, TcpTunnel, Tunnel, open_connect
from meshlib._transport.flow import HIGH_WATER, LOW_WATER
from meshlib._wire import error_chunk, error_head

__all__ = [
    "DOWNSTREAM",
    "REQUEST_LINE",
    "ConnectPolicy",
    "Downstream",
    "FixedTls",
    "Handler",
    "HttpServer",
    "ServerTls",
]

logger = logging.getLogger("meshlib")

# Connection states.
_HEAD: Final = 0  # waiting for (the rest of) a request head
_BODY_BUFFERED: Final = 1  # reading a small body whole before the handler is called
_BODY: Final = 2  # the handler runs while the body streams in
_WAIT: Final = 3  # the request is complete; its response is being sent
_TUNNEL: Final = 4  # CONNECT or upgrade: bytes both ways
_CLOSING: Final = 5  # lingering close: our side finished, the client's bytes are dropped
_CLOSED: Final = 6

# Deadline kinds.
_NO_DEADLINE: Final = 0
_HEADER: Final = 1
_IDLE: Final = 2
_BODY_STALL: Final = 3
_LINGER: Final = 4

_LINGER_TIME: Final = 2.0
_LINGER_ZERO: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends an RST, not a FIN
_FLUSH_SIZE: Final = 64 * 1024  # queued response bytes written at once; body bytes taken with the head at most
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_LEADING_CRLF: Final = re.compile(rb"(?:\r\n)*")

# Parsed absolute URLs by their bytes: httpx.URL() costs about 11 µs, and a URL object is immutable.
_URLS: dict[bytes, httpx.URL] = {}
_URL_CACHE_SIZE: Final = 4096


def _url(raw: bytes) -> httpx.URL:
    url = _URLS.get(raw)
    if url is None:
        url = httpx.URL(raw.decode("ascii"))
        if len(_URLS) >= _URL_CACHE_SIZE:
            _URLS.clear()
        _URLS[raw] = url
    return url


class _ClientGoneError(Exception):
    """The client closed the connection before its request body ended."""


class _Resume:
    """Awaits the rest of a body read (an ``__anext__()`` step) that was run up to its first wait, on ``signal``.

    :func:`_take_ready` runs a body's reads by hand while none waits; the
    first that does is handed to the task here, as ``await`` would have.
    """

    __slots__ = ("_signal", "_step")

    def __init__(self, step: Generator[Any, None, bytes], signal: Any) -> None:
        self._step = step
        self._signal = signal

    def __await__(self) -> Generator[Any, None, bytes]:
        step = self._step
        signal = self._signal
        while True:
            try:
                yield signal
            except GeneratorExit:
                step.close()
                raise
            except BaseException as exc:  # a cancellation: the read gets it, as it would have under await
                try:
                    signal = step.throw(exc)
                except StopIteration as done:
                    chunk: bytes = done.value
                    return chunk
                continue
            return (yield from step)


def _take_ready(chunks: AsyncIterator[bytes], parts: list[bytes], limit: int) -> tuple[int, bool, _Resume | None]:
    """Read the chunks ``chunks`` has without waiting into ``parts``, up to ``limit`` bytes.

    Returns how many bytes were read; whether the body ended; and, when a
    read had to wait, the rest of that read to await. Neither: the limit was
    reached. An exception of the body's is raised here, as ``await`` would.
    """
    size = 0
    while size < limit:
        step = chunks.__anext__().__await__()
        try:
            signal = step.send(None)
        except StopIteration as read:
            chunk: bytes = read.value
            if chunk:
                parts.append(chunk)
                size += len(chunk)
            continue
        except StopAsyncIteration:
            return size, True, None
        return size, False, _Resume(step, signal)
    return size, False, None


class _StreamBody(httpx.AsyncByteStream):
    """A request body the engine reads while it arrives; the connection pushes chunks in."""

    __slots__ = ("_chunks", "_conn", "_done", "_error", "_started", "_waiter", "size")

    def __init__(self, conn: _DownstreamConnection) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self.size = 0
        self._done = False
        self._error: Exception | None = None
        self._started = False
        self._waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def push(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.size += len(chunk)
        self._wake()

    def finish(self) -> None:
        self._done = True
        self._wake()

    def fail(self, error: Exception) -> None:
        if not self._done:
            self._error = error
            self._wake()

    def __aiter__(self) -> _StreamBody:
        if self._started:
            raise httpx.StreamConsumed()
        self._started = True
        self._conn.body_wanted()
        return self

    async def __anext__(self) -> bytes:
        chunks = self._chunks
        while True:
            if chunks:
                chunk = chunks.popleft()
                self.size -= len(chunk)
                if self.size <= LOW_WATER:
                    self._conn.body_caught_up()
                return chunk
            if self._error is not None:
                raise self._error
            if self._done:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class _DownstreamConnection(asyncio.Protocol):
    """One client's connection to the listener: parse, call the handler, answer, repeat.

    (The upstream side's connections are the HTTP client's, ``meshlib/_transport/connection.py``.)
    """

    __slots__ = (
        "_body",
        "_body_error",
        "_body_parts",
        "_body_remaining",
        "_buffer",
        "_close_after",
        "_deadline",
        "_deadline_kind",
        "_decoder",
        "_downstream",
        "_expect_continue",
        "_flush_scheduled",
        "_framing",
        "_head",
        "_loop",
        "_next",
        "_out",
        "_out_size",
        "_reading_paused",
        "_scanned",
        "_sent",
        "_server",
        "_state",
        "_task",
        "_timer",
        "_transport",
        "_tunnel",
        "_wake",
        "_write_paused",
        "_write_waiter",
    )

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop
        self._transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self._state = _HEAD
        self._buffer = b""
        self._scanned = 0  # how much of a partial head was checked already
        self._deadline = 0.0
        self._deadline_kind = _NO_DEADLINE
        self._timer: asyncio.TimerHandle | None = None
        # The connection's worker: one task serves its requests one after another, waiting on _wake between them
        # (a task per request cost 4,700 instructions more a request: 2.7% of the proxy's work on a small one).
        self._task: asyncio.Task[None] | None = None
        self._next: Coroutine[Any, Any, None] | None = None  # the request the worker serves next
        self._wake: asyncio.Future[None] | None = None  # set while the worker waits for a request
        self._head: RequestHead | None = None
        self._body: _StreamBody | None = None
        self._body_parts: list[bytes] = []
        self._body_remaining = 0
        self._decoder: http1.ChunkedDecoder | None = None
        self._body_error: ProtocolError | None = None
        self._expect_continue = False
        self._close_after = False
        self._reading_paused = False
        self._write_paused = False
        self._write_waiter: asyncio.Future[None] | None = None
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush_scheduled = False
        self._sent = False  # bytes of the current response reached the transport
        self._framing = http1.WHOLE  # of the current response's body
        self._tunnel: Tunnel | None = None
        self._downstream: Downstream | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)  # uvloop's isn't a subclass
        server = self._server
        if len(server._connections) >= server._max_connections or server._closed:
            self._state = _CLOSED
            transport.close()
            return
        server._connections.add(self)
        self._set_deadline(_HEADER, server._header_timeout)
        if server._tls is not None:  # who the client is matters only where the listener authenticates it
            self._downstream = _downstream_of(transport)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _HEAD:
            self._on_head_bytes(data)
        elif state in (_BODY, _BODY_BUFFERED):
            self._on_body_bytes(data)
        elif state == _WAIT:
            self._buffer += data
            if len(self._buffer) > HIGH_WATER:
                self._pause_reading()
        elif state == _TUNNEL:
            assert self._tunnel is not None
            self._tunnel.client_data(data)
        # _CLOSING, _CLOSED: dropped

    def eof_received(self) -> bool:
        state = self._state
        if state == _WAIT:
            self._close_after = True  # answer what was asked, then close
            return True
        if state == _TUNNEL:
            assert self._tunnel is not None
            return self._tunnel.client_eof()
        if state == _BODY and self._body is not None:
            self._body.fail(_ClientGoneError("the client closed the connection before the request body ended"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self._server._forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stop_worker()
        if self._body is not None:
            self._body.fail(_ClientGoneError("the client closed the connection"))
        if self._write_waiter is not None and not self._write_waiter.done():
            self._write_waiter.cancel()
        if self._tunnel is not None:
            self._tunnel.client_lost()

    def pause_writing(self) -> None:
        if self._tunnel is not None:
            self._tunnel.client_pause_writing()
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._tunnel is not None:
            self._tunnel.client_resume_writing()
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- timers: one deadline and at most one loop timer per connection -------------------------------------------

    def _set_deadline(self, kind: int, delay: float) -> None:
        self._deadline_kind = kind
        when = self._loop.time() + delay
        self._deadline = when
        timer = self._timer
        if timer is None:
            self._timer = self._loop.call_at(when, self._on_timer)
        elif when < timer.when():
            timer.cancel()
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        kind = self._deadline_kind
        if kind == _NO_DEADLINE or self._state == _CLOSED:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self._deadline_kind = _NO_DEADLINE
        if kind == _HEADER:
            self._reject(408, "request head not received within the header timeout")
        elif kind == _IDLE:
            self._transport.close()
        elif kind == _BODY_STALL:
            error = ProtocolError(408, "request body stalled beyond the idle timeout")
            if self._state == _BODY_BUFFERED:
                self._reject(error.status, error.reason)
            elif self._state == _BODY and self._body is not None:
                self._body_error = error
                self._body.fail(error)
        else:  # _LINGER
            self._transport.abort()

    # --- reading requests -------------------------------------------------------------------------------------------

    def _on_head_bytes(self, data: bytes) -> None:
        buf = self._buffer + data if self._buffer else data
        if self._deadline_kind == _IDLE:  # a request's first byte on a keep-alive connection
            self._set_deadline(_HEADER, self._server._header_timeout)
        if buf[:1] == b"\r":  # RFC 9112 §2.2: empty lines before a request line are ignored
            skip = _LEADING_CRLF.match(buf).end()  # type: ignore[union-attr]  # (?:..)* always matches
            if skip:
                buf = buf[skip:]
                self._scanned = 0
        end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3))
        if end < 0:
            self._buffer = buf
            self._check_partial_head(buf)
            return
        self._buffer = b""
        self._scanned = 0
        try:
            head = http1.parse_head(buf[:end], self._server._max_header_bytes)
        except ProtocolError as error:
            self._reject(error.status, error.reason)
            return
        self._start_exchange(head, buf[end + 4 :])

    def _check_partial_head(self, buf: bytes) -> None:
        """Refuse a head that can't become valid without waiting for the rest of it."""
        scanned = self._scanned
        self._scanned = len(buf)
        if buf.count(b"\n", scanned) != buf.count(b"\r\n", max(0, scanned - 1)):
            self._reject(400, "bare LF in the request head: lines must end with CRLF")
        elif len(buf) > http1.MAX_REQUEST_LINE and buf.find(b"\r\n", 0, http1.MAX_REQUEST_LINE + 2) < 0:
            self._reject(414, "request line too long")
        elif len(buf) > http1.MAX_REQUEST_LINE + self._server._max_header_bytes + 4:
            self._reject(431, "request header block too large")

    def _start_exchange(self, head: RequestHead, rest: bytes) -> None:
        self._deadline_kind = _NO_DEADLINE
        self._close_after = not head.keep_alive
        self._sent = False
        self._framing = http1.WHOLE
        self._body_error = None
        if head.connect is not None:
            self._state = _WAIT
            self._buffer = rest  # tunnel payload, if the CONNECT is accepted
            self._close_after = True  # a refused CONNECT may have sent tunnel bytes already
            self._run(self._serve_connect(head))
            return
        length = head.content_length
        if length:
            self._body_remaining = length
            self._decoder = None
            if length <= http1.BUFFERED_BODY_LIMIT:
                self._state = _BODY_BUFFERED
                self._head = head
                self._body_parts = []
                if head.expect_continue and head.http11:
                    self._transport.write(_CONTINUE)
                self._set_deadline(_BODY_STALL, self._server._idle_timeout)
                if rest:
                    self._on_body_bytes(rest)
                return
        elif head.chunked:
            self._decoder = http1.ChunkedDecoder()
        else:
            self._state = _WAIT
            self._buffer = rest
            self._dispatch(head, EMPTY_BODY)
            return
        body = self._body = _StreamBody(self)
        self._expect_continue = head.expect_continue and head.http11
        self._state = _BODY
        self._set_deadline(_BODY_STALL, self._server._idle_timeout)
        self._dispatch(head, body)
        if rest and self._state == _BODY:
            self._on_body_bytes(rest)

    def _on_body_bytes(self, data: bytes) -> None:
        self._deadline = self._loop.time() + self._server._idle_timeout
        decoder = self._decoder
        if decoder is not None:
            try:
                pieces, used = decoder.feed(data)
            except ProtocolError as error:
                self._fail_body(error)
                return
            done = decoder.done
        else:
            remaining = self._body_remaining
            if len(data) <= remaining:
                pieces = [data]
                used = len(data)
            else:
                pieces = [data[:remaining]]
                used = remaining
            self._body_remaining = remaining = remaining - used
            done = not remaining
        if self._state == _BODY_BUFFERED:
            self._body_parts.extend(pieces)
            if done:
                head = self._head
                assert head is not None
                self._head = None
                parts = self._body_parts
                self._body_parts = []
                self._deadline_kind = _NO_DEADLINE
                self._state = _WAIT
                self._buffer = data[used:]
                self._dispatch(head, httpx.ByteStream(parts[0] if len(parts) == 1 else b"".join(parts)))
            return
        body = self._body
        assert body is not None
        for piece in pieces:
            if piece:
                body.push(piece)
        if done:
            body.finish()
            self._deadline_kind = _NO_DEADLINE
            self._state = _WAIT
            self._buffer = data[used:]
            if len(self._buffer) > HIGH_WATER:
                self._pause_reading()
        elif body.size > HIGH_WATER:
            self._pause_reading()

    def _fail_body(self, error: ProtocolError) -> None:
        """A request body's framing broke: refuse it, or fail the stream the handler reads."""
        if self._state == _BODY_BUFFERED:
            self._reject(error.status, error.reason)
            return
        self._body_error = error
        self._close_after = True
        self._state = _WAIT
        self._buffer = b""
        self._deadline_kind = _NO_DEADLINE
        if self._body is not None:
            self._body.fail(error)

    def body_wanted(self) -> None:
        """The handler started reading a streamed body: time for ``100 Continue`` if the client waits for it."""
        if self._expect_continue:
            self._expect_continue = False
            if not self._sent and self._state not in (_CLOSING, _CLOSED):
                self._transport.write(_CONTINUE)

    def body_caught_up(self) -> None:
        """The handler caught up with a streamed body: read the socket again."""
        if self._reading_paused and self._state == _BODY:
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()

    # --- calling the handler ----------------------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        """Have the connection's worker serve ``coro`` (one request, or a CONNECT) next."""
        self._server._in_flight += 1
        self._next = coro
        task = self._task
        if task is None or task.done():
            self._wake = None
            self._task = self._loop.create_task(self._work())
            return
        wake = self._wake
        if wake is not None:  # else the worker is ending the previous request (pipelined): it takes this one next
            self._wake = None
            wake.set_result(None)

    async def _work(self) -> None:
        """Serve the requests _run hands over, one at a time, until the connection closes (_stop_worker).

        A request that fails, or leaves a cancellation behind (requested while
        it ran and not taken back), ends the worker as it would have ended a
        task of its own: whatever cancels a task sees it end, and the next
        request starts afresh, on a new worker.
        """
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling  # bound once: looked up on each request, they cost more than their calls
        create_future = self._loop.create_future
        try:
            while not cancelling():
                coro = self._next
                if coro is None:
                    wake = self._wake = create_future()
                    await wake
                    continue
                self._next = None
                await coro
        except (Exception, asyncio.CancelledError):
            self._worker_ended(task)
            raise
        self._worker_ended(task)

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        if self._task is task:  # not stopped: a request handed over meanwhile (pipelined) gets a new worker
            self._wake = None
            self._task = None if self._next is None else self._loop.create_task(self._work())

    def _stop_worker(self) -> None:
        """End the worker: cancel the request it serves, or its wait; a request it never started is dropped."""
        task = self._task
        self._task = None
        self._wake = None
        coro = self._next
        if coro is not None:
            self._next = None
            coro.close()
            self._server._in_flight -= 1
        if task is not None and not task.done():
            task.cancel()

    def _dispatch(self, head: RequestHead, stream: httpx.AsyncByteStream) -> None:
        try:
            request = request_from_wire(head.method, _url(head.url), head.headers, stream)
            # Method and target as sent: httpx upper-cases the method and httpx.URL removes dot segments, both
            # of which an inbound policy must see as they were (bypasses).
            request.extensions[REQUEST_LINE] = (head.method, head.url)
            if not head.http11:  # httpx's own key: what the client spoke (HTTP/1.1 when absent)
                request.extensions["http_version"] = b"HTTP/1.0"
            if self._downstream is not None:
                request.extensions[DOWNSTREAM] = self._downstream
        except (httpx.InvalidURL, UnicodeError) as exc:
            self._reject(400, f"invalid request target: {exc}")
            return
        self._run(self._serve(request, head))

    async def _serve(self, request: httpx.Request, head: RequestHead) -> None:
        try:
            try:
                response = await self._server._handler(request)
            except asyncio.CancelledError as exc:
                if self._cancelled_by_us():
                    raise
                self._answer_error(exc, request, head)  # a cancellation that escaped the handler: its bug
                return
            except Exception as exc:
                self._answer_error(exc, request, head)
                return
            try:
                await self._send_response(response, head)
            except asyncio.CancelledError as exc:
                if self._cancelled_by_us():
                    raise
                self._answer_error(exc, request, head)
            except Exception as exc:
                self._answer_error(exc, request, head)
            finally:
                # A body in memory holds nothing to release (the engine wraps bodies it must count).
                if not response.is_closed and not isinstance(response.stream, BYTE_STREAM):
                    # httpx's Response.aclose without its request_context (a generator context manager that only
                    # names the request in a RequestError): about 3 µs a request, and the error is dropped here.
                    response.is_closed = True
                    try:  # noqa: SIM105  # cheaper than contextlib.suppress on every request
                        await cast(httpx.AsyncByteStream, response.stream).aclose()
                    except Exception:  # a failed body's error was answered above
                        pass
        finally:
            self._server._in_flight -= 1
            self._exchange_done()

    def _cancelled_by_us(self) -> bool:
        task = asyncio.current_task()
        return self._state == _CLOSED or (task is not None and task.cancelling() > 0)

    def _answer_error(self, exc: BaseException, request: httpx.Request | None, head: RequestHead) -> None:
        """Answer in place of the response that failed, or abort if part of it went out already."""
        if self._state >= _CLOSING:
            return
        body_error = self._body_error
        error = mesh_error(exc, request)
        client_side = body_error is not None or isinstance(exc, _ClientGoneError | ProtocolError)
        if error is None and not client_side:
            logger.error(
                "%s listener: unexpected error handling %s %s",
                self._server.name,
                head.method,
                request.url if request is not None else "",
                exc_info=exc,
            )
        if self._sent:
            if client_side:
                self._transport.abort()
            else:
                self._end_failed_body(error)
            return
        self._out.clear()
        self._out_size = 0
        head_only = head.method == "HEAD"
        if body_error is not None:
            self._close_after = True
            self._write(http1.plain_error(body_error.status, body_error.reason, head_only=head_only))
            return
        if client_side:
            self._transport.abort()
            return
        # A request body not read to its end leaves the connection's framing unknown: close after answering.
        close = self._close_after or self._state != _WAIT or self._server._draining
        if error is None:
            body = b"internal error in the mesh proxy\n"
            status = 500
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))]
            close = True
        else:
            status, headers, body = error_head(error)
        self._close_after = close
        response = http1.local_response(
            status, headers, body, close=close, head_only=head_only, keep_alive_header=not head.http11
        )
        self._write(response)

    def _exchange_done(self) -> None:
        state = self._state
        if state >= _TUNNEL:
            return
        if self._close_after or state != _WAIT or self._server._draining:
            self._close_gracefully()
            return
        self._flush()
        self._state = _HEAD
        self._set_deadline(_IDLE, self._server._idle_timeout)
        self._resume_reading()
        if self._buffer:
            data = self._buffer
            self._buffer = b""
            self._on_head_bytes(data)

    # --- writing responses -----------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Write now (with anything queued before it)."""
        if self._out:
            self._out.append(data)
            self._flush()
        elif self._state != _CLOSED:
            self._transport.write(data)
            self._sent = True

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= _FLUSH_SIZE:
            self._flush()
        elif not self._flush_scheduled:
            # Written once the loop turns: a head and a body that is already there go out in one write.
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            self._out = []
            self._out_size = 0
            if self._state != _CLOSED:
                self._transport.write(data)
                self._sent = True

    async def _wait_writable(self) -> None:
        """Wait while the client's socket buffer is full (the transport paused writing)."""
        if self._write_paused and self._state != _CLOSED:
            self._write_waiter = self._loop.create_future()
            try:
                await self._write_waiter
            finally:
                self._write_waiter = None

    async def _send_response(self, response: httpx.Response, head: RequestHead) -> None:
        status = response.status_code
        if status < 200:
            if status == 101 and head.upgrade and "network_stream" in response.extensions:
                await self._tunnel_upgrade(response)
                return
            raise BadResponseError(f"unexpected {status} response")
        stream = response.stream
        in_memory = isinstance(stream, BYTE_STREAM)
        # A refused upgrade: the client may have sent bytes for the new protocol already.
        close = self._close_after or self._state != _WAIT or self._server._draining or head.upgrade
        try:
            out = http1.response_head(status, raw_items(response.headers), head, close=close, in_memory=in_memory)
        except BadResponseError as error:
            self._close_after = self._close_after or error.close
            raise
        if out.close:
            self._close_after = True
        framing = out.framing
        if framing == http1.WHOLE:  # no body
            self._write(out.data)
            return
        chunked = framing == http1.CHUNKED
        expected = out.length
        if in_memory:  # one write with the head
            body = b"".join(stream)  # type: ignore[arg-type]  # also a SyncByteStream
            if expected >= 0 and len(body) != expected:
                raise BadResponseError("response body does not match its Content-Length")
            self._write(http1.with_body(out.data, [body] if body else [], chunked, end=True))
            return
        assert isinstance(stream, ASYNC_BYTE_STREAM)
        # What the body has now goes with the head: all of it, in one write, when no read has to wait.
        parts: list[bytes] = []
        take: Callable[[], list[bytes] | None] | None = getattr(stream, "take_whole", None)
        whole = take() if take is not None else None
        if whole is not None:  # the engine's wrapper of the upstream client's complete body: taken, not iterated
            parts = [chunk for chunk in whole if chunk]
            sent = sum(map(len, parts))
            ended, waiting = True, None
        else:
            chunks = stream.__aiter__()
            if getattr(stream, "complete", False) is True:  # says so: no read waits
                parts = [chunk async for chunk in chunks if chunk]
                sent = sum(map(len, parts))
                ended, waiting = True, None
            else:  # read by hand, up to the first read that waits
                sent, ended, waiting = _take_ready(chunks, parts, _FLUSH_SIZE)
        if 0 <= expected < sent:
            raise BadResponseError("response body longer than its Content-Length")
        if ended:
            if 0 <= expected != sent:
                raise BadResponseError("response body shorter than its Content-Length")
            self._write(http1.with_body(out.data, parts, chunked, end=True))
            return
        # The rest has to wait: the head and what came so far go now, then the body streams.
        self._framing = framing
        self._write(http1.with_body(out.data, parts, chunked))
        while True:
            try:
                chunk = await (waiting if waiting is not None else chunks.__anext__())
            except StopAsyncIteration:
                break
            waiting = None
            if not chunk:
                continue
            if expected >= 0:
                sent += len(chunk)
                if expected < sent:
                    raise BadResponseError("response body longer than its Content-Length")
            if chunked:
                self._queue(b"%x\r\n" % len(chunk))
                self._queue(chunk)
                self._queue(b"\r\n")
            else:
                self._queue(chunk)
            if self._write_paused:
                self._flush()
                await self._wait_writable()
            if self._state == _CLOSED:
                raise _ClientGoneError("the client closed the connection")
        if 0 <= expected != sent:
            raise BadResponseError("response body shorter than its Content-Length")
        if chunked:
            self._out.append(http1.LAST_CHUNK)
        self._flush()

    def _end_failed_body(self, error: MeshError | None) -> None:
        """The body of a response under way failed (``error``; None: a bug of ours): end it short, saying why.

        The head went out, so the status can't change any more; Envoy resets
        the stream. What came of the body is sent; a chunked body then gets
        :func:`~meshlib._wire.error_chunk`; then a timeout closes the
        connection (FIN: the client reads an incomplete body) and any other
        failure resets it (RST: the client's read fails with ECONNRESET), as
        does a timeout of a body that ends with the connection, which a FIN
        would complete. The sidecar client raises the error the chunk names,
        else the class the FIN or RST stands for (docs/sidecar.md, "When the
        body fails").
        """
        framing = self._framing
        if error is not None and framing == http1.CHUNKED:
            self._out.append(error_chunk(error))
        self._flush()
        if isinstance(error, RequestTimeoutError) and framing != http1.UNTIL_CLOSE:
            self._close_after = True  # _exchange_done closes: a FIN once the bytes above are sent
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        self._transport.abort()

    # --- tunnels -----------------------------------------------------------------------------------------------------

    async def _tunnel_upgrade(self, response: httpx.Response) -> None:
        upgrade = response.headers.get("upgrade")
        self._write(
            http1.upgrade_head(raw_items(response.headers), upgrade.encode("latin-1") if upgrade is not None else None)
        )
        tunnel = StreamTunnel(self._transport, response.extensions["network_stream"])
        await self._enter_tunnel(tunnel)

    async def _enter_tunnel(self, tunnel: StreamTunnel | TcpTunnel) -> None:
        self._state = _TUNNEL
        self._tunnel = tunnel
        self._deadline_kind = _NO_DEADLINE
        self._resume_reading()
        if self._write_paused:
            tunnel.client_pause_writing()
        initial = self._buffer
        self._buffer = b""
        await tunnel.run(initial)

    async def _serve_connect(self, head: RequestHead) -> None:
        try:
            assert head.connect is not None
            host, port = head.connect
            tunnel = await open_connect(self._server._connect_tunnel, self._transport, host, port)
            if isinstance(tunnel, bytes):  # refused: the whole answer
                self._write(tunnel)
                return
            if self._state >= _CLOSING:
                tunnel.close()
                return
            self._write(CONNECTED)
            await self._enter_tunnel(tunnel)
        finally:
            self._server._in_flight -= 1
            self._exchange_done()

    # --- closing -----------------------------------------------------------------------------------------------------

    def _reject(self, status: int, reason: str) -> None:
        """Refuse the request being read: a whole response with Connection: close, then close."""
        if self._state >= _CLOSING:
            return
        self._state = _CLOSING
        self._buffer = b""
        self._write(http1.plain_error(status, reason))
        self._close_gracefully()

    def _close_gracefully(self) -> None:
        """Half-close after what was written, drop what the client still sends, close at its end (or soon)."""
        if self._state == _CLOSED:
            return
        self._flush()
        self._state = _CLOSING
        transport = self._transport
        try:
            if not transport.is_closing() and transport.can_write_eof():
                transport.write_eof()
                self._resume_reading()
                self._set_deadline(_LINGER, _LINGER_TIME)
                return
        except (OSError, RuntimeError):
            pass
        transport.close()

    def drain(self) -> None:
        """The server drains: close now if idle, else close after the request being served."""
        if self._state == _HEAD and not self._buffer:
            self._state = _CLOSING
            self._transport.close()
        else:
            self._close_after = True

    def abort(self) -> None:
        """Close at once, dropping whatever is in flight."""
        if self._state != _CLOSED:
            self._transport.abort()
        self._stop_worker()


def _downstream_of(transport: asyncio.Transport) -> Downstream:
    """The client of a connection: address, and the certificate it presented over TLS (verified by the context)."""
    address = transport.get_extra_info("peername")
    ssl_object = transport.get_extra_info("ssl_object")
    peer_address = (str(address[0]), int(address[1])) if isinstance(address, tuple) and len(address) >= 2 else None
    if ssl_object is None:
        return Downstream(peer_address)
    return Downstream(peer_address, tls=True, certificate=ssl_object.getpeercert(binary_form=True))


class HttpServer:
    """An HTTP/1.1 listener that hands each request to ``handler`` (see the module docstring for the behaviour).

    ``connect_tunnel`` enables CONNECT: the policy says whether a (host, port)
    may be tunnelled to (False or a raised MeshError refuses). Without it,
    CONNECT is answered 405.
    """

    def __init__(
        self,
        name: str,
        handler: Handler,
        limits: SidecarLimitsConfig,
        *,
        connect_tunnel: ConnectPolicy | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self.name = name
        self._tls = tls
        self._accepting: asyncio.Task[None] | None = None  # the accept loop of a TLS listener
        self._listening: socket.socket | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._handler = handler
        self._connect_tunnel = connect_tunnel
        self._max_connections = limits.max_connections
        self._max_header_bytes = limits.max_request_headers_kb * 1024
        self._header_timeout = limits.header_timeout
        self._idle_timeout = limits.idle_timeout
        self._connections: set[_DownstreamConnection] = set()
        self._in_flight = 0
        self._server: asyncio.AbstractServer | None = None
        self._address: tuple[str, int] = ("", 0)
        self._draining = False
        self._closed = False
        self._all_closed: asyncio.Event | None = None

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock``: bound and listening already (the caller reports a port taken, sets SO_REUSEPORT)."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        address = sock.getsockname()
        self._address = (address[0], address[1])
        if self._tls is None:
            self._server = await loop.create_server(
                lambda: _DownstreamConnection(self, loop), sock=sock, backlog=socket.SOMAXCONN
            )
            return
        self._listening = sock
        self._accepting = loop.create_task(
            accept_loop(
                sock,
                self._tls,
                lambda: _DownstreamConnection(self, loop),
                handshake_timeout=self._header_timeout,
                connections=self._handshakes,
            )
        )

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) served."""
        return self._address

    @property
    def connections(self) -> int:
        """Client connections open now."""
        return len(self._connections)

    @property
    def in_flight(self) -> int:
        """Requests being handled now (from the head read to the response's last byte; a tunnel while open)."""
        return self._in_flight

    def stop_accepting(self) -> None:
        """Close the listening socket; open connections go on."""
        if self._server is not None:
            self._server.close()
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
            for handshake in list(self._handshakes):  # not yet a connection: nothing in flight to drain
                handshake.cancel()
        if self._listening is not None:
            self._listening.close()
            self._listening = None

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - the drain deadline is the contract
        """Stop accepting, close idle connections, let requests in flight finish (with ``Connection: close``).

        True if every connection closed within ``timeout``; otherwise the rest
        are aborted and the answer is False.
        """
        self._draining = True
        self.stop_accepting()
        for conn in list(self._connections):
            conn.drain()
        if not self._connections:
            return True
        self._all_closed = asyncio.Event()
        try:
            await asyncio.wait_for(self._all_closed.wait(), timeout)
        except TimeoutError:
            await self.close()
            return False
        return True

    async def close(self) -> None:
        """Abort every connection and request now."""
        self._closed = True
        self.stop_accepting()
        connections = list(self._connections)
        self._connections.clear()
        tasks = [c._task for c in connections if c._task is not None]
        for conn in connections:
            conn.abort()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._all_closed is not None:
            self._all_closed.set()

    def _forget(self, conn: _DownstreamConnection) -> None:
        self._connections.discard(conn)
        if not self._connections and self._all_closed is not None:
            self._all_closed.set()
