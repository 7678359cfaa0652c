"""The bookinfo demo (``python -m examples.bookinfo``) in both modes: real servers, sidecars, spans and metrics.

Each run starts the four services on free loopback ports (and, in sidecar mode, four ``meshlib proxy``
processes), sends 200 requests, and is held to what it prints: the split, one trace across the three
services, and metrics that agree with each other and with the traffic.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import pytest

from examples.bookinfo.__main__ import main
from examples.bookinfo.run import (
    CANARY_SHARE,
    CHAIN,
    DEMO_SERVICE,
    FLAKY_EVERY,
    MODES,
    Result,
    canary_tolerance,
    report_lines as report,
    run,
)
from examples.bookinfo.zipkin import Span

REQUESTS = 200


def _new_threads(before: set[threading.Thread], wait: float = 3.0) -> list[threading.Thread]:
    """Threads started since ``before`` still alive after joining each for at most ``wait`` s in total."""
    deadline = time.monotonic() + wait
    for thread in threading.enumerate():
        if thread not in before and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


def _path_to_root(span: Span, spans: list[Span]) -> list[Span]:
    by_id = {s.id: s for s in spans}
    path = [span]
    while path[-1].parent_id is not None:
        parent = by_id.get(path[-1].parent_id)
        assert parent is not None, f"span {path[-1].name} of {path[-1].service} has a parent that was not collected"
        assert parent not in path
        path.append(parent)
    return path


def _services_upwards(path: list[Span]) -> list[str]:
    out: list[str] = []
    for span in path:
        if not out or out[-1] != span.service:
            out.append(span.service)
    return out


@pytest.fixture(scope="module", params=MODES)
def demo(request: pytest.FixtureRequest) -> tuple[Result, list[str], float, list[threading.Thread]]:
    """One run of the demo per mode (the tests below read it): its result, what it printed, how long it took."""
    before = set(threading.enumerate())
    printed: list[str] = []
    started = time.monotonic()
    result = run(request.param, requests=REQUESTS, concurrency=8, say=printed.append)
    elapsed = time.monotonic() - started
    printed += report(result)
    return result, printed, elapsed, _new_threads(before)


def test_demo_passes_its_checks_quickly_and_cleanly(
    demo: tuple[Result, list[str], float, list[threading.Thread]],
) -> None:
    result, printed, elapsed, leftover = demo
    assert result.ok, "\n".join(printed)
    assert elapsed < 30.0
    assert leftover == [], "the demo left threads running"
    assert result.collector_rejected == 0
    text = "\n".join(printed)
    assert "FAIL" not in text
    assert f"bookinfo on 127.0.0.1, {result.mode}:" in printed[0]


def test_requests_split_90_10_between_reviews_versions(
    demo: tuple[Result, list[str], float, list[threading.Thread]],
) -> None:
    result, printed, _, _ = demo
    assert Counter(o.status for o in result.outcomes) == {200: REQUESTS}  # the retries hid v1's 503s
    versions = result.versions
    assert set(versions) == {"v1", "v2"}
    assert versions["v1"] + versions["v2"] == REQUESTS
    assert abs(versions["v1"] / REQUESTS - CANARY_SHARE) <= canary_tolerance(REQUESTS)
    # every answer went frontend → reviews → ratings, and only v2 draws stars
    answered = [o for o in result.outcomes if o.status == 200]
    assert all(o.rated for o in answered)
    assert {o.stars for o in answered if o.version == "v2"} == {True}
    assert {o.stars for o in answered if o.version == "v1"} == {False}
    # ... and the printed counts are those
    text = "\n".join(printed)
    for version in ("v1", "v2"):
        assert re.search(
            rf"^\s+reviews {version}\s+{versions[version]}\s+{versions[version] / REQUESTS:.1%}", text, re.M
        )


def test_one_trace_spans_frontend_reviews_and_ratings(
    demo: tuple[Result, list[str], float, list[threading.Thread]],
) -> None:
    result, printed, _, _ = demo
    trace = result.trace
    assert trace, "\n".join(printed)
    assert len({span.trace_id for span in trace}) == 1
    # the trace is one of a request the demo sent, and that request's answer came from the version the trace shows
    outcome = next(o for o in result.outcomes if o.trace_id == trace[0].trace_id)
    tries = [s for s in trace if s.service == "frontend" and "meshlib.try" in s.tags]
    assert tries
    assert tries[-1].tags["meshlib.cluster"] == f"reviews-{outcome.version}"
    # ratings' server span reaches the demo's request through reviews and the frontend, parent by parent
    ratings = next(s for s in trace if s.service == "ratings" and s.kind == "SERVER")
    path = _path_to_root(ratings, trace)
    assert _services_upwards(path) == [*reversed(CHAIN), DEMO_SERVICE]
    assert path[-1].kind == "CLIENT"
    assert path[-1].parent_id is None
    # a callee's server span starts after the try that called it (a try ends at the response head, the server
    # span at the end of the body: no containment at the end)
    for span in path:
        parent = next((s for s in trace if s.id == span.parent_id), None)
        if parent is not None and span.kind == "SERVER":
            assert parent.timestamp <= span.timestamp
    # the demo picks a retried request when there is one: v1 fails every 10th of its requests
    assert any(s.tags.get("meshlib.retry_reason") == "503" for s in trace)
    assert [s.tags.get("http.response.status_code") for s in tries] == ["503", "200"]
    # the tree printed has a line per span, each service named
    text = "\n".join(printed)
    assert f"one trace ({trace[0].trace_id}: {len(trace)} spans" in text
    tree = [line for line in printed if line.rstrip().endswith("▏")]
    assert len(tree) == len(trace)
    for service in (*CHAIN, DEMO_SERVICE):
        assert any(f" {service} " in f" {line.lstrip(' └├─│')}" for line in tree), service
    # every request the demo sent is a trace of its own
    assert {o.trace_id for o in result.outcomes} <= {s.trace_id for s in result.spans}


def test_metrics_count_the_traffic_and_agree_with_each_other(
    demo: tuple[Result, list[str], float, list[threading.Thread]],
) -> None:
    result, printed, _, _ = demo
    assert set(result.pages) == {"frontend", "reviews v1", "reviews v2", "ratings"}
    for page in result.pages.values():
        assert "# TYPE meshlib_inbound_requests_total counter" in page
    metrics = result.metrics
    versions = result.versions
    frontend = metrics["frontend"]
    assert frontend.inbound == {"2xx": REQUESTS}
    assert frontend.outbound["reviews-v1"] == {"2xx": versions["v1"]}
    assert frontend.outbound["reviews-v2"] == {"2xx": versions["v2"]}
    assert frontend.breaker == {"reviews-v1": "closed", "reviews-v2": "closed"}
    # v1's 503s: every 10th of the requests it got first (it serves their retries), each retried by the frontend
    v1 = metrics["reviews v1"]
    failed = v1.inbound["5xx"]
    assert failed == versions["v1"] // FLAKY_EVERY
    assert frontend.retries["reviews-v1"] == {"503": failed}
    assert v1.inbound["2xx"] == versions["v1"]
    assert metrics["reviews v2"].inbound == {"2xx": versions["v2"]}
    assert metrics["ratings"].inbound == {"2xx": REQUESTS}
    assert metrics["reviews v1"].outbound["ratings"] == {"2xx": versions["v1"]}
    # latency quantiles from the histograms, in order
    p50, p99 = frontend.inbound_latency.quantile(0.5), frontend.inbound_latency.quantile(0.99)
    assert p50 is not None
    assert p99 is not None
    assert 0 < p50 <= p99
    text = "\n".join(printed)
    assert re.search(rf"^\s+frontend\s+in\s+2xx {REQUESTS}\s+[\d.]+\s+[\d.]+$", text, re.M)
    assert re.search(rf"^\s+out\s+reviews-v1\s+2xx {versions['v1']}\s+{failed} \(503\)\s+closed", text, re.M)


def test_the_command_refuses_too_few_requests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--requests", "5"]) == 2
    assert "--requests must be at least 20" in capsys.readouterr().err
