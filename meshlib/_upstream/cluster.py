"""ClusterState: a cluster's live counters, kept across reloads while the cluster exists."""

from __future__ import annotations

import threading
import time
from collections import Counter

from meshlib._upstream.recent_errors import ErrorRecord, RecentErrors

__all__ = ["ClusterState"]


class ClusterState:
    """Live, thread-safe counters of one cluster (what ``Mesh.stats()`` reports).

    Policies count what they did here: ``retries``, ``retry_budget_exhausted``,
    ``breaker_open``, ``rate_limited``, ``ejections``, ``hedges`` and so on.

    Failures are recorded apart (:meth:`record_error`): counted as ``errors``
    (and ``refused`` when no endpoint was tried) and kept in ``recent``, the
    mesh's ring of recent errors, which the admin page shows.
    """

    def __init__(self, name: str, recent: RecentErrors | None = None) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self.recent = recent if recent is not None else RecentErrors()
        self._errors = 0
        self._refused = 0

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters[key] += n

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def record_error(
        self,
        code: str,
        message: str,
        *,
        route: str | None = None,
        endpoint: str | None = None,
        status: int | None = None,
        refused: bool = False,
    ) -> None:
        """A try failed (or its upstream answered 5xx), or the cluster ``refused`` a request before any endpoint."""
        with self._lock:
            self._errors += 1
            if refused:
                self._refused += 1
        self.recent.add(ErrorRecord(time.time(), self.name, route, endpoint, code, status, message))

    def error_counts(self) -> dict[str, int]:
        """``errors`` (failed tries, 5xx answers and refusals) and ``refused`` (requests no endpoint saw)."""
        with self._lock:
            return {"errors": self._errors, "refused": self._refused}
