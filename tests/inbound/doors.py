"""Call a wrapped app the way a server would, without one: raw ASGI scopes and WSGI environs, paths byte for byte."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

import meshlib
from meshlib.asgi import MeshMiddleware as AsgiMiddleware
from meshlib.wsgi import MeshMiddleware as WsgiMiddleware
from tests.inbound.bypass_cases import HOST, echo_asgi, echo_wsgi


class Reply:
    """Status, headers (lower-case names), body and, when the app answered, what it returned as JSON."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def call_asgi(
    app: Any,
    method: str,
    path: bytes,
    *,
    query: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
    client: str = "127.0.0.1",
    extensions: dict[str, Any] | None = None,
) -> Reply:
    """One HTTP request into an ASGI app: ``raw_path`` is ``path`` as given, ``path`` its decoding (as uvicorn's)."""
    names = {k.lower() for k, _ in headers}
    all_headers = ([("host", HOST)] if "host" not in names else []) + list(headers)
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path.decode("latin-1")),  # as uvicorn decodes it
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in all_headers],
        "client": (client, 50000),
        "server": ("127.0.0.1", 9080),
    }
    if extensions is not None:
        scope["extensions"] = extensions
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return Reply(start["status"], [(k.decode(), v.decode()) for k, v in start["headers"]], body)


def call_wsgi(
    app: Any,
    method: str,
    path: bytes,
    *,
    query: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
    client: str = "127.0.0.1",
    environ: dict[str, Any] | None = None,
) -> Reply:
    """One request into a WSGI app as gunicorn hands it over: ``RAW_URI`` byte for byte, ``PATH_INFO`` decoded."""
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "RAW_URI": path.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else ""),
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "9080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": client,
        "wsgi.url_scheme": "http",
        "HTTP_HOST": HOST,
    }
    for name, value in headers:
        env["HTTP_" + name.upper().replace("-", "_")] = value
    env.update(environ or {})
    got: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        got["status"] = int(status.split()[0])
        got["headers"] = response_headers

    body = b"".join(app(env, start_response))
    return Reply(got["status"], got["headers"], body)


def echo_doors(mesh: meshlib.Mesh) -> dict[str, Any]:
    """The echo app behind each in-process door."""
    return {"asgi": AsgiMiddleware(echo_asgi, mesh=mesh), "wsgi": WsgiMiddleware(echo_wsgi, mesh=mesh)}


def call(door: str, app: Any, method: str, path: bytes, **kwargs: Any) -> Reply:
    return (call_asgi if door == "asgi" else call_wsgi)(app, method, path, **kwargs)
