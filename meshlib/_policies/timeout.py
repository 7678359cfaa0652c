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

Every timeout error is built here (:func:`timeout_error`, :func:`deadline_error`),
so it reads the same whichever mode or layer noticed it (docs/resilience.md,
"Timeout errors").
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeAlias

import anyio

from meshlib._clock import Clock
from meshlib._config.durations import format_duration
from meshlib._engine.alarms import TaskAlarm, schedule
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler
from meshlib._engine.context import CallContext, context_of
from meshlib._engine.interrupt import READ_DEADLINE
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

    Running out while connecting is an UpstreamConnectError when a connect
    limit (``connect_timeout``, or the client's own) is what ran out: the
    request never left, so it is as safe to retry as a refused connection.
    When the per-try or request timeout ran out first, it is a
    RequestTimeoutError whatever the try was doing, as Envoy tells a connect
    failure (UF) from an upstream request timeout (UT); the async driver
    cannot tell a try's phase when its own timer cuts it, so this is also
    what keeps sync and async alike. Only called when a try fails: never on
    the way of a success.
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
    cls = UpstreamConnectError if phase == "connect" and kind not in ("per_try", "request") else RequestTimeoutError
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
    now = ctx.clock.monotonic()
    # Past the deadline, the request timeout is what fired, even when it only cut a try's own budget short.
    if ctx.deadline is not None and now >= ctx.deadline - _SLACK:
        return "request", request_timeout
    # Past the try's own end, before the deadline: its per-try timeout fired (a body read, or a read cut short).
    try_deadline = ctx.try_deadline
    if tries is not None and tries.per_try is not None and try_deadline is not None and now >= try_deadline - _SLACK:
        return "per_try", tries.per_try
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
        """httpx's per-request timeout dict for this try, never looser than the client's own (None: no limit).

        Also sets ``ctx.try_deadline``: the try, its response body included, ends
        within ``min(per_try_timeout, what is left)`` (Envoy's per-try timeout
        spans the response as its route timeout does).
        """
        budget = math.inf if self.per_try is None else self.per_try
        if ctx.deadline is None and self.per_try is None:
            ctx.try_deadline = None
        else:
            now = clock.monotonic()
            if ctx.deadline is not None:
                budget = min(budget, ctx.deadline - now)
            if budget <= 0:
                raise deadline_error(ctx, ctx.attempt)
            ctx.try_deadline = now + budget
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
        loop = asyncio._get_running_loop()
        task = asyncio.current_task(loop) if loop is not None else None
        if loop is None or task is None:  # another anyio backend (trio): its own cancel scope
            try:
                with anyio.fail_after(budget):
                    return await call_next(request)
            except TimeoutError:
                raise timeout_error(ctx) from None
        # What asyncio.timeout does (cancel the task when due, take the cancellation back): one timer per try.
        alarm = TaskAlarm(task)
        # The configured per-try timeout is a fixed delay, fit for the cheap FIFO alarms; a budget cut
        # short by the deadline is not.
        schedule(loop, budget, alarm, shared=budget == self.timeouts.per_try)
        # Due when the try must end, its response body included: the body's wrapper takes it over (streams.py).
        ctx.try_alarm = alarm if own else None
        try:
            response = await call_next(request)
        except BaseException as error:
            ctx.try_alarm = None
            alarm.cancel()
            if isinstance(error, asyncio.CancelledError) and alarm.caused(task):
                raise timeout_error(ctx) from None
            raise
        if alarm.hit:  # the try swallowed the cancellation and answered anyway: take it back
            task.uncancel()
        alarm.watch(None)  # the head is in: from here on, only the body's reads are cut off
        if ctx.try_alarm is alarm:  # no body took it (one in memory, or none)
            ctx.try_alarm = None
            alarm.cancel()
        return response
