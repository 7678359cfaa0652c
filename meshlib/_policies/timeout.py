"""``timeout`` and ``retry.per_try_timeout``: a deadline for the whole request and a bound on each try.

The deadline is data: an absolute time on the mesh's clock in the
CallContext, set once above the retries. Each try passes
``min(per_try_timeout, time left, the client's own timeout)`` to httpx as the
request's timeout, so the socket operations enforce it in both modes (for a
sync caller a read timeout bounds each read, not the total). Async callers are
also cut off by a cancel scope around each try, bounded by what is left of the deadline.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import ClassVar

import anyio

from meshlib._clock import Clock
from meshlib._engine.alarms import Alarm, schedule
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler
from meshlib._engine.context import CallContext, context_of
from meshlib._errors import RequestTimeoutError

__all__ = ["DeadlineFilter", "PerTryTimeoutFilter", "TryTimeouts", "timeout_error"]


def timeout_error(ctx: CallContext, message: str) -> RequestTimeoutError:
    """A RequestTimeoutError that says whether the whole request's deadline is what ran out."""
    error = RequestTimeoutError(message, request=ctx.original, route=ctx.route.name, cluster=ctx.cluster)
    # A millisecond of slack: timers fire a hair early or late.
    error.per_try = ctx.deadline is None or ctx.clock.monotonic() < ctx.deadline - 0.001
    return error


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

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        # No cancel scope of its own: each try is bounded by what is left of the deadline (PerTryTimeoutFilter)
        # and the retry loop refuses a backoff that would overrun it, which covers the whole request.
        self._start(request)
        return await call_next(request)


@dataclass(frozen=True, slots=True)
class TryTimeouts:
    """The time limits of one try: per_try_timeout and connect_timeout (seconds, or None)."""

    per_try: float | None
    connect: float | None

    def limits(self, ctx: CallContext, clock: Clock, client: dict[str, float | None] | None) -> dict[str, float | None]:
        """httpx's per-request timeout dict for this try, never looser than the client's own (None: no limit)."""
        budget = math.inf if self.per_try is None else self.per_try
        if ctx.deadline is not None:
            budget = min(budget, ctx.deadline - clock.monotonic())
        if budget <= 0:
            raise timeout_error(ctx, "request timeout ran out before the next try")
        connect = budget if self.connect is None else min(budget, self.connect)
        client = client or {}
        out = {
            "connect": _tighter(connect, client.get("connect")),
            "read": _tighter(budget, client.get("read")),
            "write": _tighter(budget, client.get("write")),
            "pool": _tighter(budget, client.get("pool")),
        }
        return out


def _tighter(mine: float, theirs: float | None) -> float | None:
    """The tighter of two limits, where infinity (ours) and None (the client's) mean none."""
    if theirs is not None and theirs < mine:
        return theirs
    return None if mine == math.inf else mine


class PerTryTimeoutFilter:
    """Bounds one try by per_try_timeout, connect_timeout and what is left of the deadline."""

    name: ClassVar[str] = "per_try_timeout"

    def __init__(self, timeouts: TryTimeouts, clock: Clock) -> None:
        self.timeouts = timeouts
        self.clock = clock

    def _apply(self, request: Request) -> tuple[CallContext, float | None]:
        ctx = context_of(request)
        limits = self.timeouts.limits(ctx, self.clock, request.extensions.get("timeout"))
        request.extensions["timeout"] = limits
        # The whole try (headers included) is bounded by the read budget; connect is within it.
        return ctx, limits["read"]

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        self._apply(request)
        return call_next(request)

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        ctx, budget = self._apply(request)
        if budget is None:
            return await call_next(request)
        loop = asyncio._get_running_loop()
        task = asyncio.current_task(loop) if loop is not None else None
        if loop is None or task is None:  # another anyio backend (trio): its own cancel scope
            try:
                with anyio.fail_after(budget):
                    return await call_next(request)
            except TimeoutError:
                raise timeout_error(ctx, _ran_out(ctx, budget)) from None
        # What asyncio.timeout does (cancel the task when due, take the cancellation back), without its
        # context manager: one timer per try, about 2 µs against 5.
        alarm = _TryAlarm(task)
        # The configured per-try timeout is a fixed delay, fit for the cheap FIFO alarms; a budget cut
        # short by the deadline is not.
        handle = schedule(loop, budget, alarm, shared=budget == self.timeouts.per_try)
        try:
            response = await call_next(request)
        except asyncio.CancelledError:
            if alarm.rang and task.uncancel() <= alarm.cancelling:
                raise timeout_error(ctx, _ran_out(ctx, budget)) from None
            raise
        finally:
            handle.cancel()
        if alarm.rang:  # the try swallowed the cancellation and answered anyway: take it back
            task.uncancel()
        return response


def _ran_out(ctx: CallContext, budget: float) -> str:
    return f"try {ctx.attempt} ran out of time after {budget:g}s"


class _TryAlarm(Alarm):
    """A try's timer on asyncio: cancels the task when due, and remembers that it did."""

    __slots__ = ("cancelling", "rang", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.when = 0.0  # Alarm's fields, set here: no super().__init__() call on the hot path
        self.callback = None
        self.cancelled = False
        self.handle = None
        self.task = task
        self.cancelling = task.cancelling()  # cancellations already requested by others
        self.rang = False

    def ring(self) -> None:
        self.rang = True
        self.task.cancel()
