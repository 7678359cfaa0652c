"""Endpoint: one upstream address from the snapshot, and its live state, kept across reloads."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import httpx

__all__ = ["Endpoint", "EndpointState"]


class EndpointState:
    """Live state of one endpoint: requests in flight (until the response body closes), health, ejection.

    ``healthy`` is set by active health checks; ``ejected_until`` (a time on
    the mesh's clock) and ``times_ejected`` (the ejection multiplier, which
    decays by one every outlier ``interval`` back in service: not a lifetime
    count) by outlier detection;
    ``consecutive_failures`` counts 5xx answers and connection failures in a row.
    """

    __slots__ = (
        "_lock",
        "consecutive_failures",
        "ejected_until",
        "health_owner",
        "healthy",
        "in_flight",
        "times_ejected",
        "total",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.total = 0
        self.healthy = True
        self.health_owner: object | None = None  # the health checker that judges this endpoint now
        self.ejected_until = 0.0
        self.times_ejected = 0
        self.consecutive_failures = 0

    def usable(self, now: float) -> bool:
        """Whether the load balancer may pick this endpoint at ``now``."""
        return self.healthy and self.ejected_until <= now

    def acquire(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.total += 1

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1


@dataclass(frozen=True, slots=True, eq=False)
class Endpoint:
    """An endpoint as compiled into a snapshot: its origin URL, weight and live state."""

    url: str
    weight: int
    origin: httpx.URL = field(repr=False)
    state: EndpointState = field(repr=False, default_factory=EndpointState)

    @property
    def in_flight(self) -> int:
        return self.state.in_flight
