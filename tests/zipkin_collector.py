"""A fake Zipkin collector for tests: a real HTTP server on 127.0.0.1 that keeps the v2 JSON spans POSTed to it.

``delay`` makes it slow (each POST waits that long before answering) and
``status`` makes it refuse (answer with that status), so tests can show that
a collector in trouble never slows or fails a request.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["SPANS_PATH", "ZipkinCollector", "running_collector"]

SPANS_PATH = "/api/v2/spans"
Span = dict[str, Any]


class ZipkinCollector:
    """The spans received so far, and how to wait for more."""

    def __init__(self, *, delay: float = 0.0, status: int = 202) -> None:
        self.delay = delay
        self.status = status
        self.spans: list[Span] = []
        self.posts = 0
        self.content_types: list[str] = []
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._serve, name="zipkin-collector", daemon=True)

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    @property
    def endpoint(self) -> str:
        """The URL to configure as ``tracing.zipkin.endpoint``."""
        return f"http://127.0.0.1:{self.port}{SPANS_PATH}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self._body()
                if collector.delay:
                    collector._stopping.wait(collector.delay)
                ok = self.path == SPANS_PATH and 200 <= collector.status < 300
                if ok:
                    spans = json.loads(body)
                    with collector._changed:
                        collector.spans.extend(spans)
                        collector.posts += 1
                        collector.content_types.append(self.headers.get("content-type", ""))
                        collector._changed.notify_all()
                self.send_response(collector.status if self.path == SPANS_PATH else 404)
                self.send_header("content-length", "0")
                self.end_headers()

            def _body(self) -> bytes:
                if "chunked" not in self.headers.get("transfer-encoding", "").lower():
                    return self.rfile.read(int(self.headers.get("content-length") or 0))
                # Envoy's Zipkin reporter sends its spans chunked: size line, data, CRLF, until a zero size.
                chunks = []
                for _ in range(100_000):
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers, if any
                            pass
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def _serve(self) -> None:
        self._server.serve_forever(poll_interval=0.02)  # stop() returns within one poll

    def wait_for(self, predicate: Callable[[list[Span]], bool], timeout: float = 10.0) -> list[Span]:
        """Wait until ``predicate(spans)`` holds (spans received so far); the spans, or AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.spans):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"the collector did not get the spans expected within {timeout}s: {self.spans}"
                    )
                self._changed.wait(remaining)
            return list(self.spans)

    def wait_for_count(self, count: int, timeout: float = 10.0) -> list[Span]:
        """Wait until at least ``count`` spans arrived."""
        return self.wait_for(lambda spans: len(spans) >= count, timeout)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()  # a slow POST stops waiting
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def running_collector(*, delay: float = 0.0, status: int = 202) -> Iterator[ZipkinCollector]:
    """A collector serving until the block ends."""
    collector = ZipkinCollector(delay=delay, status=status)
    collector.start()
    try:
        yield collector
    finally:
        collector.stop()
