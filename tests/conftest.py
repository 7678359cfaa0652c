"""Shared fixtures: mesh factory, sync/async modes, free ports and real uvicorn upstreams on loopback."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import httpx
import pytest
import respx
import uvicorn

import meshlib
from meshlib import MeshConfig
from meshlib.testing import Clock, MeshFactory, SystemClock
from tests import ports

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
MakeMesh = Callable[..., meshlib.Mesh]

# The upstream services the integration tests route between (reviews v1 has two endpoints).
UPSTREAM_NAMES = ("reviews-v1-a", "reviews-v1-b", "reviews-v2", "ratings")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to run compiled modules older than their sources: they would run the old code and hide a change."""
    stale = [ext for ext in _compiled_modules() if _source_of(ext).stat().st_mtime > ext.stat().st_mtime]
    if stale:
        pytest.exit(
            f"meshlib: {len(stale)} compiled modules are older than their sources ({stale[0].name}, …): "
            "run `python hatch_build.py --inplace` again, or `--clean` to test the sources",
            returncode=3,
        )


def pytest_report_header() -> str:
    """Which request path the suite runs: the sources, or the modules ``hatch_build.py --inplace`` compiled."""
    compiled = _compiled_modules()
    return f"meshlib: {len(compiled)} modules compiled with mypyc" if compiled else "meshlib: pure Python"


def _compiled_modules() -> list[Path]:
    package = Path(meshlib.__file__).parent
    return [*package.rglob("*.so"), *package.rglob("*.pyd")]


def _source_of(extension: Path) -> Path:
    return extension.with_name(extension.name.split(".", 1)[0] + ".py")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_mesh(mesh_factory: MeshFactory) -> MakeMesh:
    """``make_mesh(config, seed=0, clock=None)`` → a Mesh with a seeded rng, closed after the test.

    The one way tests build a mesh: ``make_mesh`` is the plugin's ``mesh_factory``
    (same ``config``: a dict, a :class:`meshlib.MeshConfig` or a file path; same
    ``seed``; closed by it after the test) with one difference, its default clock:

    * ``make_mesh`` runs on the real clock unless given one: use it when the test
      waits for real (servers, sockets, health probes, hedges, rate limits) or
      does not care about time;
    * ``mesh_factory`` runs on the test's FakeClock ``mesh_clock``: use it when the
      test moves time with ``mesh_clock`` or checks ``mesh_clock.sleeps``
      (``make_mesh(config, clock=mesh_clock)`` is the same thing).

    Construct ``meshlib.Mesh`` directly only to test the constructors themselves,
    close/context-manager semantics, or where a function fixture cannot serve
    (module level, hypothesis examples, subprocesses).
    """

    def make(
        config: Mapping[str, Any] | MeshConfig | str | os.PathLike[str],
        *,
        seed: int | None = 0,
        clock: Clock | None = None,
    ) -> meshlib.Mesh:
        return mesh_factory(config, seed=seed, clock=clock if clock is not None else SystemClock())

    return make


class MeshCaller:
    """One async API over a mesh's sync or async client, so each scenario is written once for both modes.

    In ``sync`` mode the calls block the test's event loop, which is harmless: the
    upstreams are respx mocks or servers in other threads.
    """

    def __init__(self, mode: str, mesh: meshlib.Mesh, /, **client_kwargs: Any) -> None:
        self.mode = mode
        self.sync_client: httpx.Client | None = None
        self.async_client: httpx.AsyncClient | None = None
        if mode == "sync":
            self.sync_client = mesh.client(**client_kwargs)
        else:
            self.async_client = mesh.async_client(**client_kwargs)

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if self.sync_client is not None:
            return self.sync_client.request(method, url, **kwargs)
        assert self.async_client is not None
        return await self.async_client.request(method, url, **kwargs)

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def open_stream(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send and return the response with its body unread (close it with :meth:`close_response`)."""
        if self.sync_client is not None:
            return self.sync_client.send(self.sync_client.build_request(method, url, **kwargs), stream=True)
        assert self.async_client is not None
        return await self.async_client.send(self.async_client.build_request(method, url, **kwargs), stream=True)

    async def read_response(self, response: httpx.Response) -> bytes:
        if self.sync_client is not None:
            return response.read()
        return await response.aread()

    async def close_response(self, response: httpx.Response) -> None:
        if self.sync_client is not None:
            response.close()
        else:
            await response.aclose()

    async def aclose(self) -> None:
        if self.sync_client is not None:
            self.sync_client.close()
        if self.async_client is not None:
            await self.async_client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


Caller = Callable[..., MeshCaller]
"""The ``caller`` fixture's type: ``caller(mesh, **client_kwargs)`` → a :class:`MeshCaller`."""


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    """Run the test once with an ``httpx.Client`` and once with an ``httpx.AsyncClient``."""
    param: str = request.param
    return param


@pytest.fixture
def caller(mode: str) -> Caller:
    """``caller(mesh, **client_kwargs)`` → a :class:`MeshCaller` in this test's mode (use ``async with``)."""

    def make(mesh: meshlib.Mesh, **client_kwargs: Any) -> MeshCaller:
        return MeshCaller(mode, mesh, **client_kwargs)

    return make


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on (see tests/ports.py)."""
    return ports.free_port()


async def read_body(receive: Receive) -> bytes:
    """The whole request body of an ASGI request."""
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body", False):
            return body


def echo_app(name: str) -> ASGIApp:
    """A tiny ASGI upstream answering JSON: its own name, and the method, path, query, headers and body it got."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = await read_body(receive)
        payload = {
            "name": name,
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body": body.decode("latin-1"),
        }
        data = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"x-upstream", name.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    return app


@dataclass
class RunningServer:
    """A uvicorn server serving one app on 127.0.0.1 from a background thread."""

    name: str
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if self.thread.is_alive():  # pragma: no cover - only when uvicorn hangs
            raise RuntimeError(f"uvicorn server {self.name!r} did not stop")


def start_server(app: ASGIApp, name: str, *, timeout: float = 10.0) -> RunningServer:
    """Start ``app`` under uvicorn on an ephemeral loopback port and wait until it accepts connections."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http="h11",
        ws="none",
        lifespan="off",
        loop="asyncio",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"uvicorn server {name!r} exited during startup")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn server {name!r} did not start within {timeout} s")
        time.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    return RunningServer(name, f"http://127.0.0.1:{port}", server, thread)


@pytest.fixture(scope="session")
def upstreams() -> Iterator[dict[str, str]]:
    """Real echo servers for :data:`UPSTREAM_NAMES`, as ``{name: "http://127.0.0.1:PORT"}``; one set per session."""
    running: list[RunningServer] = []
    try:
        for name in UPSTREAM_NAMES:
            running.append(start_server(echo_app(name), name))
        yield {s.name: s.url for s in running}
    finally:
        for server in running:  # ask all to exit first: each takes one uvicorn tick (0.1 s) to notice
            server.server.should_exit = True
        for server in running:
            server.stop()


def echo_response(request: httpx.Request) -> httpx.Response:
    """A respx side effect: answer with what the endpoint received, as JSON (``port`` tells which endpoint)."""
    return httpx.Response(
        200,
        json={
            "url": str(request.url),
            "port": request.url.port,
            "method": request.method,
            "path": request.url.path,
            "raw_path": request.url.raw_path.decode("ascii"),
            "query": request.url.query.decode("ascii"),
            "headers": [[k, v] for k, v in request.headers.multi_items()],
            "body": request.read().decode("latin-1"),
        },
    )


@pytest.fixture
def loopback(respx_mock: respx.MockRouter) -> respx.Route:
    """A respx route that answers every request to 127.0.0.1 (any port) with :func:`echo_response`."""
    return respx_mock.route(host="127.0.0.1").mock(side_effect=echo_response)


# Raw TCP upstreams that misbehave on purpose (stall, close mid-response): what uvicorn won't do.
ConnectionHandler = Callable[[socket.socket, threading.Event], None]
"""Serves one accepted connection; must return soon after the event is set (the server is stopping)."""


def read_request_head(conn: socket.socket, *, timeout: float = 5.0) -> bytes:
    """Read from ``conn`` until the end of an HTTP request head (or EOF, or ``timeout``)."""
    conn.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


@dataclass
class RawServer:
    """A running :func:`raw_server`: its URL and the connections it accepted so far."""

    url: str
    accepted: list[socket.socket]

    @property
    def connections(self) -> int:
        return len(self.accepted)


@contextmanager
def raw_server(handle: ConnectionHandler, *, max_connections: int = 64) -> Iterator[RawServer]:
    """A plain socket server on 127.0.0.1:0 running ``handle`` per connection in threads.

    Bounded: at most ``max_connections`` connections are served, and on exit the
    listening socket and every connection are closed and every thread joined.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.02)
    stop = threading.Event()
    conns: list[socket.socket] = []
    workers: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        try:
            handle(conn, stop)
        except OSError:
            pass  # the client gave up (timed out) first
        finally:
            conn.close()

    def accept() -> None:
        while not stop.is_set() and len(conns) < max_connections:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conns.append(conn)
            worker = threading.Thread(target=serve, args=(conn,), daemon=True)
            workers.append(worker)
            worker.start()

    acceptor = threading.Thread(target=accept, name="raw-server", daemon=True)
    acceptor.start()
    try:
        yield RawServer(f"http://127.0.0.1:{listener.getsockname()[1]}", conns)
    finally:
        stop.set()
        acceptor.join(timeout=5)
        listener.close()
        for conn in conns:
            conn.close()
        for worker in workers:
            worker.join(timeout=5)


class StallRecorder:
    """A raw-server handler that reads the request, never answers, and notes when the client hangs up."""

    def __init__(self) -> None:
        self.hung_up = threading.Event()

    def __call__(self, conn: socket.socket, stop: threading.Event) -> None:
        read_request_head(conn)
        conn.settimeout(0.05)
        while not stop.is_set():
            try:
                if conn.recv(1024) == b"":
                    self.hung_up.set()
                    return
            except TimeoutError:
                continue


def stall(conn: socket.socket, stop: threading.Event) -> None:
    """Accept the request and never answer (until the server stops)."""
    read_request_head(conn)
    stop.wait(10)


def close_before_response(conn: socket.socket, stop: threading.Event) -> None:
    """Read the request, then close the connection without a byte of response."""
    read_request_head(conn)


def close_mid_body(conn: socket.socket, stop: threading.Event) -> None:
    """Promise 1000 bytes of body, send 10, then close the connection."""
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n0123456789")


def answer_ok(conn: socket.socket, stop: threading.Event) -> None:
    """Answer 200 ``ok`` and close the connection."""
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


async def outcomes(client: Any, url: str, n: int) -> list[int | str]:
    """Send ``n`` GETs through a ``caller`` client: each one's status, or the code of the MeshError it raised."""
    out: list[int | str] = []
    for _ in range(n):
        try:
            out.append((await client.get(url)).status_code)
        except meshlib.MeshError as error:
            out.append(error.code)
    return out


def wait_for(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll ``condition`` (background work: health probes, mirrors, hedges) for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.005)


async def eventually(condition: Callable[[], bool], within: float = 2.0) -> None:
    """The async twin of :func:`wait_for`: polls without blocking the event loop."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await anyio.sleep(0.005)
