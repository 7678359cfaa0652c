"""``meshlib proxy`` per service: a child process with its own config file, on ports the OS picks.

Every listener is configured on port 0; the proxy prints ``<listener> listening on HOST:PORT`` once each is
ready, and those lines are where the ports are read from (no probing for free ports, so no races).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Sidecar", "SidecarError"]

READY_TIMEOUT = 20.0  # seconds: a cold start of Python, meshlib and OpenTelemetry on a busy machine
STOP_TIMEOUT = 10.0
_LISTENING = re.compile(r"meshlib proxy: (?P<name>\w+) listening on (?P<host>[\d.]+):(?P<port>\d+)")
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "meshlib_sidecar"}


class SidecarError(RuntimeError):
    """A sidecar did not start; the message holds its log."""


class Sidecar:
    """A running ``meshlib proxy`` for the service ``name`` (started by :meth:`start`)."""

    def __init__(self, name: str, config: dict[str, Any], directory: Path) -> None:
        self.name = name
        self.config_path = directory / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        self.ports: dict[str, int] = {}
        self._expected = set(config["sidecar"])
        self._log: deque[str] = deque(maxlen=200)
        self._ready = threading.Condition()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARIABLES}
        env["PYTHONUNBUFFERED"] = "1"
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "meshlib", "proxy", "--config", str(self.config_path), "--watch-interval", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
        )
        self._reader = threading.Thread(target=self._read, name=f"bookinfo-sidecar-{self.name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            line = line.rstrip("\n")
            with self._ready:
                self._log.append(line)
                if (found := _LISTENING.search(line)) is not None:
                    self.ports[found["name"]] = int(found["port"])
                self._ready.notify_all()
        with self._ready:
            self._ready.notify_all()  # the process ended: wake wait_ready

    @property
    def log(self) -> str:
        with self._ready:
            return "\n".join(self._log)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until every configured listener listens; SidecarError (with the log) if the proxy exits first."""
        assert self._proc is not None
        assert self._reader is not None
        deadline = time.monotonic() + timeout
        with self._ready:
            while not self._expected <= set(self.ports):
                left = deadline - time.monotonic()
                if not self._reader.is_alive():  # its stderr closed: it is exiting
                    try:
                        state = f"exited {self._proc.wait(STOP_TIMEOUT)}"
                    except subprocess.TimeoutExpired:
                        state = "closed its stderr"
                    raise SidecarError(f"meshlib proxy for {self.name} {state}:\n" + "\n".join(self._log))
                if left <= 0:
                    raise SidecarError(f"meshlib proxy for {self.name} not ready in time:\n" + "\n".join(self._log))
                self._ready.wait(min(left, 0.5))

    def url(self, listener: str) -> str:
        return f"http://127.0.0.1:{self.ports[listener]}"

    def terminate(self) -> None:
        """SIGTERM: the proxy drains and exits (see :meth:`wait`)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def wait(self) -> int | None:
        """Wait for the exit after :meth:`terminate` (killed after STOP_TIMEOUT); the exit code."""
        if self._proc is None:
            return None
        try:
            self._proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(STOP_TIMEOUT)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        return self._proc.returncode
