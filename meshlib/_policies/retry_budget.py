"""``retry.budget``: retries may add at most ``ratio`` of recent requests, plus a small reserve per second.

Like Finagle's and linkerd's retry budgets: each request deposits ``ratio``
of a retry into a sliding window; a retry spends one. A reserve of
``min_retries_per_second`` lets a quiet service still retry. With an upstream
failing every request, calls stay under (1 + ratio) × requests + the reserve,
so retries can't multiply an outage into a storm. Hedged tries spend the same
budget (gRFC A6, Envoy): see hedge.py and docs/resilience.md.

Running out is logged once (WARNING, logger ``meshlib.retry``) when the budget
starts refusing, and once (INFO) when it pays for a retry again after a whole
``window`` without refusing one: under a steady outage a budget refuses and
allows by turns, request after request, which is one episode, not hundreds.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque

from meshlib._clock import Clock
from meshlib._config.resilience import RetryBudgetConfig

__all__ = ["RetryBudget"]

logger = logging.getLogger("meshlib.retry")

_BUCKETS = 10


class RetryBudget:
    """Thread-safe retry budget over a sliding window of ``window`` seconds (in 10 buckets).

    ``owner`` names it in the log lines (``"cluster 'reviews'"``).
    """

    def __init__(self, config: RetryBudgetConfig, clock: Clock, owner: str = "a retry budget") -> None:
        self.config = config
        self.owner = owner
        self._clock = clock
        self._lock = threading.Lock()
        self._width = config.window / _BUCKETS
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._epochs = [-1] * _BUCKETS
        # Times of the reserve's retries in the last second (at most min_retries_per_second of them).
        self._reserve: deque[float] = deque()
        # The episode of refusals being logged: how many so far, and when the last one was.
        self._refused = 0
        self._last_refusal = 0.0

    def _bucket(self, now: float) -> int:
        epoch = math.floor(now / self._width)
        i = epoch % _BUCKETS
        if self._epochs[i] != epoch:
            self._epochs[i], self._requests[i], self._retries[i] = epoch, 0, 0
        return i

    def _live(self, now: float) -> tuple[int, int]:
        oldest = math.floor(now / self._width) - _BUCKETS + 1
        requests = retries = 0
        for i in range(_BUCKETS):
            if self._epochs[i] >= oldest:
                requests += self._requests[i]
                retries += self._retries[i]
        return requests, retries

    def deposit(self) -> None:
        """Record one request (its first try)."""
        with self._lock:
            self._requests[self._bucket(self._clock.monotonic())] += 1

    def withdraw(self) -> bool:
        """Spend one retry if the budget allows it; False means: don't retry."""
        now = self._clock.monotonic()
        with self._lock:
            allowed = self._withdraw(now)
            # Decided under the lock, so that concurrent withdrawals report one change once.
            refused = self._refused
            started = not allowed and refused == 0
            ended = allowed and refused > 0 and now - self._last_refusal >= self.config.window
            if not allowed:
                self._refused += 1
                self._last_refusal = now
            elif ended:
                self._refused = 0
            requests, retries = self._live(now) if started else (0, 0)
        if started:
            logger.warning(
                "retry budget of %s exhausted: %d retries for %d requests in the last %gs;"
                " failed tries are not retried, nor slow ones hedged, until it refills",
                self.owner,
                retries,
                requests,
                self.config.window,
            )
        elif ended:
            logger.info("retry budget of %s: retries allowed again (%d refused meanwhile)", self.owner, refused)
        return allowed

    def _withdraw(self, now: float) -> bool:
        i = self._bucket(now)
        requests, retries = self._live(now)
        if retries + 1 <= self.config.ratio * requests:
            self._retries[i] += 1
            return True
        reserve = self._reserve
        while reserve and reserve[0] <= now - 1.0:
            reserve.popleft()
        if len(reserve) < self.config.min_retries_per_second:
            reserve.append(now)
            return True
        return False

    def snapshot(self) -> dict[str, float]:
        """Requests and retries in the window now, for stats."""
        now = self._clock.monotonic()
        with self._lock:
            requests, retries = self._live(now)
        return {"requests": requests, "retries": retries}
