"""Endpoint: one upstream address from the snapshot, and its live state, kept across reloads."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import httpx

__all__ = ["Endpoint", "EndpointState"]


class EndpointState:
    """Live state of one endpoint: requests in flight (until the response body closes)."""

    __slots__ = ("_lock", "in_flight", "total")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.total = 0

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
