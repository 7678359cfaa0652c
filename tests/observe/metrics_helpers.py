"""Reading metrics pages in tests, and the real tools that check them: promtool and a Prometheus server.

Both tools come from Debian's ``prometheus`` package (``apt-get install -y
prometheus``, which ``.ci/run`` installs): a test that needs one fails,
saying how to install it, when it is missing.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.ports import free_port

INSTALL = "install Debian's prometheus package (apt-get install -y prometheus), as .ci/run does"


def value(page: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 when there are none)."""
    total = 0.0
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def series(page: str, name: str) -> list[dict[str, str]]:
    """The label sets of the samples called ``name``."""
    return [
        dict(sample.labels)
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name == name
    ]


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {INSTALL}")
    return found


def promtool_check(page: str) -> None:
    """``promtool check metrics`` accepts ``page``: it parses, and no lint rule (naming, units, _total) objects."""
    done = subprocess.run(
        [binary("promtool"), "check", "metrics"], input=page, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, f"promtool check metrics failed ({done.returncode}):\n{done.stdout}{done.stderr}"


class Prometheus:
    """A running Prometheus server on loopback: ask it queries with :meth:`query`."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` evaluates to now (``/api/v1/query``)."""
        with httpx.Client(trust_env=False, timeout=5) as client:
            answer = client.get(f"{self.url}/api/v1/query", params={"query": promql}).json()
        assert answer["status"] == "success", answer
        assert answer["data"]["resultType"] == "vector", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_for(self, promql: str, expected: float, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Poll ``promql`` until it gives one series with ``expected`` (scrapes come every 200 ms)."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log.read_text()}")
            result = self.query(promql)
            if len(result) == 1 and float(result[0]["value"][1]) == expected:
                return result
            time.sleep(0.1)
        targets = self.targets()
        raise AssertionError(f"{promql} = {result}, not {expected}, within {timeout}s; targets: {targets}")

    def targets(self) -> list[dict[str, Any]]:
        with httpx.Client(trust_env=False, timeout=5) as client:
            active: list[dict[str, Any]] = client.get(f"{self.url}/api/v1/targets").json()["data"]["activeTargets"]
        return [{k: t.get(k) for k in ("scrapeUrl", "health", "lastError")} for t in active]


@contextmanager
def prometheus(targets: Sequence[tuple[str, str]], *, start_timeout: float = 30.0) -> Iterator[Prometheus]:
    """A Prometheus server scraping each ``(host:port, metrics_path)`` every 200 ms, its data in a temporary directory.

    Stopped (SIGTERM, then SIGKILL) on exit.
    """
    executable = binary("prometheus")
    with tempfile.TemporaryDirectory(prefix="meshlib-prometheus-") as tmp:
        root = Path(tmp)
        config = {
            # Prometheus takes any interval; 200 ms keeps the test short (the timeout must not exceed it).
            "global": {"scrape_interval": "200ms", "scrape_timeout": "150ms", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": f"meshlib-{i}",
                    "metrics_path": path,
                    "static_configs": [{"targets": [address]}],
                }
                for i, (address, path) in enumerate(targets)
            ],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        for attempt in range(1, 4):  # the free port may be taken between probing and binding: try another
            log = root / f"prometheus-{attempt}.log"
            port = free_port()
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [
                        executable,
                        f"--config.file={root / 'prometheus.yml'}",
                        f"--storage.tsdb.path={root / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--log.level=warn",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                )
            server = Prometheus(proc, f"http://127.0.0.1:{port}", log)
            try:
                _wait_ready(server, start_timeout)
            except AssertionError:
                _stop(proc)
                if attempt < 3 and "address already in use" in log.read_text():
                    continue
                raise
            break
        try:
            yield server
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait_ready(server: Prometheus, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=1) as client:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {server.proc.returncode}:\n{server.log.read_text()}")
            try:
                if client.get(f"{server.url}/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise AssertionError(f"prometheus not ready within {timeout}s:\n{server.log.read_text()}")
