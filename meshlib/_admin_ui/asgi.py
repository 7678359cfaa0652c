"""``Mesh.admin_asgi_app()``: the admin page and its JSON state as a pure ASGI app, to mount in the app's server.

Read-only: it serves the page, its assets and ``ui/state``, nothing that reloads or drains.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from meshlib._admin_ui.state import PAGE_HEADERS, STATE_PATH, add_error_stats, asset, ui_state
from meshlib._frontdoors.asgi import serve_lifespan

if TYPE_CHECKING:
    from meshlib._mesh import Mesh

__all__ = ["AdminApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class AdminApp:
    """Serves ``/`` (the page), ``/ui/app.js``, ``/ui/style.css`` and ``/ui/state`` (JSON), relative to where it
    is mounted."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh

    def state(self) -> bytes:
        mesh = self.mesh
        return json.dumps(ui_state(mesh, add_error_stats(mesh.stats(), mesh))).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await serve_lifespan(receive, send)
            return
        if kind != "http":
            await send({"type": "websocket.close", "code": 1000})
            return
        root = scope.get("root_path", "")
        path = scope["path"]
        # Servers and routers differ: some strip the mount point from path, some leave it (and set root_path).
        if root and path.startswith(root):
            path = path[len(root) :]
        if path == "":
            # Mounted at /mesh and asked for /mesh: the page's relative URLs need the trailing slash.
            await _respond(send, 307, b"", [(b"location", (root + "/").encode("latin-1"))])
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")], scope=scope)
            return
        if path == STATE_PATH:
            # Off the event loop: a breaker with Redis storage reads it over the network.
            body = await anyio.to_thread.run_sync(self.state)
            headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
            await _respond(send, 200, body, headers, scope=scope)
            return
        found = asset(path)
        if found is None:
            await _respond(send, 404, b"not found\n", [(b"content-type", b"text/plain; charset=utf-8")], scope=scope)
            return
        body, content_type = found
        headers = [(b"content-type", content_type.encode())]
        headers.extend((k.encode(), v.encode()) for k, v in PAGE_HEADERS.items())
        await _respond(send, 200, body, headers, scope=scope)


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]], *, scope: Scope | None = None
) -> None:
    head = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": b"" if scope is not None and scope["method"] == "HEAD" else body})
