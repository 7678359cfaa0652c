"""One request as observers see it: an :class:`Exchange` and its :class:`Try` records.

Times are ``time.perf_counter()`` values for durations and a wall-clock epoch
for the start, as access logs and spans need both. Observers may keep their
own per-request state in ``Exchange.slots`` / ``Try.slots`` (a span, a start
time), keyed by the observer, so one record serves them all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Exchange", "Try", "retry_reason"]

Direction = Literal["outbound", "inbound"]


@dataclass(slots=True, eq=False)
class Try:
    """One try of an outbound request: to which endpoint, how it ended, and why it was made."""

    attempt: int
    cluster: str | None
    endpoint: str | None
    start: float = field(default_factory=time.perf_counter)
    end: float | None = None
    status: int | None = None
    error: str | None = None  # the mesh error code (x-meshlib-error's value) when the try raised
    reason: str | None = None  # why this try was made when it is not the first: see retry_reason()
    slots: dict[object, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        """Seconds from the try's start to its response head (or its failure); None while in flight."""
        return None if self.end is None else self.end - self.start


def retry_reason(previous: Try | None) -> str:
    """Why a try after ``previous`` was made: its error code, its status, or ``hedge`` when it was still running."""
    if previous is None or previous.end is None:
        return "hedge"
    if previous.error is not None:
        return previous.error
    return str(previous.status)


@dataclass(slots=True, eq=False)
class Exchange:
    """One request, outbound (a client's call through the mesh) or inbound (a call into the app).

    The engine fills ``route``, ``cluster``, ``endpoint`` and ``tries`` as it
    goes; the door fills the status, the error code (a mesh error's ``code``,
    what ``x-meshlib-error`` says), the byte counts and ``end`` once the
    response body is done or the request failed. Inbound exchanges also carry
    ``peer`` (the caller's principal), ``denied_by`` (the authorization policy
    that refused it) and ``headers`` (the request's, for trace extraction).
    """

    direction: Direction
    door: str  # outbound: "client" (in process) or "sidecar"; inbound: "asgi", "wsgi" or "sidecar"
    method: str
    scheme: str
    authority: str
    path: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    start_time: float = field(default_factory=time.time)
    start: float = field(default_factory=time.perf_counter)
    route: str | None = None
    cluster: str | None = None
    endpoint: str | None = None
    tries: list[Try] = field(default_factory=list)
    status: int | None = None
    error: str | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    end: float | None = None
    peer: str | None = None
    denied_by: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    protocol: str | None = None  # "HTTP/1.1", "HTTP/2", ... as the door or the upstream spoke it
    fault: str | None = None  # what the route's fault filter injected: "delay", "abort" or "delay+abort"
    slots: dict[object, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        """Seconds from the request's start to the end of its response; None while in flight."""
        return None if self.end is None else self.end - self.start

    @property
    def retries(self) -> int:
        """Tries beyond the first."""
        return max(len(self.tries) - 1, 0)
