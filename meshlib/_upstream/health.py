"""Active health checks (beside the pick): probe each endpoint in the background; unhealthy ones leave the LB.

One daemon thread per checked cluster sends ``GET {endpoint}{path}`` to each
endpoint in turn (a round takes up to about endpoints × ``timeout``), waiting
``interval`` between the end of a round and the next, through its own
``httpx.Client`` (so it works the same under sync and async apps, and respx
mocks it in tests). A cluster with ``tls`` is probed with its TLS settings
(CA, client certificate, SNI, SPIFFE check), rotated files included, as
Envoy's health checks use the cluster's transport socket. A status in ``expected_statuses`` passes; any other
status, an error or a timeout fails. ``unhealthy_threshold`` failures in a row
take the endpoint out of the load balancer (``EndpointState.healthy``);
``healthy_threshold`` passes in a row bring it back. Each such change is logged
once (logger ``meshlib.health``: WARNING out, INFO back).

Unlike Envoy, which waits for a first check before sending traffic, endpoints
start healthy and the first round runs one ``interval`` after start: a mesh
never stalls at startup waiting for probes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import httpx

from meshlib.__version__ import __version__
from meshlib._clock import Clock
from meshlib._config.resilience import HealthCheckConfig
from meshlib._upstream.cluster import ClusterState
from meshlib._upstream.endpoint import Endpoint, EndpointState

if TYPE_CHECKING:
    from meshlib._tls.cluster import ClusterTls

__all__ = ["HealthChecker"]

logger = logging.getLogger("meshlib.health")

# How long close() waits for a probe in progress; the daemon thread drops its result and exits after.
_JOIN_TIMEOUT = 0.5
# A floor on the wait between rounds, so that a zero interval cannot make the thread spin.
_MIN_INTERVAL = 0.001

# Guards EndpointState.health_owner: which checker judges each endpoint's health now. A reload that
# changes a cluster's health check builds the new checker before closing the old one; the new one takes
# the endpoints over (and inherits their health), and the old one may neither write their health nor,
# on close, reset it.
_LOCK = threading.Lock()


class HealthChecker:
    """Probes one cluster's endpoints in a background thread and marks them healthy or unhealthy.

    Building one changes nothing: ``start()`` takes the endpoints over (from
    an older checker, with their verdicts) and starts the thread,
    ``check_once()`` runs one round in the caller's thread (for tests and
    tools; it takes the endpoints over if ``start()`` did not), ``close()``
    stops the thread and returns the endpoints it judged to the load balancer
    (healthy), unless a newer checker took them over. The clock is not used for waiting: rounds
    follow real time, so a paused test clock cannot make the thread spin.
    """

    def __init__(
        self,
        config: HealthCheckConfig,
        cluster: ClusterState,
        endpoints: Sequence[Endpoint],
        clock: Clock,
        *,
        tls: ClusterTls | None = None,
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.endpoints = tuple(endpoints)
        self.clock = clock
        self._expected = frozenset(config.expected_statuses)
        transport = None
        if tls is not None:
            from meshlib._tls.senders import TlsSenders

            transport = TlsSenders().sync(tls)
        # trust_env=False: probes go straight to the endpoint, never through an HTTP_PROXY from the environment.
        self._client = httpx.Client(
            transport=transport,
            timeout=config.timeout,
            trust_env=False,
            headers={"user-agent": f"meshlib-health-check/{__version__}"},
        )
        self._stop = threading.Event()
        self._round = threading.Lock()  # one round at a time: the thread's and check_once()'s
        self._thread: threading.Thread | None = None
        self._closed = False
        self._passes: dict[EndpointState, int] = {}
        self._failures: dict[EndpointState, int] = {}
        # Built inert: a reload that fails after building this checker must leave the endpoints to the old one.
        self._claimed = False

    def _claim(self) -> None:
        """Take the endpoints over from whatever checker judged them (once; under _LOCK)."""
        if not self._claimed and not self._closed:
            self._claimed = True
            for endpoint in self.endpoints:
                endpoint.state.health_owner = self

    @property
    def running(self) -> bool:
        """Whether the background thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Take the endpoints over and start probing in the background (once; later calls do nothing)."""
        with _LOCK:
            if self._closed:
                raise RuntimeError("this health checker is closed")
            if self._thread is not None:
                return
            self._claim()
            self._thread = threading.Thread(target=self._run, name=f"meshlib-health-{self.cluster.name}", daemon=True)
            self._thread.start()  # under the lock, so that close() never sees a thread it cannot join

    def _run(self) -> None:
        try:
            while not self._stop.wait(max(self.config.interval, _MIN_INTERVAL)):
                try:
                    self.check_once()
                except Exception:  # pragma: no cover - a bug must not silently end health checking
                    logger.exception("health check round of cluster %r failed", self.cluster.name)
        finally:
            # The thread owns the client once started: close() may not wait for a probe in progress.
            with self._round:
                self._client.close()

    def check_once(self) -> None:
        """Probe every endpoint once, in this thread, and update their health. Does nothing once closed.

        A checker not started takes the endpoints over first, unless it did before (then a newer one may judge).
        """
        with _LOCK:
            self._claim()
        with self._round:
            for endpoint in self.endpoints:
                if self._stop.is_set():
                    return
                self._record(endpoint, self._probe(endpoint))

    def _probe(self, endpoint: Endpoint) -> bool:
        try:
            response = self._client.get(f"{endpoint.url}{self.config.path}")
        except httpx.HTTPError as exc:
            logger.debug("health check of %s failed: %r", endpoint.url, exc)
            return False
        return response.status_code in self._expected

    def _record(self, endpoint: Endpoint, passed: bool) -> None:
        state = endpoint.state
        where = (self.cluster.name, endpoint.url)
        config = self.config
        with _LOCK:
            if state.health_owner is not self:
                return  # closed, or a newer checker judges this endpoint now
            self.cluster.count("health_checks")
            if passed:
                self._failures[state] = 0
                passes = self._passes[state] = self._passes.get(state, 0) + 1
                changed = not state.healthy and passes >= config.healthy_threshold
                if changed:
                    state.healthy = True
                    self.cluster.count("endpoints_marked_healthy")
            else:
                self.cluster.count("health_check_failures")
                self._passes[state] = 0
                failures = self._failures[state] = self._failures.get(state, 0) + 1
                changed = state.healthy and failures >= config.unhealthy_threshold
                if changed:
                    state.healthy = False
                    self.cluster.count("endpoints_marked_unhealthy")
        if changed:  # decided under _LOCK: one line per change, however many rounds race
            if passed:
                logger.info("cluster %r: endpoint %s is healthy again: back in the load balancer", *where)
            else:
                logger.warning("cluster %r: endpoint %s is unhealthy: out of the load balancer", *where)

    def close(self) -> None:
        """Stop probing: wake the thread, wait briefly for it, and release the endpoints. Idempotent."""
        self._stop.set()
        with _LOCK:
            if self._closed:
                return
            self._closed = True
            for endpoint in self.endpoints:
                if endpoint.state.health_owner is self:
                    endpoint.state.health_owner = None
                    # Nothing judges this endpoint any more (health check removed, cluster dropped).
                    endpoint.state.healthy = True
            thread = self._thread
        if thread is None:
            with self._round:
                self._client.close()
        elif thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
