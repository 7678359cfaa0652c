"""ClusterState: a cluster's live counters, kept across reloads while the cluster exists."""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["ClusterState"]


class ClusterState:
    """Live, thread-safe counters of one cluster (what ``Mesh.stats()`` reports).

    Policies count what they did here: ``retries``, ``retry_budget_exhausted``,
    ``breaker_open``, ``rate_limited``, ``ejections``, ``hedges`` and so on.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters[key] += n

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)
