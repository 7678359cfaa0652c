"""More ways for a raw upstream (tests/conftest.py ``raw_server``) to fail, and an endpoint that never accepts.

Shared by the integration and parity suites, which check that each failure
reads the same in sync, async and through the sidecar.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.conftest import ConnectionHandler, read_request_head

_PARTIAL_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n0123456789"


def reset_on_close(conn: socket.socket) -> None:
    """Make closing ``conn`` reset it: with SO_LINGER 0 s, close() sends an RST, not a FIN (the peer: ECONNRESET)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def reset_before_response(conn: socket.socket, stop: threading.Event) -> None:
    """Read the request, then reset the connection without a byte of response."""
    read_request_head(conn)
    reset_on_close(conn)


def reset_mid_body(conn: socket.socket, stop: threading.Event) -> None:
    """Promise 1000 bytes of body, send 10, then reset the connection once the client is reading."""
    read_request_head(conn)
    conn.sendall(_PARTIAL_HEAD)
    time.sleep(0.02)  # the client reads the head first (a reset before that reads the same: "reset by peer")
    reset_on_close(conn)


def stall_mid_body(conn: socket.socket, stop: threading.Event) -> None:
    """Promise 1000 bytes of body, send 10, then send nothing more (until the server stops)."""
    read_request_head(conn)
    conn.sendall(_PARTIAL_HEAD)
    stop.wait(10)


def drip(conn: socket.socket, stop: threading.Event, *, every: float = 0.05, size: int = 50) -> None:
    """Answer 200 with a ``size``-byte body at once, then one byte of it every ``every`` seconds."""
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n" % size)
    for _ in range(size):
        if stop.wait(every):
            return
        conn.sendall(b"x")


def drip_then_stall(conn: socket.socket, stop: threading.Event) -> None:
    """Promise 1000 bytes, send one every 50 ms for 250 ms, then nothing more (until the server stops)."""
    read_request_head(conn)
    conn.sendall(_PARTIAL_HEAD)
    for _ in range(5):
        if stop.wait(0.05):
            return
        conn.sendall(b"x")
    stop.wait(10)


def drip_head(conn: socket.socket, stop: threading.Event) -> None:
    """Send a response head a header line every 50 ms, for 2 s: each read is quick, the head never ends in time."""
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for i in range(40):
        if stop.wait(0.05):
            return
        conn.sendall(b"x-slow-%d: 1\r\n" % i)


def answer_ok_keep_alive(conn: socket.socket, stop: threading.Event) -> None:
    """Answer every request on the connection ``200 ok``, keeping it open, until the client closes it."""
    while not stop.is_set() and read_request_head(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def first_connection_then(first: ConnectionHandler, then: ConnectionHandler) -> ConnectionHandler:
    """A handler that serves the first connection with ``first`` and every later one with ``then``."""
    served = itertools.count()

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        (first if next(served) == 0 else then)(conn, stop)

    return handle


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
