"""A collector that is down, slow or refusing never slows or fails a request; what it costs is counted in stats.

Timing bounds are set against the collector's own delay: a request that
waited for one export would take at least that long.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from typing import Any

import pytest
import respx

from meshlib._observe.tracing import CLOSE_TIMEOUT
from tests.conftest import MakeMesh
from tests.observe.tracing_helpers import tracer_of, tracing
from tests.zipkin_collector import running_collector

ENDPOINT = "http://127.0.0.1:9090"
COLLECTOR_DELAY = 2.0  # seconds a slow collector takes to answer each POST


def config(endpoint: str, **section: Any) -> dict[str, Any]:
    return {"clusters": {"ratings": {"endpoints": [ENDPOINT]}}, "tracing": tracing(endpoint, **section)}


def timed_requests(mesh: Any, count: int) -> list[float]:
    """Send ``count`` requests (each must succeed) and return how long each took."""
    took = []
    with mesh.client() as client:
        for _ in range(count):
            start = time.perf_counter()
            assert client.get("http://ratings/x").status_code == 200
            took.append(time.perf_counter() - start)
    return took


def test_a_dead_collector_fails_exports_not_requests_and_warns_once(
    make_mesh: MakeMesh, free_port: int, respx_mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    respx_mock.get(f"{ENDPOINT}/x").respond(200)
    mesh = make_mesh(config(f"http://127.0.0.1:{free_port}/api/v2/spans"))
    caplog.set_level(logging.DEBUG, logger="meshlib.observe")
    timed_requests(mesh, 10)
    tracer = tracer_of(mesh)
    tracer.flush()
    tracer.flush()  # two export attempts, of everything: both fail
    stats = mesh.stats()["observability"]["tracing"]
    assert (stats["spans"], stats["exported"], stats["dropped"], stats["dropped_export_failed"]) == (20, 0, 20, 20)
    assert "ConnectionError" in stats["last_export_error"]
    warnings = [r for r in caplog.records if r.name == "meshlib.observe" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "spans not exported" in warnings[0].getMessage()


def test_a_slow_collector_never_slows_a_request_and_a_full_queue_drops_spans(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{ENDPOINT}/x").respond(200)
    with running_collector(delay=COLLECTOR_DELAY) as collector:
        mesh = make_mesh(config(collector.endpoint, max_queue_size=4))
        tracer = tracer_of(mesh)
        start = time.perf_counter()
        took = timed_requests(mesh, 40)  # 80 spans for a queue of 4 whose first batch takes 2 s to export
        elapsed = time.perf_counter() - start
        assert elapsed < COLLECTOR_DELAY / 2, took
        assert max(took) < COLLECTOR_DELAY / 4
        stats = mesh.stats()["observability"]["tracing"]
        assert stats["spans"] == 80
        # At most one batch in the export and a full queue behind it are kept: the rest is dropped.
        assert stats["dropped_queue_full"] >= 80 - 2 * 4
        assert stats["dropped"] == stats["dropped_queue_full"]
        assert stats["queued"] <= 4
        # Closing waits a short while for the collector, not for every queued batch at its pace.
        start = time.perf_counter()
        mesh.close()
        assert time.perf_counter() - start < CLOSE_TIMEOUT + 0.5
    # The collector has stopped (its slow POSTs end): every span is now exported or counted as dropped.
    deadline = time.monotonic() + 10
    while True:
        stats = tracer.stats()
        if stats["exported"] + stats["dropped"] == 80 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert stats["exported"] + stats["dropped"] == 80, stats


def test_an_export_slower_than_the_timeout_is_dropped(make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    respx_mock.get(f"{ENDPOINT}/x").respond(200)
    with running_collector(delay=COLLECTOR_DELAY) as collector:
        mesh = make_mesh(config(collector.endpoint, zipkin={"timeout": "100ms"}))
        took = timed_requests(mesh, 2)
        assert max(took) < COLLECTOR_DELAY / 4
        start = time.perf_counter()
        tracer_of(mesh).flush()
        assert time.perf_counter() - start < COLLECTOR_DELAY / 2  # the export gave up at its timeout
        stats = mesh.stats()["observability"]["tracing"]
    assert (stats["exported"], stats["dropped_export_failed"]) == (0, 4)
    assert "Timeout" in stats["last_export_error"]


def test_a_collector_that_refuses_spans_is_counted(make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    respx_mock.get(f"{ENDPOINT}/x").respond(200)
    with running_collector(status=500) as collector:
        mesh = make_mesh(config(collector.endpoint))
        timed_requests(mesh, 3)
        tracer_of(mesh).flush()
        stats = mesh.stats()["observability"]["tracing"]
    assert (stats["exported"], stats["dropped_export_failed"]) == (0, 6)
    assert "refused" in stats["last_export_error"]


def test_spans_ended_after_close_are_counted_dropped(make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    respx_mock.get(f"{ENDPOINT}/x").respond(200, content=b"body")
    with running_collector() as collector:
        mesh = make_mesh(config(collector.endpoint))
        tracer = tracer_of(mesh)
        with mesh.client() as client, client.stream("GET", "http://ratings/x") as response:
            mesh.close()  # the request's span ends after this, with its body
            assert response.read() == b"body"
        stats = tracer.stats()
        assert (stats["spans"], stats["exported"], stats["dropped_after_close"]) == (2, 1, 1)
        assert len(collector.spans) == 1  # the try's span, ended at the response head, was sent by close()
        assert collector.spans[0]["name"] == "try 1"


EXIT_PROBE = """
import sys, httpx, meshlib
mesh = meshlib.Mesh.from_dict({"clusters": {"ratings": {"endpoints": ["http://127.0.0.1:9090"]}},
                               "tracing": {"zipkin": {"endpoint": sys.argv[1]}}})
with mesh.client(transport=httpx.MockTransport(lambda request: httpx.Response(200))) as client:
    assert client.get("http://ratings/x").status_code == 200
# No mesh.close(): the spans are still queued (the export runs every 5 s) when the process exits.
"""


def test_a_mesh_never_closed_sends_its_spans_when_the_process_exits() -> None:
    with running_collector() as collector:
        subprocess.run([sys.executable, "-c", EXIT_PROBE, collector.endpoint], check=True, timeout=60)
        spans = collector.wait_for_count(2, timeout=5)
    assert sorted(s["name"] for s in spans) == ["GET cluster:ratings", "try 1"]


def test_spans_go_straight_to_the_collector_whatever_the_proxy_variables_say(
    make_mesh: MakeMesh, free_port: int, respx_mock: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app that points HTTP_PROXY at its sidecar (here: at nothing) still exports to the configured endpoint."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    respx_mock.get(f"{ENDPOINT}/x").respond(200)
    with running_collector() as collector:
        mesh = make_mesh(config(collector.endpoint))
        with mesh.client(trust_env=False) as client:
            assert client.get("http://ratings/x").status_code == 200
        tracer_of(mesh).flush()
        assert len(collector.spans) == 2
    assert mesh.stats()["observability"]["tracing"]["exported"] == 2
