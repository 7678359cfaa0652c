"""Hooks a Mesh's user plugs into its policies: breaker state-change listeners and a callback before each retry.

They live on the Runtime (one per Mesh), so breakers and retry filters built
by any later reload call the same hooks. A hook that raises is logged and
otherwise ignored: an observer must never fail the request it observes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    import pybreaker

__all__ = ["Hooks", "RetryEvent"]

logger = logging.getLogger("meshlib.hooks")


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """What ``before_retry`` is told before the backoff of each retry (tenacity's ``before_sleep``).

    * **cluster** - the cluster being retried.
    * **route** - the route's name (``route-0`` for an unnamed first route, ``cluster:NAME`` for a cluster's own host).
    * **attempt** - the number of the try that just failed: 1 for the first try.
    * **status** - that try's response status, or None when it raised.
    * **error** - the exception that try raised (a :class:`meshlib.MeshError`), or None when it answered.
    * **sleep** - the backoff, in seconds, before the next try.
    * **request** - the caller's request.

    Example::

        def log_retry(event: meshlib.RetryEvent) -> None:
            print(f"{event.cluster}: try {event.attempt} got {event.status or event.error!r}, "
                  f"retrying in {event.sleep:.3f}s")

        mesh = meshlib.Mesh(config, before_retry=log_retry)
    """

    cluster: str
    route: str
    attempt: int
    status: int | None
    error: BaseException | None
    sleep: float
    request: httpx.Request


@dataclass(frozen=True, slots=True)
class Hooks:
    """A mesh's hooks: ``pybreaker.CircuitBreakerListener`` objects and the ``before_retry`` callback."""

    breaker_listeners: tuple[pybreaker.CircuitBreakerListener, ...] = ()
    before_retry: Callable[[RetryEvent], object] | None = None

    def retrying(self, event: RetryEvent) -> None:
        """Call ``before_retry`` with ``event``, if set; an exception it raises is logged, not propagated."""
        callback = self.before_retry
        if callback is None:
            return
        try:
            callback(event)
        except Exception:
            logger.exception("before_retry hook %r failed (the retry goes ahead)", callback)
