"""Tests of ``meshlib demo``: its report, its self-checks, its clean exit, and a real run as a subprocess."""

from __future__ import annotations

import copy
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import yaml

from meshlib import MeshConfig, _demo
from meshlib._cli import main

DEMO_TIME_LIMIT = 20.0  # seconds, from the issue: the demo finishes in under 20 s


def _new_threads(before: set[threading.Thread], wait: float = 2.0) -> list[threading.Thread]:
    """Threads started since ``before`` that are still alive after joining each for at most ``wait`` s in total."""
    deadline = time.monotonic() + wait
    for thread in threading.enumerate():
        if thread not in before and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


def _row(out: str, *cells: str) -> re.Match[str] | None:
    """The table line holding ``cells`` in order, separated by column padding."""
    return re.search(r"^\s*" + r"\s+".join(cells) + r"(\s|$)", out, re.MULTILINE)


def test_demo_via_cli_reports_where_traffic_went(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    before = set(threading.enumerate())

    assert main(["demo", "--requests", "300"]) == 0

    out, err = capsys.readouterr()
    assert err == ""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []  # e.g. asyncio's
    for word in ("reviews-v1", "reviews-v2", "ratings", "p50", "p99", "req/s", "all checks passed"):
        assert word in out
    assert "FAIL" not in out
    # 300 requests: 7 in 10 to the canary, 1 in 10 each to testers, Android and ratings-by-name.
    endpoint = r"127\.0\.0\.1:\d+"
    assert _row(out, "reviews-testers", "reviews-v2", endpoint, "30", r"100\.0%")
    assert _row(out, "reviews-android", "reviews-v2", endpoint, "30", r"100\.0%")
    assert _row(out, "cluster:ratings", "ratings", endpoint, "30", r"100\.0%")
    assert _row(out, "reviews-canary", "reviews-v1", "2 endpoints")
    assert _row(out, "all", "300", r"[\d.]+", r"[\d.]+")
    # the two reviews-v1 endpoints share the canary's v1 traffic evenly (round robin)
    v1_rows = re.findall(rf"^\s+({endpoint})\s+(\d+)\s+[\d.]+%", out, re.MULTILINE)
    assert len(v1_rows) == 2
    counts = [int(n) for _, n in v1_rows]
    assert abs(counts[0] - counts[1]) <= 1
    assert 170 <= sum(counts) <= 205  # 90% of 210, give or take four standard deviations

    assert _new_threads(before) == [], "the demo left threads running"


def test_demo_fails_when_the_canary_share_is_off(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config: dict[str, Any] = copy.deepcopy(_demo.DEMO_CONFIG)
    canary = next(r for r in config["routes"] if r["name"] == "reviews-canary")
    canary["split"] = [{"cluster": "reviews-v1", "weight": 50}, {"cluster": "reviews-v2", "weight": 50}]
    monkeypatch.setattr(_demo, "DEMO_CONFIG", config)

    assert _demo.run_demo(requests=300) == _demo.EXIT_CHECK_FAILED

    captured = capsys.readouterr()
    assert re.search(r"FAIL\s+canary: \d+\.\d% of 210 on reviews-v1", captured.out)
    assert "check(s) failed" in captured.err


def test_demo_fails_when_the_header_route_misses_v2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config: dict[str, Any] = copy.deepcopy(_demo.DEMO_CONFIG)
    testers = next(r for r in config["routes"] if r["name"] == "reviews-testers")
    testers["cluster"] = "reviews-v1"
    monkeypatch.setattr(_demo, "DEMO_CONFIG", config)

    assert _demo.run_demo(requests=300) == _demo.EXIT_CHECK_FAILED

    out = capsys.readouterr().out
    assert re.search(r"FAIL\s+x-user: tester → reviews-v2: 0/30", out)
    assert re.search(r"ok\s+Android user-agent → reviews-v2: 30/30", out)


def test_demo_fails_when_requests_fail(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        closed_port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    live_config = _demo._live_config

    def ratings_down(upstreams: dict[str, Any]) -> dict[str, Any]:
        config = live_config(upstreams)
        config["clusters"]["ratings"]["endpoints"] = [f"http://127.0.0.1:{closed_port}"]
        return config

    monkeypatch.setattr(_demo, "_live_config", ratings_down)
    before = set(threading.enumerate())

    assert _demo.run_demo(requests=100) == _demo.EXIT_CHECK_FAILED

    out = capsys.readouterr().out
    assert re.search(r"FAIL\s+all 100 requests answered 200 by an upstream \(\d+× UpstreamConnectError", out)
    assert _row(out, "FAILED", "UpstreamConnectError:.*", r"10", r"10\.0%")
    assert _new_threads(before) == []


def test_demo_print_config_is_a_valid_mesh_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--print-config"]) == 0

    data = yaml.safe_load(capsys.readouterr().out)
    assert data == _demo.DEMO_CONFIG
    config = MeshConfig.from_dict(data)
    assert set(config.clusters) == {"reviews-v1", "reviews-v2", "ratings"}


@pytest.mark.parametrize(("requests", "concurrency"), [(5, 8), (300, 0)])
def test_demo_rejects_bad_arguments(requests: int, concurrency: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert _demo.run_demo(requests=requests, concurrency=concurrency) == _demo.EXIT_USAGE
    assert "--requests must be at least" in capsys.readouterr().err


def test_demo_as_a_subprocess_with_defaults_finishes_in_time() -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "meshlib", "demo"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=DEMO_TIME_LIMIT * 2,
        check=False,
    )
    elapsed = time.monotonic() - started

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < DEMO_TIME_LIMIT
    assert "all checks passed" in proc.stdout
    assert _row(proc.stdout, "all", "3000", r"[\d.]+", r"[\d.]+")
    assert proc.stderr == ""
