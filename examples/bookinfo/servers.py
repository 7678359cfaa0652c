"""The bookinfo services as real HTTP servers on loopback, each in a thread: uvicorn for ASGI, werkzeug for WSGI.

Each server takes its port when it is made and gets its app later, so that the configs that name the port
(a caller's cluster, a sidecar's ``inbound.app``) can be written before the app that needs them is built.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import uvicorn
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

__all__ = ["AsgiServer", "ServerError", "WsgiServer"]

START_TIMEOUT = 15.0  # seconds
STOP_TIMEOUT = 5.0


class ServerError(RuntimeError):
    """A server did not start."""


class AsgiServer:
    """uvicorn serving an ASGI app (lifespan on) on a socket bound at once, in a thread of its own."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, app: Any) -> None:
        # log_config=None: uvicorn leaves the process's logging alone; only warnings and errors show.
        config = uvicorn.Config(
            app, lifespan="on", log_config=None, log_level="warning", access_log=False, timeout_graceful_shutdown=2
        )
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self._sock]}, name=f"bookinfo-{self.name}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServerError(f"{self.name}: uvicorn did not start (its lifespan failed, or it took too long)")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(STOP_TIMEOUT + 2)
        self._sock.close()


class _QuietHandler(WSGIRequestHandler):
    """Logs nothing per request (the demo prints its own summary), and lets the server cut its connection."""

    server: _WsgiServer

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class _WsgiServer(ThreadedWSGIServer):
    daemon_threads = False  # server_close() joins every request thread

    def __init__(self, app: Any) -> None:
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        super().__init__("127.0.0.1", 0, app, handler=_QuietHandler)


class _ClosedWhenSent:
    """An app's response iterable, closed as soon as its last chunk has been written.

    werkzeug's server calls ``close()`` only after draining the socket, and skips it when the client resets the
    connection meanwhile (as httpx does when it drops a response it did not read: a 503 about to be retried).
    PEP 3333 says to call it always: it is when ``meshlib.wsgi.MeshMiddleware`` sees the request end.
    """

    def __init__(self, body: Iterable[bytes]) -> None:
        self._body = body
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._body
        finally:  # exhausted (the server asks for more once it wrote the last chunk), failed or dropped
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close = getattr(self._body, "close", None)
            if close is not None:
                close()


def _closing(app: Any) -> Any:
    def closing_app(environ: Any, start_response: Any) -> _ClosedWhenSent:
        return _ClosedWhenSent(app(environ, start_response))

    return closing_app


def _not_started(environ: Any, start_response: Any) -> list[bytes]:
    start_response("503 Service Unavailable", [("content-type", "text/plain")])
    return [b"not started yet"]


class WsgiServer:
    """werkzeug's threaded server for a WSGI app (a thread per connection), bound at once, in a thread of its own."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._server = _WsgiServer(_not_started)
        self.port: int = self._server.socket.getsockname()[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, app: Any) -> None:
        self._server.app = _closing(app)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"bookinfo-{self.name}"
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(STOP_TIMEOUT)
        # Idle keep-alive connections would hold their threads in a read until their client closed them.
        with self._server.lock:
            for connection in self._server.connections:
                with contextlib.suppress(OSError):  # already closed by its client
                    connection.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
