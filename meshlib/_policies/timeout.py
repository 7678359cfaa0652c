"""``timeout`` and ``retry.per_try_timeout``: a deadline for the whole request and a bound on each try.

The deadline is data: an absolute time on the mesh's clock in the
CallContext, set once above the retries. Each try passes
``min(per_try_timeout, time left, the client's own timeout)`` to httpx as the
request's timeout, so the socket operations enforce it in both modes (for a
sync caller a read timeout bounds each read, not the total). Async callers are
also cut off by a cancel scope around each try, bounded by what is left of the deadline.

Every timeout error is built here (:func:`timeout_error`, :func:`deadline_error`),
so it reads the same whichever mode or layer noticed it (docs/resilience.md,
"Timeout errors").
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeAlias

import anyio

from meshlib._clock import Clock
from meshlib._config.durations import format_duration
from meshlib._engine.alarms import Alarm, schedule
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler
from meshlib._engine.context import CallContext, context_of
from meshlib._errors import RequestTimeoutError, TimeoutKind, UpstreamConnectError, try_message

__all__ = [
    "DeadlineFilter",
    "PerTryTimeoutFilter",
    "Phase",
    "TryTimeouts",
    "deadline_error",
    "timeout_error",
    "timeout_message",
]

Phase: TypeAlias = Literal["connect", "read", "write", "pool"]
"""The part of a try that ran out of time, named like httpx's timeout keys."""

_LABELS: dict[TimeoutKind, str] = {
    "request": "request timeout",
    "per_try": "per-try timeout",
    "connect": "connect timeout",
    "client": "client timeout",
}
# A millisecond of slack: timers fire a hair early or late.
_SLACK = 0.001


def timeout_message(
    kind: TimeoutKind | None,
    timeout: float | None,
    *,
    route: str | None,
    cluster: str | None,
    attempt: int,
    endpoint: str | None = None,
    before: bool = False,
) -> str:
    """The one wording of a timeout error, e.g.
    ``request timeout (1s) ran out during try 2 of route 'reviews', cluster 'reviews-v1' (endpoint http://…)``.

    ``before``: no time was left to start try ``attempt``.
    """
    event = _LABELS[kind] if kind is not None else "timeout"
    if timeout is not None:
        event += f" ({format_duration(timeout)})"
    return try_message(
        f"{event} ran out", attempt=attempt, route=route, cluster=cluster, endpoint=endpoint, before=before
    )


def timeout_error(ctx: CallContext, phase: Phase = "read") -> RequestTimeoutError | UpstreamConnectError:
    """The error for the try in ``ctx`` that has just run out of time in ``phase``, naming the timeout that did.

    Running out while connecting is an UpstreamConnectError (the request never
    left, so it is as safe to retry as a refused connection); otherwise a
    RequestTimeoutError. Only called when a try fails: never on the way of a success.
    """
    kind, seconds = _due(ctx, phase)
    message = timeout_message(
        kind,
        seconds,
        route=ctx.route.name,
        cluster=ctx.cluster,
        attempt=ctx.attempt,
        endpoint=ctx.endpoint.url if ctx.endpoint is not None else None,
    )
    cls = UpstreamConnectError if phase == "connect" else RequestTimeoutError
    return cls(message, request=ctx.original, route=ctx.route.name, cluster=ctx.cluster, kind=kind, timeout=seconds)


def deadline_error(ctx: CallContext, next_try: int) -> RequestTimeoutError:
    """The request timeout left no time to start try ``next_try`` (or to wait for it)."""
    seconds, _ = _configured(ctx)
    message = timeout_message(
        "request", seconds, route=ctx.route.name, cluster=ctx.cluster, attempt=next_try, before=True
    )
    return RequestTimeoutError(
        message, request=ctx.original, route=ctx.route.name, cluster=ctx.cluster, kind="request", timeout=seconds
    )


def _due(ctx: CallContext, phase: Phase) -> tuple[TimeoutKind | None, float | None]:
    """Which timeout ran out in ``phase`` of the current try, and its configured seconds."""
    request_timeout, tries = _configured(ctx)
    # Past the deadline, the request timeout is what fired, even when it only cut a try's own budget short.
    if ctx.deadline is not None and ctx.clock.monotonic() >= ctx.deadline - _SLACK:
        return "request", request_timeout
    # Otherwise the tightest limit the try was given (TryTimeouts.limits); on a tie, the mesh's own and most specific.
    candidates: list[tuple[float, TimeoutKind]] = []
    if tries is not None:
        if phase == "connect" and tries.connect is not None:
            candidates.append((tries.connect, "connect"))
        if tries.per_try is not None:
            candidates.append((tries.per_try, "per_try"))
    client: dict[str, float | None] | None = ctx.original.extensions.get("timeout")  # httpx's Timeout.as_dict()
    client_limit = client.get(phase) if client else None
    if client_limit is not None:
        candidates.append((client_limit, "client"))
    if not candidates:
        return None, None
    seconds, kind = min(candidates, key=lambda candidate: candidate[0])
    return kind, seconds


def _configured(ctx: CallContext) -> tuple[float | None, TryTimeouts | None]:
    """The request timeout and try timeouts of the leg the call went through, read off the leg's filters.

    Looked up only when an error is being built, so that no request pays for
    carrying them. (A mirrored copy may find its route's leg into the same
    cluster rather than its own, but a copy's errors are only counted.)
    """
    leg = ctx.route.legs.get(ctx.cluster) if ctx.cluster is not None else None
    if leg is None:
        return None, None
    request_timeout = next((f.timeout for f in leg.filters if isinstance(f, DeadlineFilter)), None)
    tries = next((f.timeouts for f in leg.endpoint_filters if isinstance(f, PerTryTimeoutFilter)), None)
    return request_timeout, tries


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
            raise deadline_error(ctx, ctx.attempt)
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
                raise timeout_error(ctx) from None
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
                raise timeout_error(ctx) from None
            raise
        finally:
            handle.cancel()
        if alarm.rang:  # the try swallowed the cancellation and answered anyway: take it back
            task.uncancel()
        return response


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
