"""Interrupting a sync try blocked in a socket read (what the sync hedge does when a hedged try wins)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpcore
import httpx
import pytest
import respx

from meshlib._engine.interrupt import (
    CURRENT,
    Interrupt,
    InterruptibleBackend,
    TryInterrupted,
    interruptible,
    make_interruptible,
)


@pytest.fixture
def pair() -> Iterator[tuple[httpcore.NetworkStream, socket.socket]]:
    """A client stream from InterruptibleBackend, connected to a server socket on loopback."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        stream = InterruptibleBackend(httpcore.SyncBackend()).connect_tcp("127.0.0.1", port, timeout=5)
        server, _ = listener.accept()
        try:
            yield stream, server
        finally:
            stream.close()
            server.close()


def test_reads_outside_an_interruptible_try_are_plain(pair: tuple[httpcore.NetworkStream, socket.socket]) -> None:
    stream, server = pair
    server.sendall(b"hello")
    assert stream.read(5, timeout=5) == b"hello"
    stream.write(b"back", timeout=5)
    assert server.recv(4) == b"back"


def test_a_read_blocked_in_recv_is_interrupted(pair: tuple[httpcore.NetworkStream, socket.socket]) -> None:
    stream, server = pair
    interrupt = Interrupt()
    threading.Timer(0.05, interrupt.interrupt).start()
    token = CURRENT.set(interrupt)
    try:
        started = time.monotonic()
        with pytest.raises(TryInterrupted):
            stream.read(1024, timeout=5)  # nothing is ever sent: only the interrupt ends this
        assert time.monotonic() - started < 2
    finally:
        CURRENT.reset(token)
    server.settimeout(2)
    assert server.recv(1) == b""  # the socket was shut down: the peer sees the hang-up


def test_a_try_interrupted_between_reads_raises_at_the_next(pair: tuple[httpcore.NetworkStream, socket.socket]) -> None:
    stream, server = pair
    interrupt = Interrupt()
    interrupt.interrupt()
    server.sendall(b"data waiting")
    token = CURRENT.set(interrupt)
    try:
        with pytest.raises(TryInterrupted):
            stream.read(1024, timeout=5)
        with pytest.raises(TryInterrupted):
            stream.write(b"x", timeout=5)
    finally:
        CURRENT.reset(token)


def test_interrupt_without_a_socket_only_sets_the_flag() -> None:
    interrupt = Interrupt()
    interrupt.interrupt()
    interrupt.interrupt()  # twice is fine
    assert interrupt.interrupted


def test_which_transports_are_made_interruptible() -> None:
    plain = httpx.HTTPTransport()
    make_interruptible(plain)
    make_interruptible(plain)  # idempotent: the backend is wrapped once
    assert interruptible(plain)
    assert isinstance(plain._pool._network_backend, InterruptibleBackend)
    assert not isinstance(plain._pool._network_backend._inner, InterruptibleBackend)

    # HTTP/2 multiplexes tries over one connection; a mock never blocks on a socket it could shut.
    http2 = httpx.HTTPTransport(http2=True)
    make_interruptible(http2)
    assert not interruptible(http2)
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    make_interruptible(mock)
    assert not interruptible(mock)
    assert not interruptible(None)


def test_respx_makes_a_transport_uninterruptible_while_it_mocks() -> None:
    transport = httpx.HTTPTransport()
    make_interruptible(transport)
    with respx.mock:
        assert not interruptible(transport)  # no socket under respx: hedges run tries on worker threads
    assert interruptible(transport)
