"""The mountable metrics apps: ``mesh.metrics_asgi_app()`` and ``mesh.metrics_wsgi_app()``.

Apart from :mod:`meshlib._observe.metrics` because that module is compiled with mypyc where a wheel is built
with a C compiler, and a compiled nested ``async def`` is a callable object that servers such as uvicorn do not
recognise as an ASGI 3 app.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from meshlib._frontdoors.asgi import serve_lifespan
from meshlib._observe.metrics import CONTENT_TYPE, scrape

if TYPE_CHECKING:
    from meshlib._frontdoors.asgi import ASGIApp, Receive, Scope, Send
    from meshlib._frontdoors.wsgi import StartResponse, WSGIApp, WSGIEnvironment
    from meshlib._mesh import Mesh

__all__ = ["asgi_app", "wsgi_app"]

_TEXT: Final = "text/plain; charset=utf-8"


def _answer(mesh: Mesh, method: str) -> tuple[int, str, bytes, list[tuple[str, str]]]:
    """(status, content type, body, extra headers) for one request to a metrics app."""
    if method not in ("GET", "HEAD"):
        return 405, _TEXT, b"method not allowed: GET or HEAD\n", [("allow", "GET, HEAD")]
    status, body = scrape(mesh)
    return status, CONTENT_TYPE if status == 200 else _TEXT, body, []


def asgi_app(mesh: Mesh) -> ASGIApp:
    """An ASGI app serving ``mesh``'s metrics page at every path (mount it where Prometheus scrapes)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # Mounted apps see none; run on its own (uvicorn), it starts and stops at once.
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"the metrics app serves HTTP only, not {scope['type']!r}")
        method = scope.get("method", "GET")
        status, content_type, body, extra = _answer(mesh, method)
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    return app


_REASONS: Final = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}


def wsgi_app(mesh: Mesh) -> WSGIApp:
    """A WSGI app serving ``mesh``'s metrics page at every path (mount it where Prometheus scrapes)."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        status, content_type, body, extra = _answer(mesh, method)
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra]
        start_response(f"{status} {_REASONS[status]}", headers)
        return iter([b"" if method == "HEAD" else body])

    return app
