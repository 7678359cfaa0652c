"""Tests of ``meshlib demo``: its report, its self-checks, its clean exit, a real run as a subprocess, and ``--serve``.

The ``--serve`` tests need 127.0.0.1:9081-9083 and :9090 free (the ports the docs name); they fail, saying which
port, when another process holds one.
"""

from __future__ import annotations

import copy
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest
import yaml

from meshlib import MeshConfig, _demo
from meshlib._cli import main
from tests.ports import free_port

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
    closed_port = free_port()  # nothing listens here
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


# --- meshlib demo --serve --------------------------------------------------------------------------------------------

SERVE_URLS = list(_demo.DEMO_UPSTREAMS)  # the fixed ports the README's and the examples' configs name


def _require_free(urls: list[str]) -> None:
    """Fail (not skip) when another process holds one of the fixed ports: the test cannot run, and says why."""
    for url in urls:
        port = int(url.rsplit(":", 1)[1])
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"127.0.0.1:{port} is taken by another process; meshlib demo --serve needs it free")


def _read_until(proc: subprocess.Popen[str], last: str, timeout: float = 10.0) -> list[str]:
    """The lines ``proc`` prints up to and including the one starting with ``last``."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    # readline blocks; a timer kills a process that never gets there, so the loop always ends.
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith(last):
                return lines
    finally:
        killer.cancel()
    pytest.fail(f"no {last!r} line from meshlib demo --serve; it printed: {lines}")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_demo_serve_serves_the_fixed_ports_until_stopped(stop_signal: signal.Signals) -> None:
    _require_free(SERVE_URLS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshlib", "demo", "--serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    try:
        lines = _read_until(proc, "serving until Ctrl-C")
        for url, (service, version) in _demo.DEMO_UPSTREAMS.items():
            assert any(line.endswith(url) and f"{service} {version}" in line for line in lines), lines
        assert any("meshlib proxy --config examples/" in line for line in lines)
        with httpx.Client(trust_env=False) as client:
            for url, (service, version) in _demo.DEMO_UPSTREAMS.items():
                reply = client.get(f"{url}/api/reviews/1").json()
                port = int(url.rsplit(":", 1)[1])
                assert (reply["service"], reply["version"], reply["port"]) == (service, version, port)
        proc.send_signal(stop_signal)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.strip().endswith("meshlib demo --serve: stopped")
    assert err == ""


def test_demo_serve_exits_3_naming_a_taken_port(capsys: pytest.CaptureFixture[str]) -> None:
    _require_free(SERVE_URLS)
    before = set(threading.enumerate())
    with socket.create_server(("127.0.0.1", 9083)):  # reviews v2's port, after two that bind fine
        assert main(["demo", "--serve"]) == _demo.EXIT_PORT_TAKEN == 3  # as meshlib proxy's
    out, err = capsys.readouterr()
    assert "cannot listen on 127.0.0.1:9083: address already in use" in err
    assert "serving" not in out
    assert _new_threads(before) == []
    _require_free(SERVE_URLS)  # the ports bound before the failure were let go


def test_demo_serve_stops_when_asked() -> None:
    _require_free(SERVE_URLS)
    stop = threading.Event()
    result: list[int] = []
    server = threading.Thread(target=lambda: result.append(_demo.serve_upstreams(stop=stop)))
    server.start()
    deadline = time.monotonic() + 10
    while not _answers(SERVE_URLS[-1]) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    server.join(10)
    assert result == [0]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def test_demo_serve_and_print_config_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--serve", "--print-config"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
