"""``circuit_breaker``: pybreaker's state machine per cluster, plus a cap on requests in flight.

Admission happens before any I/O (tower's ``poll_ready``): an open breaker
or a full cluster fails the try at once with CircuitOpenError or
OverloadedError. A try counts as a failure when it raises (connect failure,
reset, timeout) or answers 5xx; pybreaker opens after ``failure_threshold``
failures in a row. After ``recovery_timeout`` exactly one trial request is let
through; its outcome closes or reopens the breaker, and other requests keep
failing fast meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pybreaker

from meshlib._clock import Clock
from meshlib._config.resilience import CircuitBreakerConfig
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler
from meshlib._engine.context import CallContext, context_of
from meshlib._engine.streams import release_when_closed
from meshlib._errors import CircuitOpenError, OverloadedError
from meshlib._upstream.cluster import ClusterState

__all__ = ["BreakerState", "CircuitBreakerFilter", "ClockedMemoryStorage"]


class ClockedMemoryStorage(pybreaker.CircuitMemoryStorage):
    """pybreaker's memory storage, timing the open state by the mesh's clock.

    pybreaker compares ``opened_at + reset_timeout`` with ``datetime.now()``;
    this storage reports ``opened_at`` shifted by what the mesh's clock says
    has elapsed, so a test's FakeClock moves recovery along without sleeping.
    """

    def __init__(self, state: str, clock: Clock) -> None:
        super().__init__(state)
        self._clock = clock
        self._opened_mono: float | None = None

    @property
    def opened_at(self) -> datetime | None:
        if self._opened_mono is None:
            return None
        return datetime.now(UTC) - timedelta(seconds=self._clock.monotonic() - self._opened_mono)

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._opened_mono = self._clock.monotonic()


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.state.count(f"breaker_{new_state.name.replace('-', '_')}")


class _FailedResponseError(Exception):
    """Carries a 5xx response through pybreaker as a failure; unwrapped right after."""

    def __init__(self, response: Response) -> None:
        self.response = response


class BreakerState:
    """A cluster's breaker and in-flight cap: live state that survives reloads while the config is unchanged."""

    def __init__(self, config: CircuitBreakerConfig, cluster: ClusterState, clock: Clock, storage: Any = None) -> None:
        self.config = config
        self.cluster = cluster
        self.clock = clock
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=config.failure_threshold,
            reset_timeout=config.recovery_timeout,
            state_storage=storage or ClockedMemoryStorage(pybreaker.STATE_CLOSED, clock),
            # The caller's own cancellation is no verdict on the upstream.
            exclude=[lambda exc: not isinstance(exc, Exception)],
            listeners=[_Listener(cluster)],
            name=cluster.name,
            # Re-raise the tripping call's own error, so the caller sees what really happened.
            throw_new_error_on_trip=False,
        )
        self._lock = threading.Lock()
        self._trial = False
        self.in_flight = 0

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        return str(self.breaker.current_state)

    def _recovered(self) -> bool:
        opened_at = self.breaker._state_storage.opened_at
        return opened_at is None or datetime.now(UTC) >= opened_at + timedelta(seconds=self.config.recovery_timeout)

    def admit(self, ctx: CallContext) -> tuple[bool, Callable[[], None]]:
        """Let one try in, or raise; returns (is the recovery trial, release callback)."""
        limit = self.config.max_concurrent_requests
        with self._lock:
            state = self.breaker.current_state
            trial = False
            if state != pybreaker.STATE_CLOSED:
                if self._trial or (state == pybreaker.STATE_OPEN and not self._recovered()):
                    self.cluster.count("breaker_rejected")
                    raise CircuitOpenError(
                        f"circuit breaker of cluster {self.cluster.name!r} is {state}",
                        request=ctx.original,
                        route=ctx.route.name,
                        cluster=self.cluster.name,
                    )
                trial = self._trial = True
            if limit is not None and self.in_flight >= limit:
                if trial:
                    self._trial = False
                self.cluster.count("overflow")
                raise OverloadedError(
                    f"cluster {self.cluster.name!r} has {self.in_flight} requests in flight (max {limit})",
                    request=ctx.original,
                    route=ctx.route.name,
                    cluster=self.cluster.name,
                )
            self.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self.in_flight -= 1

        return trial, release

    def end_trial(self) -> None:
        with self._lock:
            self._trial = False


class CircuitBreakerFilter:
    """Admits a try through the cluster's breaker and in-flight cap, and reports its outcome."""

    name: ClassVar[str] = "circuit_breaker"

    def __init__(self, breaker: BreakerState) -> None:
        self.breaker = breaker

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        ctx = context_of(request)
        trial, release = self.breaker.admit(ctx)
        try:
            try:
                with self.breaker.breaker.calling():
                    response = call_next(request)
                    if response.status_code >= 500:
                        raise _FailedResponseError(response)
            except _FailedResponseError as failed:
                response = failed.response
        except BaseException:
            release()
            raise
        finally:
            if trial:
                self.breaker.end_trial()
        return release_when_closed(response, release)

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        ctx = context_of(request)
        trial, release = self.breaker.admit(ctx)
        try:
            try:
                # pybreaker.calling() holds no lock while the block runs (its call() would; notes §1.5).
                with self.breaker.breaker.calling():
                    response = await call_next(request)
                    if response.status_code >= 500:
                        raise _FailedResponseError(response)
            except _FailedResponseError as failed:
                response = failed.response
        except BaseException:
            release()
            raise
        finally:
            if trial:
                self.breaker.end_trial()
        return release_when_closed(response, release)
