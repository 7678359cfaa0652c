"""Tiny HTTP upstreams on loopback addresses of one port: each answers with the address it serves on.

DNS and registry tests need several instances of "one service" at different
addresses, as a fleet has: 127.0.0.1, 127.0.0.2, ... share a port here.
``/slow?s=0.5`` answers after a delay, to show a request in flight finishing
on an endpoint that has left.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body go out in two writes: without TCP_NODELAY, Nagle and the client's delayed ACK hold the
    # body ~40 ms on every keep-alive request.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/slow":
            time.sleep(float(parse_qs(url.query).get("s", ["0.5"])[0]))
        body = self.server.server_address[0].encode()  # type: ignore[index]
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _shared_port(hosts: Sequence[str]) -> tuple[int, list[socket.socket]]:
    """A port free on every host, with a socket bound on each (handed to the servers)."""
    for _ in range(50):
        first = socket.create_server((hosts[0], 0))
        port = first.getsockname()[1]
        taken = [first]
        try:
            taken += [socket.create_server((host, port)) for host in hosts[1:]]
        except OSError:
            for sock in taken:
                sock.close()
            continue
        return port, taken
    raise RuntimeError(f"no port free on all of {hosts}")


@contextmanager
def upstreams(hosts: Sequence[str]) -> Iterator[int]:
    """HTTP servers on ``hosts`` (loopback addresses), one shared port; yields the port."""
    port, sockets = _shared_port(hosts)
    servers = []
    for sock in sockets:
        server = ThreadingHTTPServer(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
    try:
        yield port
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
