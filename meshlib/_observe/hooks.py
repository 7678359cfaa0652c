"""Where the engine tells observers: an outbound request's start, each try, and its end when the body is done.

The engine calls these only when its snapshot has observers (``ctx.observers``
is set), so a mesh that observes nothing pays one ``is None`` test per stage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Final

import httpx

from meshlib._engine.streams import OnCloseStream
from meshlib._httpx_shortcuts import BYTE_STREAM
from meshlib._observe.exchange import Exchange, Try, now, outbound, retry_reason
from meshlib._observe.observers import Observers
from meshlib._wire import ERROR_HEADER

__all__ = [
    "SIDECAR_DOOR",
    "TryWatch",
    "content_length",
    "error_code",
    "failed",
    "inbound_exchange",
    "inbound_finished",
    "inbound_observed",
    "observed",
    "outbound_exchange",
    "try_started",
]

# The sidecar's outbound listener marks the requests it hands the engine with this extension.
SIDECAR_DOOR: Final = "meshlib.sidecar"

_PROTOCOLS: Final[dict[bytes, str]] = {v.encode(): v for v in ("HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/3")}


def error_code(exc: BaseException) -> str:
    """The code observers record for a failure: a mesh error's own (``x-meshlib-error``'s value), else its kind."""
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    if isinstance(exc, asyncio.CancelledError | GeneratorExit | KeyboardInterrupt):
        return "cancelled"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.TransportError):
        return "upstream_reset"
    return "internal_error"


def outbound_exchange(request: httpx.Request, route: str | None) -> Exchange:
    """The record of an outbound request, as the caller sent it (read from it only when an observer asks)."""
    return outbound(request, route, "sidecar" if SIDECAR_DOOR in request.extensions else "client")


def content_length(value: str | bytes | None) -> int:
    """A request body's size from its Content-Length (a chunked body's is not known up front: 0)."""
    try:
        return max(int(value), 0) if value else 0
    except ValueError:
        return 0


class TryWatch(Try):
    """One try being observed (the :class:`Try` observers see): tell them how it ended.

    The observers' loops are inline here and in the other outbound hooks (as ``Observers``' own methods run
    them): a call less per hook, each request calls several. A watch holds no reference to its exchange (the
    caller passes it): the exchange lists its tries, and a cycle would leave every request's records to the
    cyclic collector.
    """

    def __init__(self, observers: Observers, attempt: int, cluster: str | None, endpoint: str | None) -> None:
        # Try's fields, set here: its __init__ would be one more call per try.
        self.attempt = attempt
        self.cluster = cluster
        self.endpoint = endpoint
        self.start = now()
        self.observers = observers

    def ended(self, exchange: Exchange | None, response: httpx.Response) -> None:
        """The try got its response head."""
        self.end = now()
        self.status = response.status_code
        self._told(exchange)

    def failed(self, exchange: Exchange | None, exc: BaseException) -> None:
        """The try raised ``exc`` (the mesh error it maps to, when there is one)."""
        self.end = now()
        self.error = error_code(exc)
        self._told(exchange)

    def _told(self, exchange: Exchange | None) -> None:
        if exchange is None:  # its context no longer reports to an exchange
            return
        observers = self.observers
        slots = self._slots
        for observer, slotted in observers.try_ended_by:
            if slotted and (slots is None or observer not in slots):
                continue
            try:
                observer.try_ended(exchange, self)
            except Exception:
                observers.failure(observer, "try_ended")


def inbound_exchange(
    door: str,
    method: str,
    scheme: str,
    authority: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    peer: str | None,
) -> Exchange:
    """The record of a request into the app, as the caller sent it (``door``: ``asgi``, ``wsgi`` or ``sidecar``)."""
    user_agent = request_id = None
    received = 0
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"user-agent":
            user_agent = value.decode("latin-1")
        elif lowered == b"x-request-id":
            request_id = value.decode("latin-1")
        elif lowered == b"content-length":
            received = content_length(value)
    return Exchange(
        direction="inbound",
        door=door,
        method=method,
        scheme=scheme,
        authority=authority,
        path=path,
        headers=headers,
        peer=peer,
        user_agent=user_agent,
        request_id=request_id,
        bytes_received=received,
    )


def inbound_finished(
    exchange: Exchange, observers: Observers, status: int | None, error: str | None = None, sent: int = 0
) -> None:
    """An inbound request is over: the app's response (``status``, ``sent`` body bytes) ended, or it failed."""
    exchange.status = status
    if error is not None:
        exchange.error = error
    exchange.bytes_sent = sent
    exchange.end = now()
    observers.finished(exchange)


def try_started(
    exchange: Exchange,
    observers: Observers,
    request: httpx.Request,
    attempt: int,
    cluster: str | None,
    endpoint: str | None,
) -> TryWatch:
    """Record a try about to be sent to ``endpoint`` and tell the observers (tracing adds its headers here)."""
    record = TryWatch(observers, attempt, cluster, endpoint)
    tries = exchange.tries
    inject = exchange.inject
    if tries:
        record.reason = retry_reason(tries[-1])
        told = observers.try_started_by
        # A retry resends its request (which has them already), a hedge sends a copy of the route's (which has not).
        if inject is not None and inject[0] not in request.headers._list:
            request.headers._list.extend(inject)
    else:
        told = observers.first_try_started_by
        if inject is not None:
            request.headers._list.extend(inject)
    tries.append(record)
    exchange.cluster, exchange.endpoint = cluster, endpoint
    slots = exchange._slots
    for observer, slotted in told:
        if slotted and (slots is None or observer not in slots):
            continue
        try:
            observer.try_started(exchange, record, request)
        except Exception:
            observers.failure(observer, "try_started")
    return record


def _finished(exchange: Exchange, observers: Observers) -> None:
    """``observers.finished(exchange)``, inline."""
    slots = exchange._slots
    for observer, slotted in observers.finished_by:
        if slotted and (slots is None or observer not in slots):
            continue
        try:
            observer.finished(exchange)
        except Exception:
            observers.failure(observer, "finished")


def failed(exchange: Exchange, observers: Observers, exc: BaseException) -> None:
    """The request failed before a response head reached the caller."""
    exchange.error = error_code(exc)
    exchange.end = now()
    _finished(exchange, observers)


def inbound_observed(response: httpx.Response, exchange: Exchange, observers: Observers) -> httpx.Response:
    """The sidecar's inbound door: the app answered ``response``; the request ends when its body has been sent."""
    return observed(response, exchange, observers, sending=True)


def observed(
    response: httpx.Response, exchange: Exchange, observers: Observers, *, sending: bool = False
) -> httpx.Response:
    """Record the head of ``response``; the request ends when its body does (now, if it is in memory).

    The body's bytes count as received (an outbound response), or as sent
    when ``sending`` (an inbound door passing the app's response on).
    """
    status = exchange.status = response.status_code
    if exchange.protocol is None:
        version = response.extensions.get("http_version", b"HTTP/1.1")
        exchange.protocol = _PROTOCOLS.get(version) or version.decode("ascii", "replace")
    if status >= 400:  # a meshlib sidecar upstream names its local replies (they are all 4xx and 5xx)
        code = response.headers.get(ERROR_HEADER)
        if code is not None:
            exchange.error = code
    stream = response.stream
    if isinstance(stream, OnCloseStream) and not stream.closed:
        # The engine's own body wrapper (most responses) counts and closes it already: one more callback, not one
        # more layer. (A closed response has closed its stream: tested first, this needs no look at the response.)
        stream.also(_BodyDone(exchange, observers, stream, sending))
    elif response.is_closed or isinstance(stream, BYTE_STREAM):
        # Whole already: a body in memory (the sidecar writes it with the head in one go) ends with the head.
        size = len(response.content) if response.is_closed else len(b"".join(stream))  # type: ignore[arg-type]
        if sending:
            exchange.bytes_sent = size
        else:
            exchange.bytes_received = size
        exchange.end = now()
        _finished(exchange, observers)
    else:
        response.stream = _ObservedBody(stream, exchange, observers, sending)
    return response


class _BodyDone:
    """The callback an engine-wrapped body (``OnCloseStream``) runs when it ends: the request is over."""

    def __init__(self, exchange: Exchange, observers: Observers, stream: OnCloseStream, sending: bool) -> None:
        self.exchange = exchange
        self.observers = observers
        self.stream = stream
        self.sending = sending

    def __call__(self) -> None:
        exchange, stream = self.exchange, self.stream
        if self.sending:
            exchange.bytes_sent = stream.received
        else:
            exchange.bytes_received = stream.received
        if stream.failure is not None:
            exchange.error = error_code(stream.failure)
        exchange.end = now()
        _finished(exchange, self.observers)


class _ObservedBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Counts the body's bytes and tells the observers once, when it ends, fails or is closed."""

    __slots__ = ("_done", "_exchange", "_observers", "_sending", "_stream")

    def __init__(
        self,
        stream: httpx.SyncByteStream | httpx.AsyncByteStream,
        exchange: Exchange,
        observers: Observers,
        sending: bool,
    ) -> None:
        self._stream = stream
        self._exchange = exchange
        self._observers = observers
        self._sending = sending
        self._done = False

    def _count(self, size: int) -> None:
        if self._sending:
            self._exchange.bytes_sent += size
        else:
            self._exchange.bytes_received += size

    def _finish(self, exc: BaseException | None = None) -> None:
        if self._done:
            return
        self._done = True
        exchange = self._exchange
        if exc is not None:
            exchange.error = error_code(exc)
        exchange.end = now()
        self._observers.finished(exchange)

    def __iter__(self) -> Iterator[bytes]:
        stream = self._stream
        assert isinstance(stream, httpx.SyncByteStream)
        try:
            for chunk in stream:
                self._count(len(chunk))
                yield chunk
        except BaseException as exc:
            self._finish(exc)
            raise
        self._finish()

    def __aiter__(self) -> AsyncIterator[bytes]:
        stream = self._stream
        assert isinstance(stream, httpx.AsyncByteStream)
        return _ObservedChunks(self, stream.__aiter__())

    def close(self) -> None:
        try:
            if isinstance(self._stream, httpx.SyncByteStream):
                self._stream.close()
        finally:
            self._finish()

    async def aclose(self) -> None:
        try:
            if isinstance(self._stream, httpx.AsyncByteStream):
                await self._stream.aclose()
        finally:
            self._finish()


class _ObservedChunks:
    """Iterates an observed body's chunks (``_ObservedBody``'s): an iterator object, not an async generator."""

    __slots__ = ("_body", "_chunks")

    def __init__(self, body: _ObservedBody, chunks: AsyncIterator[bytes]) -> None:
        self._body = body
        self._chunks = chunks

    def __aiter__(self) -> _ObservedChunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._body._finish()
            raise
        except BaseException as exc:
            self._body._finish(exc)
            raise
        self._body._count(len(chunk))
        return chunk
