"""The authorization-bypass table (bypass_cases.py) against both in-process doors, and through real servers."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from werkzeug.serving import make_server

import meshlib
from meshlib.asgi import MeshMiddleware as AsgiMiddleware
from meshlib.wsgi import MeshMiddleware as WsgiMiddleware
from tests.inbound.bypass_cases import CASES, POLICY, Case, echo_asgi, echo_wsgi, raw_request
from tests.inbound.doors import call


@pytest.fixture(scope="module")
def mesh() -> Iterator[meshlib.Mesh]:
    with meshlib.Mesh.from_dict({"inbound": POLICY}) as mesh:
        yield mesh


@pytest.mark.parametrize("door", ["asgi", "wsgi"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bypass_case(mesh: meshlib.Mesh, door: str, case: Case) -> None:
    app = AsgiMiddleware(echo_asgi, mesh=mesh) if door == "asgi" else WsgiMiddleware(echo_wsgi, mesh=mesh)
    reply = call(door, app, case.method, case.path, query=case.query, headers=case.headers)
    assert reply.status == case.status, (case.source, reply.body)
    if case.status == 200:
        assert reply.json == {"path": case.app_path}
    else:
        assert reply.headers["x-meshlib-error"] == {400: "bad_request", 403: "forbidden"}[case.status]


def test_without_the_middleware_the_table_finds_bypasses() -> None:
    """The table has teeth: the bare echo app would serve /admin under several disguises."""
    from tests.inbound.doors import call_asgi

    served = [c.id for c in CASES if c.status != 200 and call_asgi(echo_asgi, c.method, c.path).status == 200]
    assert {"dotdot", "double-slash", "encoded-letter", "escaped-slash", "fragment"} <= set(served)


def _serve(server: Any) -> threading.Thread:
    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    return thread


def _send(port: int, data: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.fixture(scope="module")
def uvicorn_port(mesh: meshlib.Mesh) -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(AsgiMiddleware(echo_asgi, mesh=mesh), lifespan="off", log_level="error", http="h11")
    server = uvicorn.Server(config)
    thread = _serve(lambda: server.run(sockets=[sock]))
    while not server.started:
        thread.join(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(5)


@pytest.fixture(scope="module")
def werkzeug_port(mesh: meshlib.Mesh) -> Iterator[int]:
    server = make_server("127.0.0.1", 0, WsgiMiddleware(echo_wsgi, mesh=mesh), threaded=True)
    thread = _serve(server.serve_forever)
    yield server.server_port
    server.shutdown()
    thread.join(5)


@pytest.mark.parametrize("server", ["uvicorn", "werkzeug"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bypass_case_over_a_socket(request: pytest.FixtureRequest, server: str, case: Case) -> None:
    """Raw bytes to real servers: whatever the server's parser makes of the target, no refused request gets through."""
    port = request.getfixturevalue(f"{server}_port")
    status, body = _send(port, raw_request(case))
    if case.status == 200:
        assert status == 200, body
        assert json.loads(body) == {"path": case.app_path}
    else:
        # The server's own parser may refuse a malformed target first: that is a 400 too, never the app.
        assert status in (case.status, 400), (case.source, body)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bypass_case_from_the_wire(mesh: meshlib.Mesh, case: Case) -> None:
    """The view a socket door (the sidecar's inbound listener) builds from raw bytes reaches the same verdicts."""
    from meshlib._engine.inbound_context import Peer
    from meshlib._frontdoors.inbound_door import request_from_wire
    from tests.inbound.bypass_cases import HOST

    names = {k for k, _ in case.headers}
    headers = [(k.encode(), v.encode()) for k, v in case.headers]
    if "host" not in names:
        headers.insert(0, (b"host", HOST.encode()))
    result = mesh.snapshot.inbound.check(
        request_from_wire(case.method.encode(), case.target, headers, Peer("10.0.0.1"), 15006)
    )
    status = 200 if result.denial is None else result.denial.status
    assert status == case.status, case.source
    if status == 200:
        assert result.decoded_path == case.app_path
