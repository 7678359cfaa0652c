"""Named HTTP upstreams on loopback for the xDS tests: each answers with its name and counts what it got.

``GET /status/503`` answers that status; ``/delay?s=0.5`` answers after a
delay; every answer echoes the request's headers back as JSON under
``headers`` and names the upstream in ``x-upstream``, so a test sees which
endpoint served, what the route's header edits did, and how many tries hit
each upstream (``hits``).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Upstream:
    name: str
    port: int
    hits: Counter[str] = field(default_factory=Counter)  # by path
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.hits.values())

    def reset(self) -> None:
        with self.lock:
            self.hits.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are two writes: don't let Nagle hold the body

    def _answer(self) -> None:
        upstream: Upstream = self.server.upstream  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        with upstream.lock:
            upstream.hits[url.path] += 1
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        status = 200
        if url.path.startswith("/status/"):
            status = int(url.path.rsplit("/", 1)[1])
        if url.path == "/delay":
            time.sleep(float(parse_qs(url.query).get("s", ["0.5"])[0]))
        body = json.dumps({"upstream": upstream.name, "path": self.path, "headers": dict(self.headers.items())})
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-upstream", upstream.name)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815 - http.server's names

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def upstream(name: str, host: str = "127.0.0.1") -> Iterator[Upstream]:
    """One named upstream on ``host`` and a free port."""
    server = ThreadingHTTPServer((host, 0), _Handler)
    server.daemon_threads = True
    up = Upstream(name, server.server_address[1])
    server.upstream = up  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield up
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def upstreams(*names: str) -> Iterator[dict[str, Upstream]]:
    """Several named upstreams, by name."""
    with ExitStack() as stack:
        yield {n: stack.enter_context(upstream(n)) for n in names}
