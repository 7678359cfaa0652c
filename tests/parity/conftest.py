"""The parity suite's machinery: four client modes, a real ``meshlib proxy`` per scenario, counting upstreams.

Every test takes ``open_client`` and calls ``open_client(config)`` once: in the
``in-process-*`` modes that is ``mesh.client()`` / ``mesh.async_client()`` (and
``mesh.async_client(transport=meshlib.AsyncHTTP1Transport())`` in
``in-process-async-h1``, the fast inner transport); in
the ``sidecar-*`` modes it starts ``meshlib proxy --config FILE`` with the same
config and returns ``mesh.client(mode="sidecar", sidecar=URL)`` (or the async
twin). The mesh state of a sidecar lives in its process, so the scenarios count
what the upstreams received instead of reading ``mesh.stats()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import meshlib
from tests.conftest import MakeMesh, MeshCaller, Receive, RunningServer, Scope, Send, start_server
from tests.sidecar import proxy_process
from tests.sidecar.proxy_process import ProxyProcess

MODES = ("in-process-sync", "in-process-async", "in-process-async-h1", "sidecar-sync", "sidecar-async")

OpenClient = Callable[[Mapping[str, Any]], MeshCaller]
"""``open_client(config)`` → a :class:`MeshCaller` in this test's mode (use ``async with``)."""

# A short drain keeps the sidecar's stop quick; the scenarios leave nothing in flight.
_SIDECAR = {"limits": {"drain_timeout": "2s"}}


@pytest.fixture(params=MODES)
def parity_mode(request: pytest.FixtureRequest) -> str:
    """Where the mesh runs (in process or in the sidecar) and which client (sync or async) sends."""
    param: str = request.param
    return param


@pytest.fixture
def open_client(parity_mode: str, tmp_path: Path, make_mesh: MakeMesh) -> Iterator[OpenClient]:
    """``open_client(config)``: a client of a mesh built from ``config``, in process or through a fresh sidecar."""
    where = "sidecar" if parity_mode.startswith("sidecar") else "in-process"
    flavour = "sync" if parity_mode.endswith("sync") and not parity_mode.endswith("async") else "async"
    sidecars: list[ProxyProcess] = []

    def open_(config: Mapping[str, Any]) -> MeshCaller:
        mesh = make_mesh(config)
        kwargs: dict[str, Any] = {}
        if parity_mode == "in-process-async-h1":
            kwargs = {"transport": meshlib.AsyncHTTP1Transport()}
        if where == "sidecar":
            sidecar = proxy_process.start_ready(tmp_path / f"sidecar-{len(sidecars)}", {**config, "sidecar": _SIDECAR})
            sidecars.append(sidecar)
            kwargs = {"mode": "sidecar", "sidecar": sidecar.proxy_url}
        return MeshCaller(flavour, mesh, **kwargs)

    try:
        yield open_
    finally:
        codes = [(sidecar, sidecar.stop()) for sidecar in sidecars]
    for sidecar, code in codes:
        assert code == 0, f"meshlib proxy exited with {code} after SIGTERM (expected 0); log:\n{sidecar.log}"


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
