"""``fault``: injected delays and aborts, by percent, so callers can rehearse failure (first route filter).

Like Envoy's HTTP fault filter: each request draws independently whether it
is delayed and whether it is aborted, so both can happen to one request
(delay first, then abort). The filter runs first on the route, so an
injected abort reaches no mirror, retry, breaker or upstream, and an
injected delay is not counted against the route's timeout (which starts
below, in the cluster leg).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

import httpx

from meshlib._clock import Clock
from meshlib._config.resilience import FaultConfig
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler
from meshlib._engine.context import EXTENSION
from meshlib._upstream.cluster import ClusterState

__all__ = ["ABORT_BODY", "Fault", "FaultFilter", "FaultPolicy"]

# Envoy's body for an injected abort; the header tells a caller the failure was rehearsed, not real.
ABORT_BODY = b"fault filter abort"
_ABORT_HEADERS = (("content-type", "text/plain"), ("x-meshlib-fault", "abort"))


@dataclass(frozen=True, slots=True)
class Fault:
    """What one request suffers: a delay in seconds (0 for none) and an abort status (None for none)."""

    delay: float
    abort: int | None


_NO_FAULT = Fault(0.0, None)


def _draw(rng: random.Random, percent: float) -> bool:
    # 0 and 100 need no draw; in between, random() ∈ [0, 1) makes percent/100 the exact probability.
    if percent >= 100:
        return True
    return percent > 0 and rng.random() * 100 < percent


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    """The configured faults and the mesh's random source; :meth:`roll` decides one request's fate."""

    delay: float
    delay_percent: float
    abort: int | None
    abort_percent: float
    rng: random.Random

    @classmethod
    def from_config(cls, config: FaultConfig, rng: random.Random) -> FaultPolicy:
        delay, abort = config.delay, config.abort
        return cls(
            delay=delay.duration if delay else 0.0,
            delay_percent=delay.percent if delay else 0.0,
            abort=abort.status if abort else None,
            abort_percent=abort.percent if abort else 0.0,
            rng=rng,
        )

    def roll(self) -> Fault:
        """Draw, independently, whether this request is delayed and whether it is aborted."""
        delayed = self.delay > 0 and _draw(self.rng, self.delay_percent)
        aborted = self.abort is not None and _draw(self.rng, self.abort_percent)
        if not (delayed or aborted):
            return _NO_FAULT
        return Fault(self.delay if delayed else 0.0, self.abort if aborted else None)

    @staticmethod
    def abort_response(status: int, request: Request) -> Response:
        """The local answer to an aborted request (no body for HEAD, RFC 9110 §9.3.2)."""
        if request.method == "HEAD":
            headers = (*_ABORT_HEADERS, ("content-length", str(len(ABORT_BODY))))
            return httpx.Response(status, headers=headers, request=request)
        return httpx.Response(status, headers=_ABORT_HEADERS, content=ABORT_BODY, request=request)


class FaultFilter:
    """Delays and/or aborts a share of the route's requests, counting each on the route's clusters."""

    name: ClassVar[str] = "fault"

    def __init__(self, config: FaultConfig, rng: random.Random, clock: Clock, states: list[ClusterState]) -> None:
        self.policy = FaultPolicy.from_config(config, rng)
        self.clock = clock
        self.states = tuple(states)

    def _roll(self, request: Request) -> Fault:
        fault = self.policy.roll()
        for state in self.states:
            if fault.delay:
                state.count("faults_delayed")
            if fault.abort is not None:
                state.count("faults_aborted")
        if fault.delay or fault.abort is not None:
            # Observers (the access log's DI and FI flags) learn that this request's fate was rehearsed.
            ctx = request.extensions.get(EXTENSION)
            if ctx is not None and ctx.exchange is not None:
                ctx.exchange.fault = "+".join(
                    kind for kind, on in (("delay", fault.delay), ("abort", fault.abort is not None)) if on
                )
        return fault

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        fault = self._roll(request)
        if fault.delay:
            self.clock.sleep(fault.delay)
        if fault.abort is not None:
            return self.policy.abort_response(fault.abort, request)
        return call_next(request)

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        fault = self._roll(request)
        if fault.delay:
            await self.clock.asleep(fault.delay)
        if fault.abort is not None:
            return self.policy.abort_response(fault.abort, request)
        return await call_next(request)
