"""Per-request mesh state: one CallContext, kept in ``request.extensions["meshlib"]``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from meshlib._engine.base import EXTENSION, context_of

if TYPE_CHECKING:
    from meshlib._clock import Clock
    from meshlib._engine.alarms import TaskAlarm
    from meshlib._engine.route_stack import Route
    from meshlib._observe.exchange import Exchange
    from meshlib._observe.observers import Observers
    from meshlib._tls.senders import TlsSenders
    from meshlib._upstream.endpoint import Endpoint

__all__ = ["EXTENSION", "CallContext", "context_of"]


class CallContext:
    """What the engine knows about one call: where it came from, where it went, and its budget of time.

    ``sender``/``async_sender`` are the front door's innermost transports; the
    endpoint stage sends through whichever matches the stack that runs, or,
    for a cluster with ``tls``, through the front door's ``tls`` senders.
    ``deadline`` is an absolute time on the mesh's clock, or None;
    ``try_deadline`` is when the current try must end, its response body
    included: the earlier of its per-try timeout and ``deadline`` (set per try
    by the per-try timeout filter, None when nothing bounds the try). On
    asyncio, ``try_alarm`` is the try's timer, due then, until the response
    body's wrapper takes it over. ``exchange`` and ``observers`` are set when
    the snapshot has observers (tracing, metrics, access log): shared by forked
    tries, one per request.
    """

    # A plain class, not a dataclass: compiled with mypyc, every stage's read of a field is a struct access (a
    # dataclass's annotations would name classes this module imports for type checking only).
    __slots__ = (
        "async_sender",
        "attempt",
        "clock",
        "cluster",
        "deadline",
        "endpoint",
        "exchange",
        "observers",
        "original",
        "route",
        "sender",
        "tls",
        "tried",
        "try_alarm",
        "try_deadline",
    )

    def __init__(
        self,
        original: httpx.Request,
        route: Route,
        clock: Clock,
        sender: httpx.BaseTransport | None = None,
        async_sender: httpx.AsyncBaseTransport | None = None,
        tls: TlsSenders | None = None,
        cluster: str | None = None,
        endpoint: Endpoint | None = None,
        attempt: int = 1,
        deadline: float | None = None,
        try_deadline: float | None = None,
        try_alarm: TaskAlarm | None = None,
        tried: list[Endpoint] | None = None,
        exchange: Exchange | None = None,
        observers: Observers | None = None,
    ) -> None:
        self.original = original
        self.route = route
        self.clock = clock
        self.sender = sender
        self.async_sender = async_sender
        self.tls = tls
        self.cluster = cluster
        self.endpoint = endpoint
        self.attempt = attempt
        self.deadline = deadline
        self.try_deadline = try_deadline
        self.try_alarm = try_alarm
        self.tried: list[Endpoint] = [] if tried is None else tried
        self.exchange = exchange
        self.observers = observers

    def __repr__(self) -> str:
        return (
            f"CallContext(route={getattr(self.route, 'name', self.route)!r}, cluster={self.cluster!r}, "
            f"attempt={self.attempt}, deadline={self.deadline!r}, try_deadline={self.try_deadline!r})"
        )

    def fork(self) -> CallContext:
        """A copy for a concurrent try (hedging, mirroring) that shares nothing mutable with this one."""
        return CallContext(
            self.original,
            self.route,
            self.clock,
            self.sender,
            self.async_sender,
            self.tls,
            self.cluster,
            self.endpoint,
            self.attempt,
            self.deadline,
            self.try_deadline,
            self.try_alarm,
            list(self.tried),
            self.exchange,
            self.observers,
        )
