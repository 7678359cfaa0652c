"""Outlier detection (endpoint level, after the pick): eject endpoints that fail in a row, and let them back in.

Envoy's consecutive-5xx detector, inline (Envoy's arch overview, "Outlier
detection"): a try fails when it answers 5xx or raises a connect failure, a
reset or a timeout. ``consecutive_5xx`` failures in a row eject the endpoint
for ``base_ejection_time × multiplier``, capped by ``max_ejection_time``; the
multiplier (``EndpointState.times_ejected``) grows by one per ejection and
shrinks by one every ``interval`` the endpoint spends back in service, so an
endpoint that keeps failing stays out longer and longer, and one that recovered
is forgiven. At most ``max_ejection_percent`` of the cluster is ejected at
once, except that one endpoint may always be ejected when the percentage is
above zero (as Envoy does). Ejected endpoints come back on their own: the
cluster's pick compares ``ejected_until`` with the mesh's clock, so no timer or
thread is needed, and a ``FakeClock`` moves ejections along in tests.

An ejection is logged (WARNING, logger ``meshlib.outlier``) when it happens,
and the return (INFO) when the endpoint's next try ends after the ejection
ran out: the first sign, without a timer, that it is back in the load balancer.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from typing import ClassVar

from meshlib._clock import Clock
from meshlib._config.resilience import OutlierDetectionConfig
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler, context_of
from meshlib._errors import RequestTimeoutError, UpstreamConnectError, UpstreamResetError
from meshlib._upstream.cluster import ClusterState
from meshlib._upstream.endpoint import Endpoint, EndpointState

__all__ = ["OutlierDetector", "OutlierFilter"]

logger = logging.getLogger("meshlib.outlier")

# What counts against an endpoint besides a 5xx answer: Envoy's "local origin errors mapped to 5xx".
_FAILURES = (UpstreamConnectError, UpstreamResetError, RequestTimeoutError)


class OutlierDetector:
    """A cluster's outlier detector: records each try's outcome on its endpoint and ejects endpoints.

    The state it changes lives on :class:`EndpointState` (``consecutive_failures``,
    ``ejected_until``, ``times_ejected``), so it survives reloads with the
    endpoint; one lock serializes the changes, since tries of sync and async
    clients finish on many threads at once.
    """

    def __init__(self, config: OutlierDetectionConfig, cluster: ClusterState, clock: Clock) -> None:
        self.config = config
        self.cluster = cluster
        self.clock = clock
        self._lock = threading.Lock()
        # Envoy: ejection time = min(base × multiplier, max(base, max_ejection_time)).
        self._longest = max(config.base_ejection_time, config.max_ejection_time)
        # The multiplier stops growing once base × multiplier reaches the longest ejection, so that
        # the interval decay forgives a long-failing endpoint in bounded time.
        base = config.base_ejection_time
        self._max_multiplier = max(1, math.ceil(self._longest / base)) if base > 0 else 1
        # Where the interval decay of an endpoint's multiplier counts from, once it has counted a step;
        # before that it counts from ``ejected_until`` (the end of the last ejection).
        self._decay_marks: dict[EndpointState, float] = {}
        # Endpoints ejected and not yet seen back in service (for the "returned" log line).
        self._out: set[EndpointState] = set()

    def ejection_time(self, multiplier: int) -> float:
        """How long an endpoint ejected for the ``multiplier``-th time in a row stays out."""
        return min(self.config.base_ejection_time * multiplier, self._longest)

    def record(self, endpoints: Sequence[Endpoint], endpoint: Endpoint, failed: bool) -> None:
        """Record one try's outcome on ``endpoint``, one of the cluster's ``endpoints``; eject it if it is time."""
        state = endpoint.state
        if not failed and state.consecutive_failures == 0 and state.times_ejected == 0:
            return  # the hot path: a healthy endpoint's success changes nothing
        now = self.clock.monotonic()
        with self._lock:
            self._decay(state, now)
            if state.ejected_until > now:
                # A try that was in flight when the endpoint was ejected: its outcome is old news.
                return
            returned = state in self._out
            self._out.discard(state)
            if failed:
                ejected_for = self._count_failure(endpoints, state, now)
            else:
                state.consecutive_failures = 0
                ejected_for = None
            times = state.times_ejected
        # Logged outside the lock; each line once, since the change it reports happened once, under the lock.
        if returned:
            logger.info(
                "cluster %r: endpoint %s is back in service after its ejection", self.cluster.name, endpoint.url
            )
        if ejected_for is not None:
            self.cluster.count("ejections")
            logger.warning(
                "cluster %r: endpoint %s ejected for %gs after %d failures in a row (ejection multiplier %d)",
                self.cluster.name,
                endpoint.url,
                ejected_for,
                self.config.consecutive_5xx,
                times,
            )

    def _count_failure(self, endpoints: Sequence[Endpoint], state: EndpointState, now: float) -> float | None:
        """Count one more failure of ``state``'s endpoint (under the lock); how long it is ejected for, if it is."""
        state.consecutive_failures += 1
        if state.consecutive_failures < self.config.consecutive_5xx:
            return None
        # Envoy resets the count whether or not the ejection happens: another full run is needed to try again.
        state.consecutive_failures = 0
        if not self._may_eject(endpoints, now):
            self.cluster.count("ejections_skipped_max_percent")
            return None
        state.times_ejected = min(state.times_ejected + 1, self._max_multiplier)
        duration = self.ejection_time(state.times_ejected)
        state.ejected_until = now + duration
        self._decay_marks.pop(state, None)
        self._out.add(state)
        # Forget what is kept for endpoints no longer in the cluster (ejections are rare: this stays cheap).
        present = {e.state for e in endpoints}
        for gone in [s for s in self._decay_marks if s not in present]:
            del self._decay_marks[gone]
        self._out &= present
        return duration

    def _decay(self, state: EndpointState, now: float) -> None:
        """Take one off the multiplier for every full ``interval`` the endpoint has been back in service.

        Envoy decrements it at each interval sweep that finds the host not
        ejected; we count the same whole intervals lazily, when the endpoint is
        next recorded, from the end of its last ejection.
        """
        if state.times_ejected == 0 or state.ejected_until > now:
            return
        mark = self._decay_marks.get(state, state.ejected_until)
        interval = self.config.interval
        # interval 0: forgiven as soon as it is back.
        steps = int((now - mark) // interval) if interval > 0 else state.times_ejected
        if steps <= 0:
            return
        state.times_ejected = max(0, state.times_ejected - steps)
        if state.times_ejected == 0:
            self._decay_marks.pop(state, None)
        else:
            self._decay_marks[state] = mark + steps * interval

    def _may_eject(self, endpoints: Sequence[Endpoint], now: float) -> bool:
        """Whether one more ejection keeps the cluster within ``max_ejection_percent``.

        As in Envoy, the first ejection is always allowed when the percentage is
        above zero, even if one endpoint is more than that share of the cluster.
        """
        percent = self.config.max_ejection_percent
        if percent <= 0:
            return False
        active = sum(1 for e in endpoints if e.state.ejected_until > now)
        return active == 0 or 100.0 * (active + 1) / len(endpoints) <= percent


class OutlierFilter:
    """Reports each try's outcome on its endpoint to the cluster's :class:`OutlierDetector`.

    Placed right after the endpoint pick, so it sees this try alone (timeouts
    of the try included) and knows which endpoint answered. Errors pass
    through unchanged. An exception other than a connect failure, reset or
    timeout (a cancelled hedge, a bug) says nothing about the endpoint, so it
    is not recorded at all.
    """

    name: ClassVar[str] = "outlier"

    def __init__(self, detector: OutlierDetector, endpoints: Sequence[Endpoint]) -> None:
        self.detector = detector
        self.endpoints = endpoints

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        endpoint = context_of(request).endpoint
        assert endpoint is not None, "the outlier filter runs after the endpoint pick"
        try:
            response = call_next(request)
        except _FAILURES:
            self.detector.record(self.endpoints, endpoint, failed=True)
            raise
        self.detector.record(self.endpoints, endpoint, failed=response.status_code >= 500)
        return response

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        endpoint = context_of(request).endpoint
        assert endpoint is not None, "the outlier filter runs after the endpoint pick"
        try:
            response = await call_next(request)
        except _FAILURES:
            self.detector.record(self.endpoints, endpoint, failed=True)
            raise
        self.detector.record(self.endpoints, endpoint, failed=response.status_code >= 500)
        return response
