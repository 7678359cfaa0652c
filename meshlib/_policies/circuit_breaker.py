"""``circuit_breaker``: pybreaker's state machine per cluster, plus a cap on requests in flight.

Admission happens before any I/O (tower's ``poll_ready``): an open breaker
or a full cluster fails the try at once with CircuitOpenError or
OverloadedError. A try counts as a failure when the upstream or the network
failed it (connect failure, reset, timeout) or it answered 5xx; pybreaker
opens after ``failure_threshold`` failures in a row. After
``recovery_timeout`` exactly one trial request is let through; its outcome
closes or reopens the breaker, and other requests keep failing fast meanwhile.

With ``storage: redis://…`` the breaker's state lives in Redis (pybreaker's
Redis storage, namespace ``meshlib:<cluster>``), so every process using that
cluster opens and closes together; the in-flight cap and the one-trial rule
stay per process. A Redis that is down reads as a closed breaker (fail open).

Each change of state is logged once (logger ``meshlib.circuit_breaker``:
WARNING when it opens, INFO when it half-opens and closes) and told to the
mesh's ``breaker_listeners`` (``pybreaker.CircuitBreakerListener.state_change``).
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import httpx
import pybreaker

from meshlib._clock import Clock
from meshlib._config.redact import redact_url
from meshlib._config.resilience import CircuitBreakerConfig
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler, context_of
from meshlib._engine.context import CallContext
from meshlib._engine.streams import release_when_closed
from meshlib._errors import (
    CircuitOpenError,
    NoHealthyUpstreamError,
    OverloadedError,
    RateLimitedError,
    RouteNotFoundError,
)
from meshlib._policies.storage import REDIS_TIMEOUT, is_redis, require_redis
from meshlib._upstream.cluster import ClusterState

__all__ = ["BreakerState", "CircuitBreakerFilter", "ClockedMemoryStorage", "RedisBreakerStorage", "is_failure"]

logger = logging.getLogger("meshlib.circuit_breaker")

# The mesh's own refusals: they say nothing about the upstream, so they neither open nor close a breaker.
_LOCAL_REFUSALS = (NoHealthyUpstreamError, RateLimitedError, CircuitOpenError, OverloadedError, RouteNotFoundError)


def is_failure(error: BaseException) -> bool:
    """Whether a try that raised ``error`` counts against the upstream: a transport error the mesh did not make."""
    return isinstance(error, httpx.TransportError) and not isinstance(error, _LOCAL_REFUSALS)


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
        open_for = self.open_for()
        return None if open_for is None else datetime.now(UTC) - timedelta(seconds=open_for)

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._opened_mono = self._clock.monotonic()

    def open_for(self) -> float | None:
        """Seconds since the breaker last opened, or None if it never did."""
        return None if self._opened_mono is None else self._clock.monotonic() - self._opened_mono

    def close(self) -> None:
        """Nothing to release."""


class _StorageErrors(logging.Logger):
    """Stands in for pybreaker's logger of Redis errors: counts each one, and logs a warning at most once a minute."""

    def __init__(self, cluster: ClusterState, url: str) -> None:
        super().__init__("meshlib.breaker_storage")
        self.cluster = cluster
        self.url = redact_url(url)
        self._lock = threading.Lock()
        self._next_log = 0.0

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        """pybreaker calls this in an ``except RedisError`` block, after falling back (closed, count 0)."""
        self.cluster.count("breaker_storage_errors")
        now = time.monotonic()
        with self._lock:
            due = now >= self._next_log
            if due:
                self._next_log = now + 60
        if due:
            logger.warning(
                "circuit breaker of cluster %r: storage %s failed (%s); it reads as closed until Redis answers",
                self.cluster.name,
                self.url,
                sys.exc_info()[1],
            )


class RedisBreakerStorage(pybreaker.CircuitRedisStorage):
    """pybreaker's Redis storage, with the time of opening kept to the microsecond.

    pybreaker stores ``opened_at`` in whole seconds, which would end a 200 ms
    ``recovery_timeout`` at once; this keeps a float timestamp (wall clock:
    processes on several hosts need synchronised clocks) in its own key. A
    Redis that is down, even when the mesh starts, reads as a closed breaker
    (pybreaker's fallback state): failures are counted as
    ``breaker_storage_errors`` and logged once a minute.
    """

    def __init__(self, url: str, cluster: ClusterState) -> None:
        redis = require_redis(f"clusters.{cluster.name}.circuit_breaker.storage")
        self._errors: tuple[type[Exception], ...] = (redis.RedisError,)
        # Shadows pybreaker's class-level logger, which logs a traceback for every failed command.
        self.logger = _StorageErrors(cluster, url)
        # pybreaker decodes the bytes it reads; options in the URL's query win over these defaults.
        self.client = redis.Redis.from_url(
            url, decode_responses=False, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        self._opened_key = f"meshlib:{cluster.name}:opened_at"
        super().__init__(pybreaker.STATE_CLOSED, self.client, namespace=f"meshlib:{cluster.name}")

    def _initialize_redis_state(self, state: str) -> None:
        try:
            super()._initialize_redis_state(state)
        except self._errors:
            self.logger.exception("RedisError")

    def _opened_timestamp(self) -> float | None:
        try:
            value = self.client.get(self._opened_key)
        except self._errors:
            self.logger.exception("RedisError")
            return None
        return None if value is None else float(value)

    @property
    def opened_at(self) -> datetime | None:
        timestamp = self._opened_timestamp()
        return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        try:
            self.client.set(self._opened_key, repr(now.timestamp()))
        except self._errors:
            self.logger.exception("RedisError")

    def open_for(self) -> float | None:
        """Seconds since the breaker last opened (in any process), or None if it never did."""
        timestamp = self._opened_timestamp()
        return None if timestamp is None else time.time() - timestamp

    def close(self) -> None:
        self.client.close()


class _Listener(pybreaker.CircuitBreakerListener):
    """Counts and logs each change of state (pybreaker calls this once per change, under its lock)."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        new, old = new_state.name, (old_state.name if old_state is not None else None)
        self.state.count(f"breaker_{new.replace('-', '_')}")
        cluster = self.state.name
        if new == pybreaker.STATE_OPEN and old == pybreaker.STATE_HALF_OPEN:
            logger.warning(
                "cluster %r: circuit breaker reopened: the trial request failed; next trial in %gs",
                cluster,
                cb.reset_timeout,
            )
        elif new == pybreaker.STATE_OPEN:
            logger.warning(
                "cluster %r: circuit breaker opened after %d failures in a row: requests fail fast for %gs",
                cluster,
                cb.fail_max,
                cb.reset_timeout,
            )
        elif new == pybreaker.STATE_HALF_OPEN:
            logger.info("cluster %r: circuit breaker half-open: one trial request goes through", cluster)
        else:
            logger.info("cluster %r: circuit breaker closed: requests go through again", cluster)


class _Guarded(pybreaker.CircuitBreakerListener):
    """A user's listener, told of changes of state only; an exception it raises is logged, never the request's.

    The mesh reports a try to pybreaker only when it can change the state (a
    success with no failure counted skips it), so ``before_call``, ``success``
    and ``failure`` would be called for some tries and not others: they are not called.
    """

    def __init__(self, listener: pybreaker.CircuitBreakerListener) -> None:
        self.listener = listener

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        try:
            self.listener.state_change(cb, old_state, new_state)
        except Exception:
            logger.exception("circuit breaker listener %r failed", self.listener)


class _TryFailedError(Exception):
    """Reports a failed try to pybreaker; never leaves this module."""


class BreakerState:
    """A cluster's breaker and in-flight cap: live state that survives reloads while the config is unchanged.

    The storage follows ``config.storage`` (memory, timed by the mesh's
    clock, or Redis) unless one is given. ``shared`` is True for Redis: its
    methods then do network I/O, which async callers run in a worker thread.
    ``listeners`` (the mesh's ``breaker_listeners``) hear of each change of state.
    """

    def __init__(
        self,
        config: CircuitBreakerConfig,
        cluster: ClusterState,
        clock: Clock,
        storage: ClockedMemoryStorage | RedisBreakerStorage | None = None,
        *,
        listeners: Sequence[pybreaker.CircuitBreakerListener] = (),
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.clock = clock
        if storage is None:
            if is_redis(config.storage):
                assert config.storage is not None
                storage = RedisBreakerStorage(config.storage, cluster)
            else:
                storage = ClockedMemoryStorage(pybreaker.STATE_CLOSED, clock)
        self.storage = storage
        self.shared = isinstance(storage, RedisBreakerStorage)
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=config.failure_threshold if config.failure_threshold is not None else sys.maxsize,
            reset_timeout=config.recovery_timeout,
            state_storage=storage,
            listeners=[_Listener(cluster), *map(_Guarded, listeners)],
            name=cluster.name,
            # Let the tripping report raise our own marker rather than CircuitBreakerError.
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
        open_for = self.storage.open_for()
        return open_for is None or open_for >= self.config.recovery_timeout

    def _refuse(self, ctx: CallContext, state: str) -> CircuitOpenError:
        self.cluster.count("breaker_rejected")
        return CircuitOpenError(
            f"circuit breaker of cluster {self.cluster.name!r} is {state}",
            request=ctx.original,
            route=ctx.route.name,
            cluster=self.cluster.name,
        )

    def admit(self, ctx: CallContext) -> tuple[bool, Callable[[], None]]:
        """Let one try in, or raise; returns (is the recovery trial, release callback).

        The caller must call :meth:`end_trial` once a trial is over, however it ends.
        """
        # Storage reads stay outside the lock: with Redis they are network round trips.
        state = self.breaker.current_state
        recovered = state == pybreaker.STATE_HALF_OPEN or (state == pybreaker.STATE_OPEN and self._recovered())
        limit = self.config.max_concurrent_requests
        trial = False
        with self._lock:
            if state != pybreaker.STATE_CLOSED:
                # One trial at a time; everything else fails fast until it has decided.
                if self._trial or not recovered:
                    raise self._refuse(ctx, state)
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
        if trial and state == pybreaker.STATE_OPEN:
            self.breaker.half_open()
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self.in_flight -= 1

        return trial, release

    def record(self, trial: bool, *, failed: bool) -> None:
        """Tell pybreaker how a try ended: a failure counts towards opening, a success resets the count.

        Only the trial's outcome decides a breaker that is not closed: a try let
        in before the breaker opened answers too late to count.
        """
        # The common case, a success with no failure counted: pybreaker would only reset a zero count
        # (about 3 µs). Memory storage only: with Redis these reads are round trips.
        quiet = not failed and not trial and not self.shared and self.breaker.fail_counter == 0
        if quiet and self.breaker.current_state == pybreaker.STATE_CLOSED:
            return
        try:
            if not trial and self.breaker.current_state != pybreaker.STATE_CLOSED:
                return
            with self.breaker.calling():
                if failed:
                    raise _TryFailedError
        except (_TryFailedError, pybreaker.CircuitBreakerError):
            # CircuitBreakerError: another thread or process opened it meanwhile; the try no longer counts.
            pass

    def end_trial(self) -> None:
        with self._lock:
            self._trial = False

    def close(self) -> None:
        """Release the storage's connections (Redis)."""
        self.storage.close()


class CircuitBreakerFilter:
    """Admits a try through the cluster's breaker and in-flight cap, and reports its outcome."""

    name: ClassVar[str] = "circuit_breaker"

    def __init__(self, breaker: BreakerState) -> None:
        self.breaker = breaker

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        breaker = self.breaker
        trial, release = breaker.admit(context_of(request))
        try:
            try:
                response = call_next(request)
            except BaseException as error:
                release()
                # Anything else (the caller's own cancellation, a bug) is no verdict on the upstream.
                if is_failure(error):
                    breaker.record(trial, failed=True)
                raise
            breaker.record(trial, failed=response.status_code >= 500)
        finally:
            if trial:
                breaker.end_trial()
        return release_when_closed(response, release)

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        breaker = self.breaker
        ctx = context_of(request)
        # With Redis, admission and reports are network round trips: a worker thread keeps the loop free.
        if breaker.shared:
            import anyio.to_thread  # a shared breaker's alone: one in memory needs no thread (nor anyio)

            trial, release = await anyio.to_thread.run_sync(breaker.admit, ctx)
        else:
            trial, release = breaker.admit(ctx)
        try:
            try:
                response = await call_next(request)
            except BaseException as error:
                release()
                if is_failure(error):
                    if breaker.shared:
                        await self._record_shared(trial, failed=True)
                    else:
                        breaker.record(trial, failed=True)
                raise
            # In memory, a plain call: no coroutine of its own for the verdict on every try.
            if breaker.shared:
                await self._record_shared(trial, failed=response.status_code >= 500)
            else:
                breaker.record(trial, failed=response.status_code >= 500)
        finally:
            # Even when the report itself was cancelled: a trial that never ends would block recovery for good.
            if trial:
                breaker.end_trial()
        return release_when_closed(response, release)

    async def _record_shared(self, trial: bool, *, failed: bool) -> None:
        import anyio.to_thread

        # Shielded: a cancelled caller must not lose the verdict (nor, after a good answer, the response).
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(functools.partial(self.breaker.record, trial, failed=failed))
