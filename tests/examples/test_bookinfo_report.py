"""The bookinfo demo's parts on their own: its Zipkin collector, how it reads traces and metrics, and its checks."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import httpx
import pytest

from examples.bookinfo.report import (
    Histogram,
    ServiceMetrics,
    complete_traces,
    parse_metrics,
    spans_chain,
    trace_lines,
)
from examples.bookinfo.run import CHAIN, Outcome, Result, _checks
from examples.bookinfo.sidecars import Sidecar, SidecarError
from examples.bookinfo.zipkin import Collector, Span


def _span(
    service: str, kind: str | None, span_id: str, parent: str | None, start: int = 0, tags: dict[str, str] | None = None
) -> Span:
    return Span("t1", span_id, parent, "GET", kind, service, 1_000_000 + start, 1000, tags or {})


def _trace() -> list[Span]:
    """demo → frontend (server, client, try) → reviews (server, client, try) → ratings (server)."""
    return [
        _span("demo", "CLIENT", "a", None),
        _span("frontend", "SERVER", "b", "a", 10),
        _span("frontend", "CLIENT", "c", "b", 20),
        _span("frontend", None, "d", "c", 30, {"meshlib.try": "1", "meshlib.cluster": "reviews-v1"}),
        _span("reviews", "SERVER", "e", "d", 40),
        _span("reviews", "CLIENT", "f", "e", 50),
        _span("reviews", None, "g", "f", 60, {"meshlib.try": "1"}),
        _span("ratings", "SERVER", "h", "g", 70),
    ]


def test_a_whole_trace_spans_the_chain() -> None:
    spans = _trace()
    assert spans_chain(spans, CHAIN)
    assert complete_traces(reversed(spans), CHAIN) == [spans]  # sorted by start


def test_a_trace_without_a_hop_or_with_two_roots_does_not() -> None:
    spans = _trace()
    without_reviews = [s for s in spans if s.id != "e"]  # ratings' ancestors are lost with it: two roots
    assert not spans_chain(without_reviews, CHAIN)
    # ratings called by the frontend directly: no reviews → ratings hop
    skipped = [*spans[:7], _span("ratings", "SERVER", "h", "d", 70)]
    assert not spans_chain(skipped, CHAIN)
    assert not spans_chain([*spans, _span("demo", "CLIENT", "z", None, 5)], CHAIN)
    assert not spans_chain([s for s in spans if s.service != "ratings"], CHAIN)


def test_the_tree_has_a_line_per_span_under_its_parent() -> None:
    lines = trace_lines(_trace())
    assert len(lines) == 8
    assert lines[0].startswith("demo client: GET")
    assert lines[1].startswith("└─ frontend server: GET")
    assert lines[3].startswith("      └─ frontend internal: GET → reviews-v1")
    assert lines[-1].startswith("   " * 6 + "└─ ratings server: GET")  # seven levels down
    assert all(line.endswith("▏") for line in lines)


def test_histogram_quantiles_as_prometheus_estimates_them() -> None:
    histogram = Histogram({0.005: 50, 0.01: 90, 0.1: 100, float("inf"): 100})
    assert histogram.quantile(0.5) == pytest.approx(0.005)
    assert histogram.quantile(0.9) == pytest.approx(0.01)
    assert histogram.quantile(0.99) == pytest.approx(0.091)
    assert Histogram({0.1: 1, float("inf"): 2}).quantile(0.99) == 0.1  # past the last bound: that bound
    assert Histogram().quantile(0.5) is None


def test_metrics_are_read_from_prometheus_text() -> None:
    page = """\
# TYPE meshlib_inbound_requests_total counter
meshlib_inbound_requests_total{error="",status_class="2xx"} 7.0
meshlib_inbound_requests_total{error="forbidden",status_class="4xx"} 1.0
# TYPE meshlib_outbound_requests_total counter
meshlib_outbound_requests_total{route="r",cluster="reviews-v1",endpoint="http://a",status_class="2xx",error=""} 5.0
meshlib_outbound_requests_total{route="r",cluster="reviews-v1",endpoint="http://b",status_class="2xx",error=""} 2.0
# TYPE meshlib_outbound_retries_total counter
meshlib_outbound_retries_total{route="r",cluster="reviews-v1",endpoint="http://a",reason="503"} 3.0
# TYPE meshlib_cluster_breaker_state gauge
meshlib_cluster_breaker_state{cluster="reviews-v1",state="closed"} 0.0
meshlib_cluster_breaker_state{cluster="reviews-v1",state="open"} 1.0
"""
    found = parse_metrics(page)
    assert found.inbound == {"2xx": 7, "4xx": 1}
    assert found.outbound["reviews-v1"] == {"2xx": 7}
    assert found.retries["reviews-v1"] == {"503": 3}
    assert found.breaker == {"reviews-v1": "open"}


def _result(v1: int, v2: int) -> Result:
    outcomes = [Outcome(1, "t", 0.01, 200, "v1", rated=True) for _ in range(v1)]
    outcomes += [Outcome(1, "t", 0.01, 200, "v2", rated=True, stars=True) for _ in range(v2)]
    return Result("in-process", outcomes=outcomes, trace=_trace())


def test_the_checks_fail_a_split_off_its_weights_and_a_missing_trace() -> None:
    checks = {check.text.split(":")[0]: check.ok for check in _checks(_result(180, 20))}
    assert checks["canary split"]
    assert checks["200/200 requests answered 200"]
    assert checks["one trace spans frontend → reviews → ratings (8 spans, trace id t1)"]
    assert not checks["metrics scraped from every service (missing"]  # this result has none
    skewed = _checks(_result(100, 100))
    assert [c.ok for c in skewed if c.text.startswith("canary split")] == [False]
    no_trace = _result(180, 20)
    no_trace.trace = []
    assert [c.ok for c in _checks(no_trace) if c.text.startswith("one trace")] == [False]


def test_the_collector_keeps_zipkin_json_and_refuses_the_rest() -> None:
    span = {
        "traceId": "ab" * 16,
        "id": "cd" * 8,
        "name": "get",
        "kind": "SERVER",
        "timestamp": 1,
        "duration": 2,
        "localEndpoint": {"serviceName": "ratings"},
        "tags": {"http.response.status_code": "200"},
    }
    with Collector() as collector, httpx.Client(trust_env=False) as client:
        assert client.post(collector.endpoint, json=[span]).status_code == 202
        zipped = gzip.compress(json.dumps([span]).encode())
        sent = client.post(collector.endpoint, content=zipped, headers={"content-encoding": "gzip"})
        assert sent.status_code == 202
        assert client.post(collector.endpoint, content=b"{not json").status_code == 400
        assert client.post(collector.endpoint.replace("/api/v2/spans", "/x"), json=[]).status_code == 404
        spans = collector.wait(lambda spans: len(spans) >= 2, 1.0)
    assert Counter(s.service for s in spans) == {"ratings": 2}
    assert spans[0].parent_id is None
    assert spans[0].tags == {"http.response.status_code": "200"}
    assert collector.rejected == 1


def test_the_checks_hold_the_frontend_s_retries_to_v1_s_failures() -> None:
    result = _result(180, 20)
    result.metrics = {name: ServiceMetrics() for name in ("frontend", "reviews v1", "reviews v2", "ratings")}
    for found in result.metrics.values():
        found.inbound["2xx"] = 1
    result.metrics["frontend"].retries["reviews-v1"]["503"] = 5
    result.metrics["reviews v1"].inbound["5xx"] = 4
    checks = {check.text.split(" (")[0]: check.ok for check in _checks(result)}
    assert checks["metrics scraped from every service"]
    assert not checks["frontend's retries to reviews-v1"]
    result.metrics["reviews v1"].inbound["5xx"] = 5
    assert all(check.ok for check in _checks(result))


def test_a_sidecar_that_cannot_start_says_why(tmp_path: Path) -> None:
    config = {"clusters": {"x": {"endpoints": ["not a url"]}}, "sidecar": {"admin": {"listen": "127.0.0.1:0"}}}
    sidecar = Sidecar("broken", config, tmp_path)
    sidecar.start()
    try:
        with pytest.raises(SidecarError, match=r"(?s)meshlib proxy for broken exited 2:\n.*clusters\.x\.endpoints"):
            sidecar.wait_ready(timeout=20)
    finally:
        assert sidecar.wait() == 2
