"""``rate_limit``: refuse requests over a rate, counted in memory or, shared by many processes, in Redis.

The rates are parsed and, in Redis or with the ``fixed-window`` and
``sliding-window-counter`` strategies, counted by the ``limits`` library. The
default in-memory ``moving-window`` is counted here, by :class:`MovingWindow`,
with limits' exact semantics: limits' memory storage inserts each hit at the
front of a list (O(limit) per hit) and spawns a cleanup thread every 10 ms,
about 5 µs per hit at high rates against 0.5 µs here
(``benchmarks/bench_resilience.py`` prints both). One request costs one
hit, whatever its retries: the filter sits above the retry loop, as
Envoy's local rate limit sits before its router. A refused request raises
RateLimitedError before any I/O to the upstream.

With ``storage: redis://…`` every process (and every Mesh) that uses the same
route or cluster name, rate and strategy counts in the same Redis keys. When
Redis cannot be reached the limit *fails open*: requests go through, counted
as ``rate_limit_errors``, as Envoy's global rate limit does by default
(``failure_mode_deny: false``) — an outage of the limiter must not become an
outage of the service.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import ClassVar

import anyio.to_thread
import limits
import limits.errors
import limits.storage
import limits.strategies

from meshlib._config.redact import redact_url
from meshlib._config.resilience import RateLimitConfig
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler, context_of
from meshlib._engine.context import CallContext
from meshlib._errors import RateLimitedError
from meshlib._policies.storage import REDIS_TIMEOUT, StorageRegistry, is_redis, require_redis
from meshlib._upstream.cluster import ClusterState

__all__ = [
    "REDIS_TIMEOUT",
    "RateLimitFilter",
    "RateLimiter",
    "StorageRegistry",
    "is_redis",
    "require_redis",
]

logger = logging.getLogger("meshlib")

_STRATEGIES: dict[str, type[limits.strategies.RateLimiter]] = {
    "moving-window": limits.strategies.MovingWindowRateLimiter,
    "fixed-window": limits.strategies.FixedWindowRateLimiter,
    "sliding-window-counter": limits.strategies.SlidingWindowCounterRateLimiter,
}

# Tells apart in-memory limiters that share a key, so that a limiter built anew starts over.
_generations = itertools.count(1)


def _where(key: str) -> str:
    kind, _, name = key.partition(":")
    return f"clusters.{name}.rate_limit.storage" if kind == "cluster" else f"route {name!r}: rate_limit.storage"


class MovingWindow:
    """An in-memory moving window of one rate: at most ``amount`` hits in any ``expiry`` seconds.

    The same decision as limits' ``MovingWindowRateLimiter`` over its memory
    storage (refuse when the ``amount``-th latest hit is younger than the
    window), on a deque of the hits inside the window: amortised O(1) per hit,
    and memory for the hits of one window at the rate actually seen, never
    for ``amount`` hits (a generous ``1000000/second`` must not hold a million
    timestamps at 10k requests a second). Reads the wall clock, as limits
    does, so tests move it with time-machine the same way for every strategy.
    """

    __slots__ = ("amount", "expiry", "hits")

    def __init__(self, item: limits.RateLimitItem) -> None:
        self.amount = item.amount
        self.expiry = item.get_expiry()
        self.hits: deque[float] = deque()

    def hit(self, now: float) -> bool:
        hits = self.hits
        oldest = now - self.expiry
        while hits and hits[0] < oldest:  # left the window: it can never count again
            hits.popleft()
        if len(hits) >= self.amount:
            return False
        hits.append(now)
        return True


class RateLimiter:
    """The limit of one route or cluster: ``items`` (parsed rates) counted under ``key``.

    In memory each limiter counts on its own, so one built anew (its config
    changed) starts from zero. In Redis the keys are the same in every process
    — that is what shares the limit — and name the strategy, so that two
    strategies never read each other's counts.
    """

    def __init__(self, config: RateLimitConfig, key: str, storages: StorageRegistry) -> None:
        self.config = config
        self.key = key
        self.items = tuple(limits.parse_many(config.rate))
        self.shared = is_redis(config.storage)
        self._strategy = _STRATEGIES[config.strategy](storages.get(config.storage, where=_where(key)))
        self._windows: tuple[MovingWindow, ...] | None = None
        if not self.shared and config.strategy == "moving-window":
            self._windows = tuple(MovingWindow(item) for item in self.items)
        identity = ["meshlib", key, config.strategy]
        if not self.shared:
            identity.append(str(next(_generations)))
        self._identity = tuple(identity)
        self._lock = threading.Lock()
        self._failing = False

    def hit(self) -> bool:
        """Take one request from every rate; False when one is used up.

        Raises ``limits.errors.StorageError`` when the storage (Redis) fails.
        The rates are hit in order and the first refusal stops, so a refused
        request does not use up the rates after it.
        """
        windows = self._windows
        if windows is not None:
            now = time.time()
            with self._lock:
                return all(window.hit(now) for window in windows)
        return all(self._strategy.hit(item, *self._identity) for item in self.items)

    def storage_failed(self, error: Exception) -> None:
        """Log the first failure of a run of storage failures (not every request's)."""
        with self._lock:
            first, self._failing = not self._failing, True
        if first:
            logger.warning(
                "rate limit of %s: storage %s failed (%s); letting requests through until it answers again",
                self.key,
                redact_url(self.config.storage or "memory://"),
                error,
            )

    def storage_answered(self) -> None:
        """Note a storage that answers again after failing."""
        if self._failing:
            with self._lock:
                was, self._failing = self._failing, False
            if was:
                logger.info("rate limit of %s: storage answers again", self.key)

    def close(self) -> None:
        """Forget this limiter's counts (in memory only: Redis counts belong to every process)."""
        if self._windows is not None:
            for window in self._windows:
                window.hits.clear()
        elif not self.shared:
            for item in self.items:
                self._strategy.clear(item, *self._identity)


class RateLimitFilter:
    """Refuses a request with RateLimitedError when its route's or cluster's rate is used up."""

    name: ClassVar[str] = "rate_limit"

    def __init__(self, limiter: RateLimiter, state: ClusterState) -> None:
        self.limiter = limiter
        self.state = state

    def _allows(self) -> bool:
        """Whether the rate admits one more request; True when the storage fails (fail open)."""
        try:
            allowed = self.limiter.hit()
        except limits.errors.StorageError as error:
            self.state.count("rate_limit_errors")
            self.limiter.storage_failed(error)
            return True
        self.limiter.storage_answered()
        return allowed

    def _refuse(self, ctx: CallContext) -> RateLimitedError:
        self.state.count("rate_limited")
        return RateLimitedError(
            f"rate limit {self.limiter.config.rate!r} of {self.limiter.key} reached",
            request=ctx.original,
            route=ctx.route.name,
            cluster=self.state.name,
        )

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        if not self._allows():
            raise self._refuse(context_of(request))
        return call_next(request)

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        # A Redis round trip must not block the event loop: it runs in a worker thread. (limits.aio's
        # clients are bound to the loop that first used them and warn when collected unclosed.)
        allowed = await anyio.to_thread.run_sync(self._allows) if self.limiter.shared else self._allows()
        if not allowed:
            raise self._refuse(context_of(request))
        return await call_next(request)
