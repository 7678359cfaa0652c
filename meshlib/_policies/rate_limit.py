"""``rate_limit``: refuse requests over a rate, counted in memory or, shared by many processes, in Redis.

The counting is the ``limits`` library's (moving window by default). One
request costs one hit, whatever its retries: the filter sits above the retry
loop, as Envoy's local rate limit sits before its router.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import limits
import limits.aio.strategies
import limits.storage
import limits.strategies

from meshlib._config.resilience import RateLimitConfig
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler
from meshlib._engine.context import CallContext, context_of
from meshlib._errors import RateLimitedError
from meshlib._upstream.cluster import ClusterState

__all__ = ["RateLimitFilter", "RateLimiter", "StorageRegistry"]

_SYNC_STRATEGIES: dict[str, type[limits.strategies.RateLimiter]] = {
    "moving-window": limits.strategies.MovingWindowRateLimiter,
    "fixed-window": limits.strategies.FixedWindowRateLimiter,
    "sliding-window-counter": limits.strategies.SlidingWindowCounterRateLimiter,
}
_ASYNC_STRATEGIES: dict[str, type[limits.aio.strategies.RateLimiter]] = {
    "moving-window": limits.aio.strategies.MovingWindowRateLimiter,
    "fixed-window": limits.aio.strategies.FixedWindowRateLimiter,
    "sliding-window-counter": limits.aio.strategies.SlidingWindowCounterRateLimiter,
}


class StorageRegistry:
    """One ``limits`` storage per URL for the whole mesh: one memory storage serves both modes.

    For Redis, the sync path uses ``limits.storage`` and the async path
    ``limits.aio.storage`` (so it never blocks the event loop); both use the
    same keys, so sync and async clients share one count.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._memory = limits.storage.MemoryStorage()
        self._sync: dict[str, Any] = {}
        self._async: dict[str, Any] = {}

    def sync(self, url: str | None) -> Any:
        if url is None or url.startswith("memory://"):
            return self._memory
        with self._lock:
            if url not in self._sync:
                self._sync[url] = limits.storage.storage_from_string(url)
            return self._sync[url]

    def async_(self, url: str | None) -> Any:
        if url is None or url.startswith("memory://"):
            # limits' memory storage never blocks: the async path shares the sync one (notes §1.6).
            return None
        with self._lock:
            if url not in self._async:
                self._async[url] = limits.storage.storage_from_string(f"async+{url}")
            return self._async[url]


class RateLimiter:
    """The limit of one route or cluster: ``items`` (parsed rates) counted under ``key``."""

    def __init__(self, config: RateLimitConfig, key: str, storages: StorageRegistry) -> None:
        self.config = config
        self.key = key
        self.items = limits.parse_many(config.rate)
        self._sync = _SYNC_STRATEGIES[config.strategy](storages.sync(config.storage))
        storage = storages.async_(config.storage)
        self._async = None if storage is None else _ASYNC_STRATEGIES[config.strategy](storage)

    def hit(self) -> bool:
        """Take one request from every rate; False when any is used up."""
        return all(self._sync.hit(item, "meshlib", self.key) for item in self.items)

    async def hit_async(self) -> bool:
        if self._async is None:
            return self.hit()
        for item in self.items:
            if not await self._async.hit(item, "meshlib", self.key):
                return False
        return True


class RateLimitFilter:
    """Refuses a request with RateLimitedError when its route's or cluster's rate is used up."""

    name: ClassVar[str] = "rate_limit"

    def __init__(self, limiter: RateLimiter, state: ClusterState) -> None:
        self.limiter = limiter
        self.state = state

    def _refuse(self, ctx: CallContext) -> RateLimitedError:
        self.state.count("rate_limited")
        return RateLimitedError(
            f"rate limit {self.limiter.config.rate!r} of {self.limiter.key} reached",
            request=ctx.original,
            route=ctx.route.name,
            cluster=self.state.name,
        )

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        if not self.limiter.hit():
            raise self._refuse(context_of(request))
        return call_next(request)

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        if not await self.limiter.hit_async():
            raise self._refuse(context_of(request))
        return await call_next(request)
