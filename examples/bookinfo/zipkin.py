"""A tiny Zipkin-compatible collector: keeps the spans POSTed to ``/api/v2/spans`` (Zipkin v2 JSON) in memory.

What the demo needs of Zipkin and no more: the meshes export to it as they would to a real Zipkin, and the
demo reads the spans back to draw a trace.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = ["Collector", "Span"]

SPANS_PATH = "/api/v2/spans"
_MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Span:
    """One Zipkin v2 span, as exported."""

    trace_id: str
    id: str
    parent_id: str | None
    name: str
    kind: str | None  # CLIENT, SERVER, PRODUCER, CONSUMER; None for a local span
    service: str
    timestamp: int  # µs since the epoch
    duration: int  # µs
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Span:
        endpoint = data.get("localEndpoint") or {}
        return cls(
            trace_id=str(data["traceId"]),
            id=str(data["id"]),
            parent_id=data.get("parentId"),
            name=str(data.get("name") or ""),
            kind=data.get("kind"),
            service=str(endpoint.get("serviceName") or "?"),
            timestamp=int(data.get("timestamp") or 0),
            duration=int(data.get("duration") or 0),
            tags={str(k): str(v) for k, v in (data.get("tags") or {}).items()},
        )


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # HTTP/1.0: one request per connection, so no handler thread outlives the collector waiting on keep-alive.
    protocol_version = "HTTP/1.0"

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != SPANS_PATH:
            self._answer(404, b"not found")
            return
        length = int(self.headers.get("content-length") or 0)
        if not 0 <= length <= _MAX_BODY:
            self._answer(413, b"too large")
            return
        body = self.rfile.read(length)
        try:
            if (self.headers.get("content-encoding") or "").lower() == "gzip":
                body = gzip.decompress(body)
            spans = [Span.from_json(item) for item in json.loads(body)]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.server.rejected += 1
            self._answer(400, f"not Zipkin v2 JSON: {exc}".encode())
            return
        self.server.add(spans)
        self._answer(202, b"")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the demo prints what it collected


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handlers

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.spans: list[Span] = []
        self.rejected = 0
        self.received = threading.Condition(self.lock)

    def add(self, spans: list[Span]) -> None:
        with self.received:
            self.spans.extend(spans)
            self.received.notify_all()


class Collector:
    """The collector on a free loopback port, in a background thread; a context manager that stops it."""

    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, name="bookinfo-zipkin", daemon=True)

    @property
    def endpoint(self) -> str:
        """Where to send spans: tracing.zipkin.endpoint."""
        return f"http://127.0.0.1:{self._server.server_address[1]}{SPANS_PATH}"

    @property
    def rejected(self) -> int:
        """POSTs that were not Zipkin v2 JSON."""
        return self._server.rejected

    def spans(self) -> list[Span]:
        with self._server.lock:
            return list(self._server.spans)

    def wait(self, enough: Callable[[list[Span]], bool], timeout: float) -> list[Span]:
        """The spans so far, once ``enough(spans)`` holds or ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        with self._server.received:
            while not enough(list(self._server.spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._server.received.wait(left)
            return list(self._server.spans)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5.0)
        self._server.server_close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
