"""The observer interface, and the set of observers one snapshot tells about each request.

An observer overrides what it needs of :class:`Observer`. The calls, in order,
for an outbound request: ``started`` (before routing), then per try
``try_started`` (with the request about to be sent, so tracing can add its
headers) and ``try_ended`` (at the response head or the failure), then
``finished`` once (the response body closed, or the request failed). For an
inbound request: ``started`` before the app is called (the sidecar's door
then calls ``forwarding`` with the request it passes on, so tracing can add
its headers, as Envoy does) and ``finished`` after its response ended, both
in the context (task or thread) that runs the app, so an observer may make
its span current in ``started`` and restore the context in ``finished``.

Observers run on the request path: they must be quick and must never block
(exports and writes go to a background queue). One that raises is logged and
otherwise ignored: observing a request must never fail it. Two class
attributes spare an observer calls it does not need (each costs the request
a fraction of a microsecond): ``first_tries = False`` calls ``try_started``
for retries and hedges only (tries with a ``reason``), and ``slotted = True``
calls ``try_started``, ``try_ended`` and ``finished`` only for the records
(``Exchange.slots``, ``Try.slots`` for ``try_ended``) holding something under
the observer. An outbound observer's ``started`` may set ``Exchange.inject``:
header entries the engine adds to each try's request without calling it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, ClassVar

import httpx
from mypy_extensions import mypyc_attr

from meshlib._observe.exchange import Exchange, Try

__all__ = ["Observer", "Observers"]

logger = logging.getLogger("meshlib.observe")


@mypyc_attr(allow_interpreted_subclasses=True)  # the observers (tracing, metrics, access log) and users' own
class Observer:
    """Told what happens to each request; every method does nothing unless overridden."""

    name = "observer"
    # try_started for every try (True), or for retries and hedges only (a try with a reason).
    first_tries: ClassVar[bool] = True
    # try_started, try_ended and finished only for the Exchange (Try, for try_ended) whose slots hold something under
    # this observer.
    slotted: ClassVar[bool] = False

    def started(self, exchange: Exchange) -> None:
        """A request begins (outbound: before its route is matched; inbound: before the app is called)."""

    def try_started(self, exchange: Exchange, attempt: Try, request: httpx.Request) -> None:
        """An outbound try is about to be sent as ``request`` (headers may still be added)."""

    def try_ended(self, exchange: Exchange, attempt: Try) -> None:
        """An outbound try got its response head, or failed (``attempt.error``)."""

    def forwarding(self, exchange: Exchange, request: httpx.Request) -> None:
        """The sidecar's inbound door is about to pass an allowed request on to the app (headers may be added)."""

    def finished(self, exchange: Exchange) -> None:
        """The request is over: its response body ended, or it failed (``exchange.error``)."""

    def stats(self) -> dict[str, Any]:
        """What this observer reports in ``Mesh.stats()["observability"][name]``."""
        return {}

    def close(self) -> None:
        """The mesh is closing, or a reload replaced this observer: flush what is pending, stop workers."""


def _overriding(members: tuple[Observer, ...], hook: str) -> tuple[Observer, ...]:
    return tuple(m for m in members if getattr(type(m), hook) is not getattr(Observer, hook))


class Observers:
    """The observers of one snapshot, told in order; a failing observer is logged and skipped.

    The per-hook tuples (only the observers that override the hook: every
    request calls each hook, most observers need few) are read by the
    outbound hooks (``hooks.py``), which loop over them inline.
    """

    __slots__ = (
        "_failed",
        "_forwarding",
        "_started",
        "_try_ended",
        "finished_by",
        "first_try_started_by",
        "members",
        "started_by",
        "try_ended_by",
        "try_started_by",
    )

    def __init__(self, members: Iterable[Observer]) -> None:
        self.members: tuple[Observer, ...] = tuple(members)
        self._failed: set[str] = set()
        self._started = self.started_by = _overriding(self.members, "started")
        try_started = _overriding(self.members, "try_started")
        # (observer, slotted) pairs, for a retry's or a hedge's try, and for a first try.
        self.try_started_by = tuple((m, m.slotted) for m in try_started)
        self.first_try_started_by = tuple((m, m.slotted) for m in try_started if m.first_tries)
        self._try_ended = _overriding(self.members, "try_ended")
        self._forwarding = _overriding(self.members, "forwarding")
        # (observer, slotted) pairs; finished in the reverse order of started, so context an observer set is restored
        # last-in, first-out (inbound).
        self.try_ended_by = tuple((m, m.slotted) for m in self._try_ended)
        self.finished_by = tuple((m, m.slotted) for m in reversed(_overriding(self.members, "finished")))

    def failure(self, observer: Observer, what: str) -> None:
        """``observer`` raised in hook ``what``: logged in full the first time per observer and hook, then at debug
        (a broken observer must not flood logs)."""
        key = f"{observer.name}.{what}"
        if key in self._failed:
            logger.debug("observer %s failed in %s", observer.name, what, exc_info=True)
        else:
            self._failed.add(key)
            logger.warning("observer %s failed in %s (ignored)", observer.name, what, exc_info=True)

    def started(self, exchange: Exchange) -> None:
        for observer in self._started:
            try:
                observer.started(exchange)
            except Exception:
                self.failure(observer, "started")

    def try_started(self, exchange: Exchange, attempt: Try, request: httpx.Request) -> None:
        slots = exchange._slots
        for observer, slotted in self.try_started_by if attempt.reason is not None else self.first_try_started_by:
            if slotted and (slots is None or observer not in slots):
                continue
            try:
                observer.try_started(exchange, attempt, request)
            except Exception:
                self.failure(observer, "try_started")

    def try_ended(self, exchange: Exchange, attempt: Try) -> None:
        slots = attempt._slots
        for observer, slotted in self.try_ended_by:
            if slotted and (slots is None or observer not in slots):
                continue
            try:
                observer.try_ended(exchange, attempt)
            except Exception:
                self.failure(observer, "try_ended")

    def forwarding(self, exchange: Exchange, request: httpx.Request) -> None:
        for observer in self._forwarding:
            try:
                observer.forwarding(exchange, request)
            except Exception:
                self.failure(observer, "forwarding")

    def finished(self, exchange: Exchange) -> None:
        slots = exchange._slots
        for observer, slotted in self.finished_by:
            if slotted and (slots is None or observer not in slots):
                continue
            try:
                observer.finished(exchange)
            except Exception:
                self.failure(observer, "finished")
