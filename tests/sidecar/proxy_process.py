"""Run ``meshlib proxy`` as a user does: a child process with a config file, watched through its log and admin."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from meshlib._sidecar.launch import EXIT_LISTEN
from tests.ports import free_port as free_port  # the sidecar tests take it from here too

_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


class ProxyProcess:
    """A running ``meshlib proxy``: its ports, its log so far, and ways to signal and wait for it."""

    def __init__(self, proc: subprocess.Popen[str], config_path: Path, outbound: int, admin: int) -> None:
        self.proc = proc
        self.config_path = config_path
        self.outbound = outbound
        self.admin = admin
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.outbound}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no log line with {text!r} within {timeout}s; log:\n{self.log}")

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"meshlib proxy exited with {self.proc.returncode}; log:\n{self.log}")
                try:
                    if client.get(self.admin_url + "/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise AssertionError(f"meshlib proxy not ready within {timeout}s; log:\n{self.log}")

    def write_config(self, config: Mapping[str, Any]) -> None:
        write_config(self.config_path, config, self.outbound, self.admin)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client that uses the sidecar as its HTTP proxy (what HTTP_PROXY does)."""
        return httpx.Client(proxy=self.proxy_url, trust_env=False, **kwargs)

    def stop(self) -> int:
        """SIGTERM (a drain), then kill if it takes too long; the exit code (negative: killed by that signal)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode


def loads_pydantic(pid: int) -> bool:
    """Whether process ``pid`` has imported pydantic: pydantic-core's extension module is mapped (Linux)."""
    return "pydantic_core" in Path(f"/proc/{pid}/maps").read_text()


def write_config(path: Path, config: Mapping[str, Any], outbound: int, admin: int) -> None:
    data = dict(config)
    sidecar = dict(data.get("sidecar", {}))
    sidecar.setdefault("outbound", {"listen": f"127.0.0.1:{outbound}"})
    sidecar.setdefault("admin", {"listen": f"127.0.0.1:{admin}"})
    data["sidecar"] = sidecar
    # Written whole, then renamed: the proxy's watcher never reads half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data))
    os.replace(tmp, path)


def start(
    tmp_path: Path,
    config: Mapping[str, Any],
    *args: str,
    outbound: int | None = None,
    admin: int | None = None,
    pass_fds: Sequence[int] = (),
    environ: Mapping[str, str] | None = None,
) -> ProxyProcess:
    """Start ``meshlib proxy`` on free loopback ports (unless given) with ``config``; does not wait for readiness.

    ``environ``: variables set for the proxy beside :func:`proxy_env`'s."""
    outbound = outbound if outbound is not None else free_port()
    admin = admin if admin is not None else free_port()
    while admin == outbound:
        admin = free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "mesh.yaml"
    write_config(path, config, outbound, admin)
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshlib", "proxy", "--config", str(path), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=pass_fds,
        env={**proxy_env(), **(environ or {})},
    )
    return ProxyProcess(proc, path, outbound, admin)


def proxy_env() -> dict[str, str]:
    """The environment a test's proxy runs in: unbuffered, and without the machine's proxy variables."""
    # Proxy variables of the environment must not reroute the proxy's own upstream traffic.
    return {**{k: v for k, v in os.environ.items() if k.upper() not in _PROXY_ENV}, "PYTHONUNBUFFERED": "1"}


def start_ready(
    tmp_path: Path,
    config: Mapping[str, Any],
    *args: str,
    attempts: int = 3,
    environ: Mapping[str, str] | None = None,
) -> ProxyProcess:
    """:func:`start` on free ports and wait until ready; a port taken between probing and binding is retried."""
    for attempt in range(1, attempts + 1):
        proxy = start(tmp_path, config, *args, environ=environ)
        try:
            proxy.wait_ready()
        except AssertionError:
            code = proxy.stop()
            if attempt == attempts or (code != EXIT_LISTEN and "already in use" not in proxy.log):
                raise
            continue
        except BaseException:
            proxy.stop()
            raise
        return proxy
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


@contextmanager
def running(
    tmp_path: Path, config: Mapping[str, Any], *args: str, environ: Mapping[str, str] | None = None
) -> Iterator[ProxyProcess]:
    """A ready ``meshlib proxy``, stopped (SIGTERM, then kill) afterwards (``environ``: as :func:`start`'s)."""
    proxy = start_ready(tmp_path, config, *args, environ=environ)
    try:
        yield proxy
    finally:
        proxy.stop()
