"""``timeout`` and ``retry.per_try_timeout``: a deadline for the whole request and a bound on each try.

The deadline is data: an absolute time on the mesh's clock in the
CallContext, set once above the retries. Each try passes
``min(per_try_timeout, time left, the client's own timeout)`` to httpx as the
request's timeout, so the socket operations enforce it in both modes, and
sets ``ctx.try_deadline``, when the try must be over. As in Envoy, both
timeouts cover the response body too: the body wrapper (``_engine/streams.py``)
fails a read that would end past ``try_deadline``; sync socket reads end
there (``_engine/interrupt.py``, ``READ_DEADLINE``), async ones are cut off by
an alarm, as each try's head is by a cancel scope bounded by what is left.

Every timeout error is built by the engine (``_engine/timeouts.py``), so it
reads the same whichever mode or layer noticed it (docs/resilience.md,
"Timeout errors").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import ClassVar

from meshlib._clock import Clock
from meshlib._engine.alarms import TaskAlarm, asyncio_loop, current_task, on_grid, schedule
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler, context_of
from meshlib._engine.context import CallContext
from meshlib._engine.interrupt import READ_DEADLINE
from meshlib._engine.timeouts import TryTimeouts, timeout_error
from meshlib._errors import chained

__all__ = ["DeadlineFilter", "PerTryTimeoutFilter"]


class DeadlineFilter:
    """Sets the request's deadline, so every try and backoff below it fits inside ``timeout``."""

    name: ClassVar[str] = "timeout"

    def __init__(self, timeout: float, clock: Clock) -> None:
        self.timeout = timeout
        self.clock = clock

    def _start(self, request: Request) -> CallContext:
        ctx = context_of(request)
        deadline = self.clock.monotonic() + self.timeout
        ctx.deadline = deadline if ctx.deadline is None else min(ctx.deadline, deadline)
        return ctx

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        self._start(request)
        return call_next(request)

    def handle_async(self, request: Request, call_next: AsyncHandler) -> Awaitable[Response]:
        # No cancel scope of its own: each try is bounded by what is left of the deadline (PerTryTimeoutFilter)
        # and the retry loop refuses a backoff that would overrun it, which covers the whole request. Nothing to
        # do on the way back, so no coroutine of its own either (base.Filter): the caller awaits the next one.
        self._start(request)
        return call_next(request)


class PerTryTimeoutFilter:
    """Bounds one try by per_try_timeout, connect_timeout and what is left of the deadline."""

    name: ClassVar[str] = "per_try_timeout"

    def __init__(self, timeouts: TryTimeouts, clock: Clock) -> None:
        self.timeouts = timeouts
        self.clock = clock

    def _apply(self, request: Request) -> tuple[CallContext, float | None, bool]:
        ctx = context_of(request)
        client: dict[str, float | None] | None = request.extensions.get("timeout")
        limits = self.timeouts.limits(ctx, self.clock, client)
        request.extensions["timeout"] = limits
        # The whole try (headers included) is bounded by the read budget; connect is within it. The budget is
        # the try's own end (try_deadline) unless the client's read timeout, which bounds each read, is tighter.
        read = limits["read"]
        own = read is not None and ctx.try_deadline is not None and (client is None or client.get("read") != read)
        return ctx, read, own

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        ctx, _, _ = self._apply(request)
        if ctx.try_deadline is None:
            return call_next(request)
        # Each socket read ends by the try's deadline, not a whole read timeout after the previous byte.
        token = READ_DEADLINE.set(time.monotonic() + ctx.try_deadline - self.clock.monotonic())
        try:
            return call_next(request)
        finally:
            READ_DEADLINE.reset(token)

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        ctx, budget, own = self._apply(request)
        if budget is None:
            return await call_next(request)
        loop = asyncio_loop()
        task = current_task(loop) if loop is not None else None
        if loop is None or task is None:  # another anyio backend (trio): its own cancel scope
            import anyio  # only here: asyncio's path below needs none of it

            try:
                with anyio.fail_after(budget):
                    return await call_next(request)
            except TimeoutError:
                raise chained(timeout_error(ctx), None)  # noqa: B904 (mypyc drops "from")
        # What asyncio.timeout does (cancel the task when due, take the cancellation back): one timer per try.
        alarm = TaskAlarm(task)
        # The configured per-try timeout is a fixed delay, fit for the cheap FIFO alarms; so is what is left of
        # the deadline on a first try, once on the millisecond grid. A retry's budget may take a loop timer.
        schedule(loop, on_grid(budget), alarm)
        # Due when the try must end, its response body included: the body's wrapper takes it over (streams.py).
        ctx.try_alarm = alarm if own else None
        try:
            response = await call_next(request)
        except BaseException as error:
            ctx.try_alarm = None
            alarm.cancel()
            if isinstance(error, asyncio.CancelledError) and alarm.caused(task):
                raise chained(timeout_error(ctx), None)  # noqa: B904 (mypyc drops "from")
            raise
        if alarm.hit:  # the try swallowed the cancellation and answered anyway: take it back
            task.uncancel()
        alarm.watch(None)  # the head is in: from here on, only the body's reads are cut off
        if ctx.try_alarm is alarm:  # no body took it (one in memory, or none)
            ctx.try_alarm = None
            alarm.cancel()
        return response
