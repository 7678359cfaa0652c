"""RecentErrors: the last failures of a mesh's clusters, a bounded ring the admin page shows.

Written on failures only (a failed try, an upstream's 5xx, a request a
cluster refused), so a request that succeeds never touches it.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["RECENT_ERRORS", "ErrorRecord", "RecentErrors"]

RECENT_ERRORS: Final = 50  # kept per mesh (per worker under `meshlib proxy --workers N`)
_MESSAGE_LIMIT: Final = 300


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """One failure: when (epoch seconds), where (cluster, route, endpoint), what (the mesh error code, or
    ``upstream_5xx`` with the upstream's ``status``) and the error's message."""

    time: float
    cluster: str
    route: str | None
    endpoint: str | None
    code: str
    status: int | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "cluster": self.cluster,
            "route": self.route,
            "endpoint": self.endpoint,
            "code": self.code,
            "status": self.status,
            "message": self.message,
        }


class RecentErrors:
    """The newest ``size`` error records, oldest dropped first; thread-safe."""

    def __init__(self, size: int = RECENT_ERRORS) -> None:
        self._lock = threading.Lock()
        self._ring: deque[ErrorRecord] = deque(maxlen=size)

    def add(self, record: ErrorRecord) -> None:
        if len(record.message) > _MESSAGE_LIMIT:
            record = ErrorRecord(
                record.time,
                record.cluster,
                record.route,
                record.endpoint,
                record.code,
                record.status,
                record.message[: _MESSAGE_LIMIT - 1] + "…",
            )
        with self._lock:
            self._ring.append(record)

    def records(self) -> list[ErrorRecord]:
        """Oldest first."""
        with self._lock:
            return list(self._ring)
