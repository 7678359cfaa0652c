"""Which metrics library the mesh records with: prometheus_client or the OpenTelemetry metrics SDK, per request.

Run ``python benchmarks/bench_metrics_choice.py`` (``--quick`` for a smoke run).

Each case records what the metrics observer records for one outbound request
(``meshlib/_observe/metrics.py``): a gauge of active requests up at the start
and down at the end, a counter by status class and error code, and a latency
histogram (Envoy's 19 buckets), all labelled by route, cluster and endpoint,
over a small realistic label space (4 routes × 3 endpoints, one status class
in 20 a 5xx). Cases:

* ``prometheus_client, .labels() per call``: what a naive user writes;
* ``prometheus_client, pre-bound children``: each child looked up once per
  label tuple in a dict (what the observer does);
* ``opentelemetry-sdk, attributes per call``: ``add``/``record`` with an
  attribute dict, as the SDK's API has it (it has no bound instruments), with
  a reader attached so the SDK aggregates as it would in production;
* ``opentelemetry-sdk, cached attribute dicts``: the same with the attribute
  dicts made once per label tuple.

Each case runs in batches, interleaved with the others (order reversed every
other round), and reports its best batch in µs per request; the cost is the
CPU of one thread, no I/O.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from itertools import cycle
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Envoy's default histogram buckets, in seconds (what the observer uses).
BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, 1800, 3600)
LABELS = ("route", "cluster", "endpoint")

Record = Callable[[str, str, str, str, float], None]


def workload(n: int) -> list[tuple[str, str, str, str, float]]:
    """``n`` requests: (route, cluster, endpoint, status class, seconds), over 4 routes × 3 endpoints."""
    out = []
    endpoints = cycle([f"http://10.0.0.{i}:8080" for i in (1, 2, 3)])
    for i in range(n):
        route = f"r{i % 4}"
        status = "5xx" if i % 20 == 19 else "2xx"
        out.append((route, f"c{i % 4}", next(endpoints), status, 0.0005 + (i % 50) * 0.001))
    return out


def prometheus_per_call() -> Record:
    registry = CollectorRegistry(auto_describe=False)
    requests = Counter("bench_requests", "r", (*LABELS, "status_class", "error"), registry=registry)
    duration = Histogram("bench_duration_seconds", "d", LABELS, buckets=BUCKETS, registry=registry)
    active = Gauge("bench_active", "a", ("route",), registry=registry)

    def record(route: str, cluster: str, endpoint: str, status: str, seconds: float) -> None:
        active.labels(route).inc()
        requests.labels(route, cluster, endpoint, status, "").inc()
        duration.labels(route, cluster, endpoint).observe(seconds)
        active.labels(route).dec()

    return record


def prometheus_bound() -> Record:
    registry = CollectorRegistry(auto_describe=False)
    requests = Counter("bench_requests", "r", (*LABELS, "status_class", "error"), registry=registry)
    duration = Histogram("bench_duration_seconds", "d", LABELS, buckets=BUCKETS, registry=registry)
    active = Gauge("bench_active", "a", ("route",), registry=registry)
    counters: dict[tuple[str, ...], Any] = {}
    histograms: dict[tuple[str, ...], Any] = {}
    gauges: dict[str, Any] = {}

    def record(route: str, cluster: str, endpoint: str, status: str, seconds: float) -> None:
        gauge = gauges.get(route)
        if gauge is None:
            gauge = gauges[route] = active.labels(route)
        gauge.inc()
        key = (route, cluster, endpoint, status, "")
        counter = counters.get(key)
        if counter is None:
            counter = counters[key] = requests.labels(*key)
        counter.inc()
        where = (route, cluster, endpoint)
        histogram = histograms.get(where)
        if histogram is None:
            histogram = histograms[where] = duration.labels(*where)
        histogram.observe(seconds)
        gauge.dec()

    return record


def _otel_instruments() -> tuple[Any, Any, Any, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    view = View(
        instrument_name="bench_duration_seconds",
        aggregation=ExplicitBucketHistogramAggregation(boundaries=BUCKETS),
    )
    provider = MeterProvider(metric_readers=[reader], views=[view])
    meter = provider.get_meter("bench")
    requests = meter.create_counter("bench_requests")
    duration = meter.create_histogram("bench_duration_seconds", unit="s")
    active = meter.create_up_down_counter("bench_active")
    return requests, duration, active, reader


def otel_per_call() -> Record:
    requests, duration, active, reader = _otel_instruments()

    def record(route: str, cluster: str, endpoint: str, status: str, seconds: float) -> None:
        active.add(1, {"route": route})
        requests.add(1, {"route": route, "cluster": cluster, "endpoint": endpoint, "status_class": status, "error": ""})
        duration.record(seconds, {"route": route, "cluster": cluster, "endpoint": endpoint})
        active.add(-1, {"route": route})

    record.reader = reader  # type: ignore[attr-defined]  # kept alive with the case
    return record


def otel_cached() -> Record:
    requests, duration, active, reader = _otel_instruments()
    attributes: dict[tuple[str, ...], dict[str, str]] = {}

    def attrs(key: tuple[str, ...], names: Sequence[str]) -> dict[str, str]:
        found = attributes.get(key)
        if found is None:
            found = attributes[key] = dict(zip(names, key, strict=True))
        return found

    def record(route: str, cluster: str, endpoint: str, status: str, seconds: float) -> None:
        by_route = attrs((route,), ("route",))
        active.add(1, by_route)
        requests.add(1, attrs((route, cluster, endpoint, status, ""), (*LABELS, "status_class", "error")))
        duration.record(seconds, attrs((route, cluster, endpoint), LABELS))
        active.add(-1, by_route)

    record.reader = reader  # type: ignore[attr-defined]
    return record


CHOSEN = "prometheus_client, pre-bound children"  # what meshlib/_observe/metrics.py does
CASES: dict[str, Callable[[], Record]] = {
    "prometheus_client, .labels() per call": prometheus_per_call,
    CHOSEN: prometheus_bound,
    "opentelemetry-sdk, attributes per call": otel_per_call,
    "opentelemetry-sdk, cached attribute dicts": otel_cached,
}


def batch_us(record: Record, requests: list[tuple[str, str, str, str, float]]) -> float:
    gc.collect()
    start = time.perf_counter()
    for route, cluster, endpoint, status, seconds in requests:
        record(route, cluster, endpoint, status, seconds)
    return (time.perf_counter() - start) / len(requests) * 1e6


def run(rounds: int, batch: int) -> dict[str, float]:
    requests = workload(batch)
    recorders = {name: make() for name, make in CASES.items()}
    for record in recorders.values():  # warm up: every label tuple bound, every code path taken
        batch_us(record, requests)
    best = dict.fromkeys(CASES, float("inf"))
    names = list(CASES)
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            best[name] = min(best[name], batch_us(recorders[name], requests))
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer, smaller batches")
    parser.add_argument("--check", action="store_true", help="exit 1 unless what the mesh uses is the cheapest")
    args = parser.parse_args(argv)
    rounds, batch = (3, 2000) if args.quick else (15, 20000)
    print(
        f"Python {platform.python_version()}, prometheus-client {version('prometheus-client')}, "
        f"opentelemetry-sdk {version('opentelemetry-sdk')}; best of {rounds} batches of {batch} requests"
    )
    best = run(rounds, batch)
    baseline = best[CHOSEN]
    width = max(map(len, best))
    print(f"\n{'case':<{width}}  {'µs/request':>10}  {'vs pre-bound':>12}")
    print("─" * (width + 26))
    for name, us in best.items():
        print(f"{name:<{width}}  {us:>10.2f}  {us / baseline:>11.1f}×")
    cheapest = min(best, key=best.__getitem__)
    print(f"\ncheapest: {cheapest}; the mesh uses {CHOSEN}")
    return 1 if args.check and cheapest != CHOSEN else 0


if __name__ == "__main__":
    sys.exit(main())
