"""Timeouts as the engine sees them: a try's limits, and the one wording of every timeout error.

The policies that set timeouts (``_policies/timeout.py``: ``timeout`` and
``retry.per_try_timeout``) put the request's deadline and each try's end in
the CallContext; whichever layer notices that time ran out (a policy's alarm,
the body wrapper in ``streams.py``, the error mapping in ``errors.py``, the
retry loop) builds its error here, so it reads the same in every mode and
layer (docs/resilience.md, "Timeout errors").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from meshlib._clock import Clock
from meshlib._config.durations import format_duration
from meshlib._engine.context import CallContext
from meshlib._errors import RequestTimeoutError, TimeoutKind, UpstreamConnectError, try_message

__all__ = ["Phase", "TryTimeouts", "deadline_error", "timeout_error", "timeout_message"]

Phase: TypeAlias = Literal["connect", "read", "write", "pool"]
"""The part of a try that ran out of time, named like httpx's timeout keys."""

_LABELS: dict[TimeoutKind, str] = {
    "request": "request timeout",
    "per_try": "per-try timeout",
    "connect": "connect timeout",
    "client": "client timeout",
}
# A millisecond of slack: timers fire a hair early or late.
_SLACK: Final = 0.001


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
    """The request timeout and try timeouts of the leg the call went through (the leg read them off its filters).

    Looked up only when an error is being built, so that no request pays for
    carrying them. (A mirrored copy may find its route's leg into the same
    cluster rather than its own, but a copy's errors are only counted.)
    """
    leg = ctx.route.legs.get(ctx.cluster) if ctx.cluster is not None else None
    if leg is None:
        return None, None
    return leg.request_timeout, leg.try_timeouts


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
