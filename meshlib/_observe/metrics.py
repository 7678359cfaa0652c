"""Metrics: the golden signals in Prometheus's text format, per route, cluster and endpoint, and the inbound side's.

Two sources make one page:

* **per request**, recorded on the request path by :class:`MetricsObserver`
  into its own ``prometheus_client`` registry (one per mesh, never the
  global one): requests by status class and error code, latency, active
  requests, retries by reason, and the inbound side's requests, latency and
  denials. Label children are bound once per label tuple and kept in dicts,
  so a request costs a few dict lookups and lock-protected adds
  (``benchmarks/bench_metrics_choice.py``: about 10× cheaper than the
  OpenTelemetry metrics SDK's ``add``/``record`` with attribute dicts);
* **live state**, read at scrape time from a :meth:`meshlib.Mesh.stats`
  document (:func:`state_families`): what the policies already count per
  cluster (retries, budget exhaustion, rate limiting, breaker transitions,
  ejections, hedges...), breaker state, endpoint health, ejection and
  requests in flight, certificate expiry, reloads. Nothing is counted twice
  on the request path.

Under ``meshlib proxy --workers N``, worker 0 merges: the live state comes
from the merged ``/stats`` document (counts added, breaker state the most
severe, as ``aggregate.py`` does) and the per-request samples of every
worker are added up (:func:`merge_request_families`), so the page describes
the proxy as one target, with no ``worker`` label.

The observer is kept across reloads while ``metrics:`` is unchanged, so the
counters survive them.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from meshlib._config.redact import redact_url
from meshlib._errors import MeshError
from meshlib._observe.exchange import Exchange, Try
from meshlib._observe.observers import Observer

if TYPE_CHECKING:
    import httpx

    from meshlib._config.models import MeshConfig
    from meshlib._config.observability import MetricsConfig
    from meshlib._mesh import Mesh
    from meshlib._snapshot.compile import Runtime

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "NOT_ENABLED",
    "MetricsObserver",
    "build",
    "exposition",
    "merge_request_families",
    "observer_of",
    "scrape",
    "state_families",
]

# Prometheus's classic text format: what every Prometheus and promtool reads.
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4

# Envoy's default histogram buckets (0.5 ms to 1 h), in seconds. Not Final: compiled, mypyc would inline the tuple
# and leave the name unset for _BOUNDS below to unpack.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)

NOT_ENABLED: Final = (
    "metrics are not enabled in this mesh's config: add `metrics: {enabled: true}` (docs/observability.md, Metrics)"
)


def _local_statuses() -> dict[str, int]:
    """Each mesh error code → the status the sidecar answers for it (``MeshError.status``)."""
    out: dict[str, int] = {}
    pending: list[type[MeshError]] = [MeshError]
    while pending:
        cls = pending.pop()
        code, status = getattr(cls, "code", None), getattr(cls, "status", None)
        if isinstance(code, str) and isinstance(status, int):
            out.setdefault(code, status)
        pending.extend(cls.__subclasses__())
    return out


_LOCAL_STATUS: Final = _local_statuses()
# Codes an error label may hold (error_code()'s own besides the mesh errors'); anything else an upstream wrote in
# x-meshlib-error is "other", so that no answer can mint label values without bound.
_KNOWN_ERRORS: Final = frozenset(_LOCAL_STATUS) | {
    "cancelled",
    "internal_error",
    "forbidden",
    "unauthenticated",
    "bad_request",
}
_OTHER_ERROR: Final = "other"
_NO_STATUS: Final = "none"
# None too: a request with no status at all (finished() looks it up without a test first).
_STATUS_CLASS: Final[dict[int | None, str]] = {
    **{status: f"{status // 100}xx" for status in range(100, 600)},
    None: _NO_STATUS,
}


def status_class(status: int | None, error: str | None) -> str:
    """``2xx``...``5xx`` of the status the caller got; for a local error, of the status the sidecar answers for it.

    ``none`` when there is no status at all (the caller went away: ``cancelled``).
    """
    if status is None and error is not None:
        status = _LOCAL_STATUS.get(error)
    return _STATUS_CLASS.get(status, _NO_STATUS) if status is not None else _NO_STATUS


def _outcome(status: int | None, error: str | None) -> tuple[str, str]:
    """A request's (status class, error) labels: the error code as counted (unknown ones as ``other``)."""
    if not error:
        return _STATUS_CLASS.get(status, _NO_STATUS), ""
    return status_class(status, error), error if error in _KNOWN_ERRORS else _OTHER_ERROR


class _Route:
    """One route's requests in flight: those started, less those finished (``active``)."""

    __slots__ = ("active", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.active = 0


class _Where:
    """One (route, cluster, endpoint) label set: its latency histogram, and its requests by outcome."""

    __slots__ = ("buckets", "classes", "count", "labels", "outcomes", "route", "sum")

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.route: _Route | None = None  # its route's, once started() has seen that route
        self.buckets: list[int] = [0] * len(_BOUNDS)  # observations per bucket (not cumulative: the page adds them up)
        self.count = 0
        self.sum = 0.0
        # Requests without an error code, by status class (_CLASSES' order): most requests, counted with no key made.
        self.classes = [0] * len(_CLASSES)
        self.outcomes: dict[tuple[str, str], int] = {}  # (status class, error) → requests with an error code


_BOUNDS: Final = (*LATENCY_BUCKETS, math.inf)
_LAST_BUCKET: Final = len(LATENCY_BUCKETS)  # +Inf's
# The status classes of requests without an error code, by index: a status's hundreds, 0 when there is none.
_CLASSES: Final = (_NO_STATUS, "1xx", "2xx", "3xx", "4xx", "5xx")
_PLAIN_OUTCOMES: Final = tuple((klass, "") for klass in _CLASSES)
_LE: Final = tuple(floatToGoString(bound) for bound in _BOUNDS)  # type: ignore[no-untyped-call]

_REQUESTS_HELP: Final = (
    "Outbound requests by the status class the caller got (a local error: the class of the status the "
    "sidecar answers for it) and the mesh error code (x-meshlib-error), at the end of the response body."
)
_DURATION_HELP: Final = (
    "Outbound request latency, from the request to the end of the response body, every try included."
)
_ACTIVE_HELP: Final = "Outbound requests in flight (until their response body ends)."
_RETRIES_HELP: Final = (
    "Tries beyond a request's first, by where they went and why they were made: the previous try's "
    "error code or status, or hedge."
)
_WHERE: Final = ("route", "cluster", "endpoint")


# Requests recorded on the request path before a batch is counted (see _Outbound). Small enough that a batch is a few
# dozen microseconds of one request's time, large enough that the counting code stays warm across the batch.
_BATCH: Final = 64


class _Outbound:
    """The outbound request families, counted in plain numbers and made into families at scrape time.

    What ``prometheus_client``'s Counter, Histogram and Gauge would show (names, help, labels, types, series in
    the order they first counted, bucket bounds and values alike), at a fraction of their cost on the request
    path. A request's start and end are each one list append, with no lock: a list append is atomic (as are the
    slice read and delete that take a batch off the front, while other threads append at the back). Every
    :data:`_BATCH` ends, and before every read (a scrape, ``stats()``), the records are counted in one batch
    under the lock: where the library's children take a lock per value they add to (a histogram observation
    alone: two, plus its bucket search in Python), and counting each request as it ends took two lock pairs a
    request (``benchmarks/bench_observability.py``).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.routes: dict[str, _Route] = {}  # by route name ("": no route)
        # By the exchange's raw (route, cluster, endpoint), None where it has none.
        self.wheres: dict[tuple[str | None, str | None, str | None], _Where] = {}
        self._by_labels: dict[tuple[str, str, str], _Where] = {}  # by label values (the endpoint redacted)
        # In the order each first counted: the label set, the outcome, and its index in the set's classes (-1: its
        # outcomes).
        self.request_series: list[tuple[_Where, tuple[str, str], int]] = []
        self.histogram_series: list[_Where] = []
        self.retries: dict[tuple[str, str, str, str], list[int]] = {}  # by raw key: a cell shared per label set
        self._retry_labels: dict[tuple[str, str, str, str], list[int]] = {}
        self.retry_series: list[tuple[tuple[str, str, str, str], list[int]]] = []
        # Not counted yet: the route names of requests started, and the ends of requests (route, cluster,
        # endpoint, status, error, seconds or -1.0 when the request has no end time).
        self.starts: list[str] = []
        self.ends: list[tuple[str | None, str | None, str | None, int | None, str | None, float]] = []
        self._last: dict[str | None, tuple[str | None, str | None, _Where]] = {}  # by endpoint: see _count

    def drain(self) -> None:
        """Count the requests recorded since the last batch."""
        with self.lock:
            # The ends first: a request whose end is taken here started before, so its start is taken too (the
            # gauge of requests in flight never goes below zero).
            ends = self.ends
            taken = len(ends)
            done = ends[:taken]
            del ends[:taken]
            starts = self.starts
            begun = len(starts)
            names = starts[:begun]
            del starts[:begun]
            routes = self.routes
            for name in names:
                route = routes.get(name)
                if route is None:
                    route = routes[name] = _Route(name)
                route.active += 1
            for record in done:
                self._count(record)

    def _count(self, record: tuple[str | None, str | None, str | None, int | None, str | None, float]) -> None:
        """One request's end, under the lock."""
        route_name, cluster, endpoint, status, error, duration = record
        # The label set last counted for this endpoint, when the route and cluster are the same (as a few routes'
        # requests to their clusters' endpoints mostly are): a lookup by one string whose hash is cached, where
        # the (route, cluster, endpoint) key is a tuple to make and hash.
        last = self._last.get(endpoint)
        if last is not None and last[0] == route_name and last[1] == cluster:
            where = last[2]
        else:
            key = (route_name, cluster, endpoint)
            cached = self.wheres.get(key)
            where = cached if cached is not None else self._where(key)
            self._last[endpoint] = (route_name, cluster, where)
        route = where.route
        if route is None:
            route = where.route = self.routes.get(route_name or "")
        if route is not None:  # its start was counted
            route.active -= 1
        if not error:
            # Most requests have no error code: counted by their status's hundreds, no (class, error) key made.
            index = status // 100 if status is not None and 100 <= status < 600 else 0
            classes = where.classes
            count = classes[index]
            if not count:
                self.request_series.append((where, _PLAIN_OUTCOMES[index], index))
            classes[index] = count + 1
        else:
            outcome = _outcome(status, error)
            outcomes = where.outcomes
            found = outcomes.get(outcome)
            if found is None:
                self.request_series.append((where, outcome, -1))
                found = 0
            outcomes[outcome] = found + 1
        if duration >= 0.0:
            # The first bound ≥ it, as Histogram.observe's bisect finds it: compiled, a loop over the few bounds a
            # request's latency passes costs a fifth of bisect's call and float comparisons.
            bucket = 0
            while bucket < _LAST_BUCKET and _BOUNDS[bucket] < duration:
                bucket += 1
            if not where.count:
                self.histogram_series.append(where)
            where.count += 1
            buckets = where.buckets
            buckets[bucket] = buckets[bucket] + 1  # an int add (`+=` on the item: a generic number add)
            where.sum += duration

    def _where(self, key: tuple[str | None, str | None, str | None]) -> _Where:
        """The label set of ``key``, made the first time its labels are seen (under the lock)."""
        labels = (key[0] or "", key[1] or "", _endpoint(key[2] or ""))
        found = self._by_labels.get(labels)
        if found is None:
            found = self._by_labels[labels] = _Where(labels)
        self.wheres[key] = found
        return found

    def retry_cell(self, key: tuple[str, str, str, str]) -> list[int]:
        labels = (key[0], key[1], _endpoint(key[2]), key[3])
        with self.lock:
            found = self._retry_labels.get(labels)
            if found is None:
                found = self._retry_labels[labels] = [0]
                self.retry_series.append((labels, found))
            self.retries[key] = found
            return found

    def series(self) -> int:
        self.drain()
        return len(self.request_series) + len(self.histogram_series) + len(self.routes) + len(self.retry_series)

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        self.drain()
        with self.lock:
            requests = [
                (where.labels, outcome, where.classes[index] if index >= 0 else where.outcomes[outcome])
                for where, outcome, index in self.request_series
            ]
            histograms = [(where.labels, list(where.buckets), where.sum) for where in self.histogram_series]
            active = [(route.name, route.active) for route in self.routes.values()]
            retries = [(labels, cell[0]) for labels, cell in self.retry_series]
        counter, histogram, gauge, retried = families = self._families()
        for labels, (klass, error), count in requests:
            counter.add_metric((*labels, klass, error), float(count))
        for labels, buckets, total in histograms:
            cumulative, acc = [], 0.0
            for le, count in zip(_LE, buckets, strict=True):
                acc += count
                cumulative.append((le, acc))
            histogram.add_metric(labels, cumulative, total)
        for name, value in active:
            gauge.add_metric((name,), float(value))
        for retry_labels, count in retries:
            retried.add_metric(retry_labels, float(count))
        return list(families)

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, HistogramMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily("meshlib_outbound_requests", _REQUESTS_HELP, labels=(*_WHERE, "status_class", "error")),
            HistogramMetricFamily("meshlib_outbound_request_duration_seconds", _DURATION_HELP, labels=_WHERE),
            GaugeMetricFamily("meshlib_outbound_requests_active", _ACTIVE_HELP, labels=("route",)),
            CounterMetricFamily("meshlib_outbound_retries", _RETRIES_HELP, labels=(*_WHERE, "reason")),
        )


class _OutboundCollector(Collector):
    """Registers an :class:`_Outbound`: compiled with mypyc, that is a native class, which a subclass of
    ``prometheus_client``'s Collector could not be (its counters are read on every request)."""

    def __init__(self, counts: _Outbound) -> None:
        self.counts = counts

    def describe(self) -> Iterable[Metric]:
        return self.counts.describe()

    def collect(self) -> Iterable[Metric]:
        return self.counts.collect()


class MetricsObserver(Observer):
    """Records each request's golden signals into a ``prometheus_client`` registry of its own."""

    name = "metrics"
    first_tries = False  # try_started counts retries only

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=False)
        # The outbound families first (the page's order), counted by a collector of ours: see _Outbound.
        self._outbound = _Outbound()
        registry.register(_OutboundCollector(self._outbound))
        self._inbound = Counter(
            "meshlib_inbound_requests",
            "Inbound requests by the status class of the answer and the error code (a denial's, or the app's failure).",
            ("status_class", "error"),
            registry=registry,
        )
        self._inbound_duration = Histogram(
            "meshlib_inbound_request_duration_seconds",
            "Inbound request latency, from the request to the end of the answer.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._inbound_active = Gauge(
            "meshlib_inbound_requests_active", "Inbound requests in flight.", registry=registry
        )
        self._denied = Counter(
            "meshlib_inbound_denied",
            "Inbound requests refused by an authorization policy, by policy name and error code.",
            ("policy", "error"),
            registry=registry,
        )
        # Label children, bound once per label tuple: .labels() takes a lock and builds a tuple every call.
        self._inbound_children: dict[tuple[str, str], Any] = {}
        self._denied_children: dict[tuple[str, str], Any] = {}
        # The families a merge of workers adds up (as the registry names them: a counter without _total).
        self.families: frozenset[str] = frozenset(family.name for family in registry.collect())

    # --- the request path ----------------------------------------------------------------------------------------

    def started(self, exchange: Exchange) -> None:
        if exchange.direction == "inbound":
            self._inbound_active.inc()
            return
        self._outbound.starts.append(exchange.route or "")  # counted with the next batch (see _Outbound)

    def try_started(self, exchange: Exchange, attempt: Try, request: httpx.Request) -> None:
        reason = attempt.reason
        if reason is None:
            return
        key = (exchange.route or "", attempt.cluster or "", attempt.endpoint or "", reason)
        outbound = self._outbound
        cell = outbound.retries.get(key)
        if cell is None:
            cell = outbound.retry_cell(key)
        with outbound.lock:  # a retry: rare
            cell[0] += 1

    def finished(self, exchange: Exchange) -> None:
        status, error, end = exchange.status, exchange.error, exchange.end
        if exchange.direction == "inbound":
            klass, code = _outcome(status, error)
            self._inbound_finished(exchange, klass, code, None if end is None else end - exchange.start)
            return
        seconds = -1.0 if end is None else end - exchange.start
        ends = self._outbound.ends
        ends.append((exchange.route, exchange.cluster, exchange.endpoint, status, error, seconds))
        if len(ends) >= _BATCH:
            self._outbound.drain()

    def _inbound_finished(self, exchange: Exchange, klass: str, error: str, duration: float | None) -> None:
        self._inbound_active.dec()
        key = (klass, error)
        child = self._inbound_children.get(key)
        if child is None:
            child = self._inbound_children[key] = self._inbound.labels(klass, error)
        child.inc()
        if duration is not None:
            self._inbound_duration.observe(duration)
        if exchange.denied_by is not None:
            denial = (exchange.denied_by, error)
            denied = self._denied_children.get(denial)
            if denied is None:
                denied = self._denied_children[denial] = self._denied.labels(*denial)
            denied.inc()

    # --- reporting -----------------------------------------------------------------------------------------------

    def request_families(self) -> list[Metric]:
        """The per-request families as they stand, without ``_created`` samples (they would not add up)."""
        return [_without_created(family) for family in self.registry.collect()]

    def stats(self) -> dict[str, Any]:
        """How many labelled series the request metrics hold (their cardinality)."""
        return {"series": self._outbound.series() + len(self._inbound_children) + len(self._denied_children)}


def _endpoint(url: str) -> str:
    # An endpoint URL may carry credentials: never in a label.
    return redact_url(url) if url else url


def _without_created(family: Metric) -> Metric:
    family.samples = [s for s in family.samples if not s.name.endswith("_created")]
    return family


def build(section: MetricsConfig, config: MeshConfig, runtime: Runtime) -> MetricsObserver:
    """The metrics observer of a mesh whose config has ``metrics: {enabled: true}``."""
    return MetricsObserver()


# --- live state, from a Mesh.stats() document --------------------------------------------------------------------

# Cluster counters (ClusterState) shown even before they first count, and what each means.
_HEADLINE = (
    "retries",
    "retry_budget_exhausted",
    "rate_limited",
    "breaker_open",
    "breaker_rejected",
    "ejections",
    "hedges",
)
_COUNTER_HELP: Final = {
    "retries": "Retries sent by the retry policy (tries beyond a request's first).",
    "retried_requests": "Requests retried at least once, counted when they end.",
    "retry_budget_exhausted": "Retries (and hedges) refused because the retry budget was spent.",
    "rate_limited": "Requests refused by the rate limit (rate_limited).",
    "rate_limit_errors": "Rate limit checks whose storage failed (the request was let through).",
    "breaker_open": "Times the circuit breaker opened.",
    "breaker_half_open": "Times the circuit breaker went half-open (a recovery trial).",
    "breaker_closed": "Times the circuit breaker closed again.",
    "breaker_rejected": "Tries refused because the circuit breaker was open (circuit_open).",
    "breaker_storage_errors": "Circuit breaker storage (Redis) failures.",
    "overflow": "Tries refused because max_concurrent_requests were in flight (overloaded).",
    "ejections": "Endpoints ejected by outlier detection.",
    "ejections_skipped_max_percent": "Ejections outlier detection skipped because of max_ejection_percent.",
    "hedges": "Hedged tries sent.",
    "hedge_wins": "Hedged tries whose answer was used.",
    "hedge_overload_refused": "Hedges refused by the overload guard.",
    "hedge_budget_exhausted": "Hedges refused because the retry budget was spent.",
    "no_healthy_upstream": "Requests that found no healthy endpoint (no_healthy_upstream).",
    "faults_delayed": "Requests delayed by fault injection.",
    "faults_aborted": "Requests aborted by fault injection.",
    "mirrored": "Requests mirrored to this cluster.",
    "mirror_failed": "Mirrored requests that failed.",
    "mirror_skipped": "Requests not mirrored (the mirror's percentage).",
    "mirror_overflow": "Mirrored requests dropped because too many were in flight.",
    "health_checks": "Active health check rounds.",
    "health_check_failures": "Active health checks that failed.",
    "endpoints_marked_healthy": "Endpoints active health checking marked healthy.",
    "endpoints_marked_unhealthy": "Endpoints active health checking marked unhealthy.",
    "certificate_reloads": "Rotated TLS certificate files taken.",
    "certificate_reloads_refused": "Rotated TLS certificate files refused (the old ones serve on).",
}
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")
_BREAKER_STATES = ("closed", "half-open", "open")


def _flag(value: Any) -> float:
    return 1.0 if value else 0.0


def state_families(stats: Mapping[str, Any]) -> list[Metric]:
    """Metric families of the live state in ``stats`` (a :meth:`meshlib.Mesh.stats` or merged ``/stats`` document)."""
    clusters: Mapping[str, Any] = stats.get("clusters", {})
    families: list[Metric] = []

    counters: dict[str, CounterMetricFamily] = {}

    def counter(key: str) -> CounterMetricFamily:
        family = counters.get(key)
        if family is None:
            name = f"meshlib_cluster_{_NAME_UNSAFE.sub('_', key)}"
            help_text = _COUNTER_HELP.get(key, f"What the cluster counted as {key} (Mesh.stats() counters).")
            family = counters[key] = CounterMetricFamily(name, help_text, labels=("cluster",))
        return family

    for key in _HEADLINE:
        counter(key)
    for cluster, entry in clusters.items():
        found = entry.get("counters", {})
        for key in _HEADLINE:
            counter(key).add_metric((cluster,), float(found.get(key, 0)))
        for key, value in sorted(found.items()):
            if key not in _HEADLINE:
                counter(key).add_metric((cluster,), float(value))
    families.extend(counters.values())

    breaker = GaugeMetricFamily(
        "meshlib_cluster_breaker_state",
        "The circuit breaker's state: 1 for the state it is in (closed, half-open, open), 0 for the others.",
        labels=("cluster", "state"),
    )
    sent = CounterMetricFamily(
        "meshlib_endpoint_requests",
        "Requests sent to the endpoint, each try counted.",
        labels=("cluster", "endpoint"),
    )
    active = GaugeMetricFamily(
        "meshlib_endpoint_requests_active",
        "Tries in flight at the endpoint (until their response body ends).",
        labels=("cluster", "endpoint"),
    )
    healthy = GaugeMetricFamily(
        "meshlib_endpoint_healthy",
        "1 while active health checks find the endpoint healthy (always 1 without health checks).",
        labels=("cluster", "endpoint"),
    )
    ejected = GaugeMetricFamily(
        "meshlib_endpoint_ejected",
        "1 while outlier detection has the endpoint ejected.",
        labels=("cluster", "endpoint"),
    )
    for cluster, entry in clusters.items():
        state = (entry.get("circuit_breaker") or {}).get("state")
        if state is not None:
            for name in _BREAKER_STATES:
                breaker.add_metric((cluster, name), _flag(state == name))
        for url, endpoint in entry.get("endpoints", {}).items():
            labels = (cluster, _endpoint(url))
            sent.add_metric(labels, float(endpoint.get("requests", 0)))
            active.add_metric(labels, float(endpoint.get("in_flight", 0)))
            healthy.add_metric(labels, _flag(endpoint.get("healthy", True)))
            ejected.add_metric(labels, _flag(endpoint.get("ejected", False)))
    families += [breaker, sent, active, healthy, ejected]

    expires = GaugeMetricFamily(
        "meshlib_certificate_expires_in_seconds",
        "Seconds until the certificate expires (negative once expired), by its config field path.",
        labels=("certificate",),
    )
    expiry = GaugeMetricFamily(
        "meshlib_certificate_expiry_timestamp_seconds",
        "When the certificate expires, in seconds since the epoch, by its config field path.",
        labels=("certificate",),
    )
    for where, info in stats.get("certificates", {}).items():
        expires.add_metric((where,), float(info["expires_in_seconds"]))
        expiry.add_metric((where,), dt.datetime.fromisoformat(info["not_after"]).timestamp())
    families += [expires, expiry]

    reloads = stats.get("reloads", {})
    reload_family = CounterMetricFamily(
        "meshlib_config_reloads",
        "Config reloads, accepted and refused (the config in force serves on).",
        labels=("result",),
    )
    for result in ("accepted", "refused"):
        reload_family.add_metric((result,), float(reloads.get(result, 0)))
    version = GaugeMetricFamily("meshlib_config_version", "The version of the config in force (1, then +1 per reload).")
    version.add_metric((), float(stats.get("version") or 0))
    families += [reload_family, version]

    listeners = stats.get("listeners")
    if listeners:  # the sidecar's
        connections = GaugeMetricFamily(
            "meshlib_listener_connections_active", "Client connections open at the listener.", labels=("listener",)
        )
        in_flight = GaugeMetricFamily(
            "meshlib_listener_requests_active", "Requests in flight at the listener.", labels=("listener",)
        )
        for name, listener in listeners.items():
            connections.add_metric((name,), float(listener.get("connections", 0)))
            in_flight.add_metric((name,), float(listener.get("in_flight", 0)))
        families += [connections, in_flight]
    return families


# --- workers: per-request samples added up --------------------------------------------------------------------------

_Series = tuple[tuple[str, str], ...]


def merge_request_families(own: Sequence[Metric], others: Iterable[str], families: Iterable[str]) -> list[Metric]:
    """``own`` per-request families with the same families of each text page in ``others`` added in.

    Samples with the same name and labels add up (counters, histogram buckets,
    sums and counts, and the active-request gauges: all are sums over
    workers); a series only another worker has is added. Only ``families``
    are taken from ``others``: the rest of their page is live state, which
    comes merged from ``/stats``.
    """
    wanted = set(families)
    merged: dict[str, Metric] = {}
    # Per family, per series (labels but le), per (sample name, le): the value, in the order first seen.
    values: dict[str, dict[_Series, dict[tuple[str, str | None], float]]] = {}

    def add(family: Metric) -> None:
        if family.name not in merged:
            merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            values[family.name] = {}
        by_series = values[family.name]
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            le = sample.labels.get("le")
            series = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            points = by_series.setdefault(series, {})
            key = (sample.name, le)
            points[key] = points.get(key, 0.0) + sample.value

    for family in own:
        add(family)
    for text in others:
        for family in text_string_to_metric_families(text):
            if family.name in wanted:
                add(family)
    out = []
    for name, family in merged.items():
        for series, points in values[name].items():
            labels = dict(series)
            for (sample_name, le), value in points.items():
                family.add_sample(sample_name, labels if le is None else {**labels, "le": le}, value)
        out.append(family)
    return out


class _Page(Collector):
    """Hands ``generate_latest`` families already made."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def exposition(observer: MetricsObserver, stats: Mapping[str, Any], others: Iterable[str] = ()) -> bytes:
    """The metrics page: ``observer``'s per-request metrics (plus the workers' ``others`` pages), then ``stats``'s."""
    own = observer.request_families()
    others = list(others)
    request = merge_request_families(own, others, observer.families) if others else own
    return generate_latest(_Page([*request, *state_families(stats)]))


def observer_of(mesh: Mesh) -> MetricsObserver | None:
    """``mesh``'s live metrics observer; None while its config does not enable metrics."""
    observer = mesh._runtime.observers.get("metrics")
    return observer if isinstance(observer, MetricsObserver) else None


def scrape(mesh: Mesh) -> tuple[int, bytes]:
    """``mesh``'s metrics page: ``(200, page)``, or ``(404, why)`` when its config does not enable metrics."""
    observer = observer_of(mesh)
    if observer is None:
        return 404, NOT_ENABLED.encode() + b"\n"
    return 200, exposition(observer, mesh.stats())
