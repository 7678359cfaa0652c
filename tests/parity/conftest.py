"""The parity suite's machinery: four client modes, a real ``meshlib proxy`` per scenario, counting upstreams.

Every test takes ``open_client`` and calls ``open_client(config)`` once: in the
``in-process-*`` modes that is ``mesh.client()`` / ``mesh.async_client()``; in
the ``sidecar-*`` modes it starts ``meshlib proxy --config FILE`` with the same
config and returns ``mesh.client(mode="sidecar", sidecar=URL)`` (or the async
twin). The mesh state of a sidecar lives in its process, so the scenarios count
what the upstreams received instead of reading ``mesh.stats()``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import pytest

import meshlib
from tests.conftest import Receive, RunningServer, Scope, Send, start_server

MODES = ("in-process-sync", "in-process-async", "sidecar-sync", "sidecar-async")

READY_WITHIN = 15.0  # seconds for the proxy to answer 200 on /ready
STOP_WITHIN = 10.0  # seconds for SIGTERM to end it before it is killed
START_ATTEMPTS = 3  # a probed free port may be taken by someone else before the proxy binds it
# What is left of the proxy's exit code contract here: 0 after SIGTERM; a taken port is retried.
EXIT_LISTEN = 3
PROXY_ENV_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
PROXY_COMMAND = (sys.executable, "-m", "meshlib", "proxy")  # then --config FILE


# --- clients ---------------------------------------------------------------------------------------------------------


class ParityClient:
    """One async API over a sync or async httpx client, so each scenario is written once for all four modes.

    A sync client blocks the test's event loop, which is harmless: the upstreams
    run in other threads and the sidecar in another process.
    """

    def __init__(self, client: httpx.Client | httpx.AsyncClient, mode: str) -> None:
        self.client = client
        self.mode = mode

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if isinstance(self.client, httpx.Client):
            return self.client.request(method, url, **kwargs)
        return await self.client.request(method, url, **kwargs)

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def aclose(self) -> None:
        if isinstance(self.client, httpx.Client):
            self.client.close()
        else:
            await self.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


OpenClient = Callable[[Mapping[str, Any]], ParityClient]
"""``open_client(config)`` → a :class:`ParityClient` in this test's mode (use ``async with``)."""


@pytest.fixture(params=MODES)
def parity_mode(request: pytest.FixtureRequest) -> str:
    """Where the mesh runs (in process or in the sidecar) and which client (sync or async) sends."""
    param: str = request.param
    return param


@pytest.fixture
def open_client(parity_mode: str, tmp_path: Path) -> Iterator[OpenClient]:
    """``open_client(config)``: a client of a mesh built from ``config``, in process or through a fresh sidecar."""
    where, flavour = parity_mode.rsplit("-", 1)
    meshes: list[meshlib.Mesh] = []
    sidecars: list[Sidecar] = []

    def open_(config: Mapping[str, Any]) -> ParityClient:
        mesh = meshlib.Mesh.from_dict(dict(config), rng=random.Random(0))
        meshes.append(mesh)
        kwargs: dict[str, Any] = {}
        if where == "sidecar":
            sidecar = start_sidecar(config, tmp_path / f"sidecar-{len(sidecars)}")
            sidecars.append(sidecar)
            kwargs = {"mode": "sidecar", "sidecar": sidecar.url}
        client = mesh.client(**kwargs) if flavour == "sync" else mesh.async_client(**kwargs)
        return ParityClient(client, parity_mode)

    try:
        yield open_
    finally:
        for mesh in meshes:
            mesh.close()
        codes = [(sidecar, sidecar.stop()) for sidecar in sidecars]
    for sidecar, code in codes:
        assert code == 0, f"meshlib proxy exited with {code} after SIGTERM (expected 0); log:\n{sidecar.log()}"


# --- the sidecar process ---------------------------------------------------------------------------------------------


def probe_free_port() -> int:
    """A loopback port free right now (bound by the OS, then released); someone may take it before we do."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Sidecar:
    """A running ``meshlib proxy``: its outbound URL, admin URL, process and log file."""

    proc: subprocess.Popen[bytes]
    url: str
    admin_url: str
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int:
        """SIGTERM, wait for the drain, then kill; the exit code (negative: killed by that signal)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_WITHIN)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_WITHIN)
        return self.proc.returncode


def sidecar_config(config: Mapping[str, Any], outbound: int, admin: int) -> dict[str, Any]:
    """``config`` with the sidecar's listeners on the given loopback ports and a short drain."""
    data = dict(config)
    data["sidecar"] = {
        "outbound": {"listen": f"127.0.0.1:{outbound}"},
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "limits": {"drain_timeout": "2s"},
    }
    return data


def _wait_ready(proc: subprocess.Popen[bytes], admin_url: str) -> bool:
    """Poll ``/ready`` until 200 (True) or until the process exits (False); fails after READY_WITHIN."""
    deadline = time.monotonic() + READY_WITHIN
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                if client.get(f"{admin_url}/ready").status_code == 200:
                    return True
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.02)
    raise TimeoutError(f"meshlib proxy was not ready within {READY_WITHIN:g} s")


def start_sidecar(config: Mapping[str, Any], directory: Path) -> Sidecar:
    """Start ``meshlib proxy --config FILE`` with ``config`` on free loopback ports; return once ``/ready`` is 200."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k.upper() not in PROXY_ENV_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    for attempt in range(1, START_ATTEMPTS + 1):
        outbound = probe_free_port()
        admin = probe_free_port()
        while admin == outbound:  # bounded in practice: the OS hands out ephemeral ports in turn
            admin = probe_free_port()
        path = directory / f"mesh-{attempt}.json"
        path.write_text(json.dumps(sidecar_config(config, outbound, admin)))
        log_path = directory / f"proxy-{attempt}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*PROXY_COMMAND, "--config", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        sidecar = Sidecar(proc, f"http://127.0.0.1:{outbound}", f"http://127.0.0.1:{admin}", log_path)
        try:
            ready = _wait_ready(proc, sidecar.admin_url)
        except BaseException:
            sidecar.stop()
            raise
        if ready:
            return sidecar
        code = sidecar.stop()
        text = sidecar.log()
        port_taken = code == EXIT_LISTEN or "already in use" in text
        if not port_taken or attempt == START_ATTEMPTS:
            pytest.fail(f"meshlib proxy exited with {code} before it was ready; log:\n{text}", pytrace=False)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or fails


# --- upstreams -------------------------------------------------------------------------------------------------------


Behaviour = Callable[[int], int]
"""The status an upstream answers its n-th request with (n counts from 1)."""


class CountingApp:
    """An ASGI upstream that counts its requests and answers each with ``behaviour(n)``, body ``call N``."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.calls = 0
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        while (await receive()).get("more_body", False):
            pass
        with self._lock:
            self.calls += 1
            n = self.calls
        body = f"call {n}".encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": self.behaviour(n), "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass
class CountingUpstream:
    """A running :class:`CountingApp`: its URL and how many requests it has received."""

    url: str
    app: CountingApp

    @property
    def calls(self) -> int:
        return self.app.calls


StartUpstream = Callable[[Behaviour], CountingUpstream]


@pytest.fixture
def start_upstream() -> Iterator[StartUpstream]:
    """``start_upstream(behaviour)`` → a :class:`CountingUpstream` on loopback, stopped after the test."""
    running: list[RunningServer] = []

    def start(behaviour: Behaviour) -> CountingUpstream:
        app = CountingApp(behaviour)
        server = start_server(app, f"counting-{len(running)}")
        running.append(server)
        return CountingUpstream(server.url, app)

    try:
        yield start
    finally:
        for server in running:  # ask all first: each takes one uvicorn tick to notice
            server.server.should_exit = True
        for server in running:
            server.stop()
