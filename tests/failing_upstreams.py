"""More ways for a raw upstream (tests/conftest.py ``raw_server``) to fail, and an endpoint that never accepts.

Shared by the integration and parity suites, which check that each failure
reads the same in sync, async and through the sidecar.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.conftest import read_request_head

_PARTIAL_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n0123456789"


def _reset(conn: socket.socket) -> None:
    # SO_LINGER with a zero timeout: close() sends RST instead of FIN, so the peer sees ECONNRESET.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def reset_before_response(conn: socket.socket, stop: threading.Event) -> None:
    """Read the request, then reset the connection without a byte of response."""
    read_request_head(conn)
    _reset(conn)


def reset_mid_body(conn: socket.socket, stop: threading.Event) -> None:
    """Promise 1000 bytes of body, send 10, then reset the connection once the client is reading."""
    read_request_head(conn)
    conn.sendall(_PARTIAL_HEAD)
    time.sleep(0.02)  # the client reads the head first (a reset before that reads the same: "reset by peer")
    _reset(conn)


def stall_mid_body(conn: socket.socket, stop: threading.Event) -> None:
    """Promise 1000 bytes of body, send 10, then send nothing more (until the server stops)."""
    read_request_head(conn)
    conn.sendall(_PARTIAL_HEAD)
    stop.wait(10)


@contextmanager
def unaccepting_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a listener whose accept queue is full: connecting to it hangs.

    Linux drops the SYN of a connection that would overflow the queue, so the
    client's connect neither succeeds nor fails until its own timeout.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(8):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.05)  # let the fillers' handshakes fill the queue
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
