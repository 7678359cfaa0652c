"""Response body wrappers: run a callback once when the body is closed, map its errors, end it at the try's deadline."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, NoReturn

import httpx

from meshlib._engine.alarms import TaskAlarm, asyncio_loop, current_task, schedule
from meshlib._engine.errors import upstream_error
from meshlib._engine.interrupt import READ_DEADLINE
from meshlib._engine.timeouts import timeout_error
from meshlib._errors import chained
from meshlib._httpx_shortcuts import ASYNC_BYTE_STREAM, BYTE_STREAM

if TYPE_CHECKING:
    from meshlib._engine.context import CallContext

__all__ = ["OnCloseStream", "release_when_closed"]


class OnCloseStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Passes a response body through and calls ``on_close`` exactly once when it closes.

    A request is in flight until its response body is done, as in Envoy, so
    least-request balancing and concurrency limits see streamed responses as
    busy. With ``ctx``, httpx errors raised while the body is read (an upstream
    that resets or closes mid-body) become the mesh's typed errors too, and the
    body must end by the try's deadline (``ctx.try_deadline``): Envoy's route
    and per-try timeouts span the whole response, so a read that would end
    later raises the RequestTimeoutError of the timeout that ran out. The
    response head went to the caller already, so nothing retries it. A body
    the upstream sent whole already (in memory, or an inner stream whose
    ``complete`` says so, as the sidecar's upstream client's do) is past its
    timeouts, as Envoy disarms them once the upstream response is complete. A
    body that fails is closed at once: its connection is dropped, never
    pooled, and ``on_close`` runs.
    """

    __slots__ = ("_alarm", "_closed", "_ctx", "_deadline", "_on_close", "_stream", "failure", "received")

    def __init__(
        self,
        stream: httpx.SyncByteStream | httpx.AsyncByteStream,
        on_close: Callable[[], None],
        ctx: CallContext | None = None,
    ) -> None:
        self._stream = stream
        self._on_close = [on_close]
        self._ctx = ctx
        self._closed = False
        self._deadline: float | None = None
        self._alarm: TaskAlarm | None = None
        self.received = 0  # body bytes passed on so far (what observers count)
        self.failure: BaseException | None = None  # why the body failed, when it did (the mesh error raised)
        if ctx is not None:
            # Read now: a retry after this response was dropped would move the context on to the next try.
            self._deadline = ctx.try_deadline
            # The try's own timer on asyncio, due at that deadline: the body's now, so it costs no timer of its own.
            self._alarm, ctx.try_alarm = ctx.try_alarm, None

    @property
    def complete(self) -> bool:
        """Whether the whole body is here already, so no read of it waits (a listener then writes it at once)."""
        return _received_whole(self._stream)

    @property
    def closed(self) -> bool:
        """Whether the body is done (read to its end, failed or closed): ``on_close`` ran."""
        return self._closed

    def also(self, on_close: Callable[[], None]) -> None:
        """Call ``on_close`` too when the body closes (one wrapper per response, however many policies wait)."""
        self._on_close.append(on_close)

    def _done(self) -> None:
        if not self._closed:
            self._closed = True
            if self._alarm is not None:
                self._alarm.cancel()
            callbacks, self._on_close = self._on_close, []  # they may refer to this stream: no cycle left behind
            for on_close in reversed(callbacks):
                on_close()

    def __iter__(self) -> Iterator[bytes]:
        stream = self._stream
        assert isinstance(stream, httpx.SyncByteStream)
        try:
            chunks = (
                stream
                if self._deadline is None or _received_whole(stream)
                else self._until_deadline(stream, self._deadline)
            )
            for chunk in chunks:
                self.received += len(chunk)
                yield chunk
        except httpx.TransportError as exc:
            mapped = self._mapped(exc)
            self.failure = mapped or exc
            with contextlib.suppress(Exception):  # the body's error is what the caller needs to see
                self.close()
            if mapped is None:
                raise
            raise chained(mapped, exc)  # noqa: B904 (mypyc drops "from")

    def _until_deadline(self, stream: httpx.SyncByteStream, deadline: float) -> Iterator[bytes]:
        ctx = self._ctx
        assert ctx is not None
        clock = ctx.clock
        chunks = iter(stream)
        while True:
            left = deadline - clock.monotonic()
            if left <= 0:
                raise timeout_error(ctx)
            # A socket read blocked past the deadline ends there (interrupt.py), not a read timeout later.
            token = READ_DEADLINE.set(time.monotonic() + left)
            try:
                chunk = next(chunks, None)
            finally:
                READ_DEADLINE.reset(token)
            if chunk is None:
                return
            if clock.monotonic() >= deadline:  # came too late: the timeout ran out while it was read
                raise timeout_error(ctx)
            yield chunk

    def take_whole(self) -> list[bytes] | None:
        """The rest of a body that is all here (``complete``) at once, counted; else None: iterate it.

        The same chunks iterating gives, without its ``StopAsyncIteration`` at the end. Only an inner
        stream that can say so for itself (``take_whole``), or one in memory, is taken this way.
        """
        stream = self._stream
        if self._closed:
            return None
        chunks: list[bytes] | None
        if isinstance(stream, BYTE_STREAM):
            chunks = list(stream)
        else:
            take: Callable[[], list[bytes] | None] | None = getattr(stream, "take_whole", None)
            chunks = take() if take is not None else None
            if chunks is None:
                return None
        for chunk in chunks:
            self.received += len(chunk)
        return chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        stream = self._stream
        assert isinstance(stream, ASYNC_BYTE_STREAM)
        if self._deadline is None or _received_whole(stream):
            # Nothing to time: a plain iterator object, not an async generator (which the loop registers and
            # finalizes: a few µs a response).
            return _Passing(self, stream.__aiter__())
        return _UntilDeadline(self, stream.__aiter__(), self._deadline)

    async def _failed(self, exc: httpx.TransportError) -> NoReturn:
        """The body failed with ``exc``: note it, close the body (its connection is dropped), raise the mesh's error."""
        mapped = self._mapped(exc)
        self.failure = mapped or exc
        with contextlib.suppress(Exception):  # the body's error is what the caller needs to see
            await self.aclose()
        if mapped is None:
            raise exc
        raise chained(mapped, exc)

    def _mapped(self, exc: httpx.TransportError) -> httpx.TransportError | None:
        return upstream_error(exc, self._ctx) if self._ctx is not None else None

    def close(self) -> None:
        try:
            if isinstance(self._stream, httpx.SyncByteStream):
                self._stream.close()
        finally:
            self._done()

    async def aclose(self) -> None:
        try:
            if isinstance(self._stream, ASYNC_BYTE_STREAM):
                await self._stream.aclose()
        finally:
            self._done()


class _Passing:
    """Iterates a body that needs no timing, counting its bytes and mapping its errors (``OnCloseStream``'s)."""

    __slots__ = ("_body", "_chunks")

    def __init__(self, body: OnCloseStream, chunks: AsyncIterator[bytes]) -> None:
        self._body = body
        self._chunks = chunks

    def __aiter__(self) -> _Passing:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._chunks.__anext__()
        except httpx.TransportError as exc:
            await self._body._failed(exc)
        self._body.received += len(chunk)
        return chunk


class _UntilDeadline:
    """Iterates a body that must end by ``deadline`` (``OnCloseStream``'s): the try's timeout spans the body.

    An iterator object, not an async generator, for the same reason as ``_Passing`` (and so it compiles).
    On asyncio one alarm serves the whole body (the try's own, or one set at the first read): it cancels
    the reading task only while it waits for a chunk, and otherwise fails the next read.
    """

    __slots__ = ("_body", "_chunks", "_deadline", "_timed")

    def __init__(self, body: OnCloseStream, chunks: AsyncIterator[bytes], deadline: float) -> None:
        self._body = body
        self._chunks = chunks
        self._deadline = deadline
        self._timed = True  # False once the rest of the body came: nothing left to wait for

    def __aiter__(self) -> _UntilDeadline:
        return self

    async def __anext__(self) -> bytes:
        body = self._body
        try:
            chunk = await (self._timed_read() if self._timed else self._chunks.__anext__())
        except httpx.TransportError as exc:
            await body._failed(exc)
        body.received += len(chunk)
        return chunk

    async def _timed_read(self) -> bytes:
        body = self._body
        ctx = body._ctx
        assert ctx is not None
        if _received_whole(body._stream):
            self._timed = False
            return await self._chunks.__anext__()
        deadline = self._deadline
        monotonic = ctx.clock.monotonic
        alarm = body._alarm
        left = deadline - monotonic()
        if left <= 0 or (alarm is not None and alarm.rang):
            raise timeout_error(ctx)
        loop = asyncio_loop()
        try:
            if loop is None:  # another anyio backend (trio): a cancel scope per read
                import anyio  # only here: asyncio's path below needs none of it

                with anyio.fail_after(left):
                    chunk = await self._chunks.__anext__()
            else:
                if alarm is None:
                    alarm = body._alarm = TaskAlarm()
                    schedule(loop, left, alarm, shared=False)
                task = current_task(loop)
                assert task is not None
                alarm.watch(task)
                try:
                    chunk = await self._chunks.__anext__()
                except asyncio.CancelledError:
                    if alarm.caused(task):
                        raise chained(timeout_error(ctx), None)  # noqa: B904 (mypyc drops "from")
                    raise
                finally:
                    alarm.watch(None)
                if alarm.hit:  # the read swallowed the cancellation: take it back, the time is up anyway
                    task.uncancel()
                    raise timeout_error(ctx)
        except TimeoutError:  # trio's cancel scope
            raise chained(timeout_error(ctx), None)  # noqa: B904 (mypyc drops "from")
        if monotonic() >= deadline:  # came too late: the timeout ran out while it was read
            raise timeout_error(ctx)
        return chunk


def _received_whole(stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> bool:
    """Whether ``stream`` holds its whole body already: in memory, or saying so (``complete``)."""
    return isinstance(stream, BYTE_STREAM) or getattr(stream, "complete", False) is True


def release_when_closed(
    response: httpx.Response, release: Callable[[], None], ctx: CallContext | None = None
) -> httpx.Response:
    """Call ``release`` when ``response``'s body is closed: now if it already is, else through its stream."""
    if response.is_closed:
        # Already read and closed (a Response built with content=, as httpx.MockTransport handlers
        # return): nobody will close it again, so the request is over now.
        release()
    elif isinstance(response.stream, OnCloseStream) and not response.stream.closed:
        response.stream.also(release)
    else:
        response.stream = OnCloseStream(response.stream, release, ctx)
    return response
