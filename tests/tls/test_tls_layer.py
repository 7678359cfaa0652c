"""meshlib._transport.tls.TlsLayer: TLS over a TCP transport with memory BIOs, on real loopback sockets.

Both ends are checked against the standard library's own TLS (``ssl`` sockets
in a thread, or asyncio's streams) as well as against each other, on asyncio
and on uvloop: the bytes arrive whole and in order whatever the record and
segment boundaries, a refused certificate fails the handshake with its
``ssl`` error and leaves nothing open, and the ends of a connection
(``close_notify``, a bare TCP end, an abort, a timeout) reach the protocol
above as uvloop's own TLS reports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from meshlib._tls.identity import peer_spiffe_id
from meshlib._transport import AsyncHTTP1Transport
from meshlib._transport.tls import TlsLayer, open_tls, serve_tls
from tests.tls.pki import Pki, Workload
from tests.tls.tls_server import tls_server

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[pytest.param(False, id="asyncio"), pytest.param(True, id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": request.param})


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A non-blocking listening socket on a free loopback port, closed after the test."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.setblocking(False)
        yield sock


def _workload(pki: Pki, service: str) -> Workload:
    folder = pki.root / service
    return Workload(service, folder / f"{service}.pem", folder / f"{service}-key.pem", pki.ca_file)


def bio_handshake(raw: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
    """A handshake of an SSL object on memory BIOs over a blocking socket, its last flight sent."""
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            incoming.write(raw.recv(65536))
    raw.sendall(outgoing.read())


def server_ctx(pki: Pki, *, client_ca: Pki | None = None) -> ssl.SSLContext:
    reviews = _workload(pki, "reviews")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(reviews.cert, reviews.key)
    context.load_verify_locations((client_ca or pki).ca_file)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_ctx(pki: Pki, *, trust: Pki | None = None, cert_of: Pki | None = None) -> ssl.SSLContext:
    frontend = _workload(cert_of or pki, "frontend")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # SPIFFE certificates name a URI, not a host; the CA check stays
    context.load_verify_locations((trust or pki).ca_file)
    context.load_cert_chain(frontend.cert, frontend.key)
    return context


class Recorder(asyncio.Protocol):
    """The protocol above: records what TLS delivers, answers ``eof_received`` as told."""

    def __init__(self, keep_open_on_eof: bool = False) -> None:
        self.transport: Any = None
        self.data = bytearray()
        self.events: list[str] = []
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.keep_open_on_eof = keep_open_on_eof
        self.got = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got.set()

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return self.keep_open_on_eof

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")

    async def until(self, size: int) -> bytes:
        async with asyncio.timeout(5.0):
            while len(self.data) < size:
                self.got.clear()
                await self.got.wait()
        return bytes(self.data)


@contextmanager
def stdlib_tls_server(
    context: ssl.SSLContext, handle: Any
) -> Iterator[tuple[int, list[BaseException], threading.Event]]:
    """A blocking ``ssl`` server in a thread for one connection: ``handle(tls_socket)``; the event is set after."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5.0)
    errors: list[BaseException] = []
    finished = threading.Event()

    def run() -> None:
        try:
            raw, _ = listener.accept()
        except OSError:
            return
        raw.settimeout(5.0)
        try:
            with context.wrap_socket(raw, server_side=True) as tls:
                handle(tls)
        except BaseException as exc:  # the test looks at it
            errors.append(exc)
        finally:
            raw.close()
            finished.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], errors, finished
    finally:
        listener.close()
        thread.join(5.0)


async def connect(port: int, context: ssl.SSLContext, app: asyncio.Protocol) -> TlsLayer:
    loop = asyncio.get_running_loop()
    return await open_tls(lambda factory: loop.create_connection(factory, "127.0.0.1", port), app, context, "reviews")


def echo_until_close(tls: ssl.SSLSocket) -> None:
    while data := tls.recv(65536):
        tls.sendall(data)


# -- the bytes -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes", [[1], [5, 16384, 16385, 3], [1024 * 1024], [7] * 200], ids=["1B", "edges", "1MiB", "many"]
)
async def test_client_bytes_arrive_whole_and_in_order(pki: Pki, sizes: list[int]) -> None:
    payload = b"".join(bytes([i % 251]) * n for i, n in enumerate(sizes))
    with stdlib_tls_server(server_ctx(pki), echo_until_close) as (port, errors, _):
        app = Recorder()
        layer = await connect(port, client_ctx(pki), app)
        assert app.events == ["made"]
        assert app.transport is layer
        for i, n in enumerate(sizes):
            layer.write(bytes([i % 251]) * n)
        assert await app.until(len(payload)) == payload
        layer.close()
        assert await asyncio.wait_for(app.lost, 5) is None
    assert not errors


async def test_server_reads_records_split_across_segments(listener: socket.socket, pki: Pki) -> None:
    """A client that sends its records a few bytes at a time: the layer waits for whole records."""
    loop = asyncio.get_running_loop()
    app = Recorder()
    served: asyncio.Future[TlsLayer] = loop.create_future()

    async def accept(sock: socket.socket) -> None:
        served.set_result(await serve_tls(loop, sock, app, server_ctx(pki), 5.0))

    port = listener.getsockname()[1]

    def client() -> None:
        context = client_ctx(pki)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="reviews")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            bio_handshake(raw, tls, incoming, outgoing)
            tls.write(b"hello, " * 1000)
            tls.write(b"world")
            wire = outgoing.read()
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(0, len(wire), 7):  # 7-byte segments, with pauses: the records arrive in pieces
                raw.sendall(wire[i : i + 7])
                if i % 700 == 0:
                    time.sleep(0.002)
            with contextlib.suppress(OSError):
                raw.recv(1)  # until the server ends the connection

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    conn, _ = await loop.sock_accept(listener)
    await accept(conn)
    layer = await served
    expected = b"hello, " * 1000 + b"world"
    assert await app.until(len(expected)) == expected
    layer.abort()
    await asyncio.wait_for(app.lost, 5)
    await asyncio.to_thread(thread.join, 5)


async def test_both_ends_are_tls_layers(listener: socket.socket, pki: Pki) -> None:
    loop = asyncio.get_running_loop()
    server_app = Recorder()
    port = listener.getsockname()[1]
    client_app = Recorder()
    accepted = loop.create_task(loop.sock_accept(listener))
    client_task = loop.create_task(connect(port, client_ctx(pki), client_app))
    conn, _ = await accepted
    server = await serve_tls(loop, conn, server_app, server_ctx(pki), 5.0)
    client = await client_task
    client.write(b"ping" * 10000)
    assert await server_app.until(40000) == b"ping" * 10000
    server.write(b"pong")
    assert await client_app.until(4) == b"pong"
    # The client's certificate, as the server saw it: the one the client presented.
    assert ("URI", "spiffe://example.org/ns/default/sa/frontend") in server.get_extra_info("peercert")["subjectAltName"]
    assert isinstance(server.get_extra_info("ssl_object"), ssl.SSLObject)
    assert server.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert client.get_extra_info("cipher") is not None
    assert client.get_extra_info("peername")[1] == port
    assert client.get_extra_info("sslcontext") is not None
    assert client.get_extra_info("nothing", "default") == "default"
    # close_notify is the peer's end of stream (eof_received), then both ends close.
    client.close()
    assert await asyncio.wait_for(server_app.lost, 5) is None
    assert server_app.events == ["made", "eof", "lost"]
    assert await asyncio.wait_for(client_app.lost, 5) is None
    assert "eof" not in client_app.events or client_app.events[-1] == "lost"


# -- ends of a connection --------------------------------------------------------------------------------------------


async def test_a_tcp_end_without_close_notify_is_a_lost_connection(pki: Pki) -> None:
    """A truncation looks like this: never reported as the peer's end of stream."""

    def ragged(tls: ssl.SSLSocket) -> None:
        tls.recv(1)
        tls.sendall(b"partial")
        socket.socket(fileno=tls.detach()).close()  # the TCP connection, closed with no close_notify

    with stdlib_tls_server(server_ctx(pki), ragged) as (port, errors, _):
        app = Recorder()
        layer = await connect(port, client_ctx(pki), app)
        layer.write(b"x")
        assert await asyncio.wait_for(app.lost, 5) is None
        assert app.data == b"partial"
        assert app.events == ["made", "lost"]
    assert not errors


async def test_close_notify_reaches_eof_received(pki: Pki) -> None:
    def polite(tls: ssl.SSLSocket) -> None:
        tls.recv(1)
        tls.sendall(b"bye")
        tls.unwrap()

    with stdlib_tls_server(server_ctx(pki), polite) as (port, errors, _):
        app = Recorder()
        layer = await connect(port, client_ctx(pki), app)
        layer.write(b"x")
        assert await asyncio.wait_for(app.lost, 5) is None
        assert app.data == b"bye"
        assert app.events == ["made", "eof", "lost"]
    assert not errors


async def test_the_peer_s_end_is_told_once(pki: Pki) -> None:
    """A protocol that stays open after ``eof_received`` hears of the end once, whatever bytes follow it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]
    sent = threading.Event()

    def polite_then_junk() -> None:
        # A server on memory BIOs: it can send its close_notify without waiting for ours, then more bytes.
        raw, _ = listener.accept()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = server_ctx(pki).wrap_bio(incoming, outgoing, server_side=True)
        with raw:
            raw.settimeout(5)
            bio_handshake(raw, tls, incoming, outgoing)
            tls.write(b"bye")
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.unwrap()  # close_notify, not waiting for the answer
            raw.sendall(outgoing.read())
            time.sleep(0.05)  # a read of its own: the layer has taken the close_notify when the junk comes
            raw.sendall(b"junk after close_notify")
            sent.set()
            with contextlib.suppress(OSError):
                raw.recv(65536)

    thread = threading.Thread(target=polite_then_junk, daemon=True)
    thread.start()
    try:
        app = Recorder(keep_open_on_eof=True)
        layer = await connect(port, client_ctx(pki), app)
        await app.until(3)
        assert await asyncio.to_thread(sent.wait, 5)
        await asyncio.sleep(0.05)  # loopback delivers the junk at once; the loop reads it
        assert app.events == ["made", "eof"]
        layer.close()
        assert await asyncio.wait_for(app.lost, 5) is None
        assert app.events == ["made", "eof", "lost"]
        assert app.data == b"bye"
        await asyncio.to_thread(thread.join, 5)
    finally:
        listener.close()


async def test_writes_after_close_are_dropped_and_there_is_no_half_close(pki: Pki) -> None:
    received: list[bytes] = []

    def collect(tls: ssl.SSLSocket) -> None:
        while True:
            try:
                data = tls.recv(65536)
            except ssl.SSLError:
                break
            if not data:
                break
            received.append(data)

    with stdlib_tls_server(server_ctx(pki), collect) as (port, _, _):
        app = Recorder()
        layer = await connect(port, client_ctx(pki), app)
        assert not layer.can_write_eof()
        with pytest.raises(NotImplementedError):
            layer.write_eof()
        layer.writelines([b"a", b"b", b"c"])
        layer.write(b"")
        layer.close()
        assert layer.is_closing()
        layer.write(b"after close")
        await asyncio.wait_for(app.lost, 5)
    assert b"".join(received) == b"abc"


async def test_an_error_record_ends_the_connection_with_its_ssl_error(pki: Pki) -> None:
    """Bytes that are not TLS records after the handshake: the protocol above learns why it lost the connection."""

    def garble(tls: ssl.SSLSocket) -> None:
        tls.recv(1)
        with socket.socket(fileno=tls.detach()) as raw:
            raw.sendall(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # an application-data record that cannot decrypt
            with contextlib.suppress(OSError):
                raw.recv(1)  # until the client ends the connection

    with stdlib_tls_server(server_ctx(pki), garble) as (port, _, _):
        app = Recorder()
        layer = await connect(port, client_ctx(pki), app)
        layer.write(b"x")
        lost = await asyncio.wait_for(app.lost, 5)
    assert isinstance(lost, ssl.SSLError)
    assert app.data == b""


async def test_flow_control_reaches_the_protocol_above(pki: Pki) -> None:
    stop = threading.Event()

    def never_read(tls: ssl.SSLSocket) -> None:
        stop.wait(5)

    with stdlib_tls_server(server_ctx(pki), never_read) as (port, _, _):
        app = Recorder()
        layer = await connect(port, client_ctx(pki), app)
        layer.set_write_buffer_limits(high=64 * 1024)
        for _ in range(200):
            layer.write(b"x" * 65536)
            if "pause_writing" in app.events:
                break
        assert "pause_writing" in app.events
        assert layer.get_write_buffer_size() > 0
        stop.set()
        layer.abort()
        await asyncio.wait_for(app.lost, 5)


async def test_reading_pauses_and_resumes(pki: Pki) -> None:
    def send_twice(tls: ssl.SSLSocket) -> None:
        tls.recv(1)
        tls.sendall(b"one")
        tls.recv(1)
        tls.sendall(b"two")
        tls.recv(1)

    with stdlib_tls_server(server_ctx(pki), send_twice) as (port, _, _):
        app = Recorder()
        layer = await connect(port, client_ctx(pki), app)
        layer.write(b"1")
        assert await app.until(3) == b"one"
        layer.pause_reading()
        assert not layer.is_reading()
        layer.write(b"2")
        await asyncio.sleep(0.1)
        assert app.data == b"one"
        layer.resume_reading()
        assert layer.is_reading()
        assert await app.until(6) == b"onetwo"
        layer.abort()
        await asyncio.wait_for(app.lost, 5)


# -- the handshake ---------------------------------------------------------------------------------------------------


async def test_a_server_of_another_ca_fails_the_handshake(pki: Pki, other_pki: Pki) -> None:
    def handshake_only(tls: ssl.SSLSocket) -> None:
        tls.recv(1)

    with stdlib_tls_server(server_ctx(pki), handshake_only) as (port, errors, finished):
        app = Recorder()
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            await connect(port, client_ctx(pki, trust=other_pki), app)
        assert await asyncio.to_thread(finished.wait, 5)  # the server's end of it ended too
    assert errors  # the server's handshake failed: the client went away
    assert app.events == []  # the protocol above never saw the connection


async def test_a_client_of_another_ca_is_refused_by_the_server(
    listener: socket.socket, pki: Pki, other_pki: Pki
) -> None:
    loop = asyncio.get_running_loop()
    port = listener.getsockname()[1]
    app = Recorder()

    def client() -> str:
        context = client_ctx(pki, cert_of=other_pki)
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname="reviews") as tls,
            ):
                tls.sendall(b"x")
                return "ended" if tls.recv(1) == b"" else "answered"
        except (OSError, ssl.SSLError):
            return "ended"

    outcome = loop.run_in_executor(None, client)
    conn, _ = await loop.sock_accept(listener)
    with pytest.raises(ssl.SSLError, match=r"certificate verify failed|unknown ca"):
        await serve_tls(loop, conn, app, server_ctx(pki), 5.0)
    assert await asyncio.wait_for(outcome, 5) == "ended"  # the client's connection ended too
    assert app.events == []


async def test_a_peer_that_goes_away_mid_handshake(listener: socket.socket, pki: Pki) -> None:
    loop = asyncio.get_running_loop()
    port = listener.getsockname()[1]
    raw = socket.create_connection(("127.0.0.1", port))
    conn, _ = await loop.sock_accept(listener)
    raw.sendall(b"\x16\x03\x01\x00")  # the start of a ClientHello, then the end
    raw.close()
    with pytest.raises((ConnectionError, ssl.SSLError)):
        await serve_tls(loop, conn, Recorder(), server_ctx(pki), 5.0)


async def test_a_handshake_that_never_ends_times_out(listener: socket.socket, pki: Pki) -> None:
    loop = asyncio.get_running_loop()
    port = listener.getsockname()[1]
    raw = socket.create_connection(("127.0.0.1", port))  # says nothing
    try:
        conn, _ = await loop.sock_accept(listener)
        with pytest.raises(TimeoutError, match=r"SSL handshake is taking longer than 0\.2 seconds"):
            await serve_tls(loop, conn, Recorder(), server_ctx(pki), 0.2)
        raw.settimeout(5)
        assert await asyncio.to_thread(raw.recv, 1) == b""  # the server's end closed it
    finally:
        raw.close()


async def test_a_cancelled_handshake_leaves_nothing_open(listener: socket.socket, pki: Pki) -> None:
    loop = asyncio.get_running_loop()
    port = listener.getsockname()[1]
    app = Recorder()
    task = loop.create_task(connect(port, client_ctx(pki), app))  # the listener never answers the handshake
    conn, _ = await loop.sock_accept(listener)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    conn.settimeout(5)
    conn.setblocking(True)
    hello = conn.recv(65536)
    assert hello[:1] == b"\x16"  # the client's hello came, then the end of the connection
    while conn.recv(65536):
        pass
    conn.close()
    assert app.events == []


# -- sessions --------------------------------------------------------------------------------------------------------


async def test_new_connections_resume_the_last_session(pki: Pki) -> None:
    """A second connection to an origin resumes the first one's TLS session (no certificates sent again), and
    the peer check still sees the server's certificate; another SNI gets a full handshake."""
    resumed: list[bool] = []
    peers: list[str | None] = []

    def verify_peer(ssl_object: ssl.SSLObject) -> None:
        resumed.append(ssl_object.session_reused)
        peers.append(peer_spiffe_id(ssl_object))

    with tls_server(server_ctx(pki)) as server:
        transport = AsyncHTTP1Transport(ssl_context=client_ctx(pki), verify_peer=verify_peer)
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):  # each answer closes its connection: three connections
                response = await client.get(server.url, headers={"connection": "close"})
                assert response.status_code == 200
            response = await client.get(server.url, headers={"connection": "close"}, extensions={"sni_hostname": "x"})
            assert response.status_code == 200
    assert resumed == [False, True, True, False]
    assert peers == ["spiffe://example.org/ns/default/sa/reviews"] * 4
    assert [c.peer_id for c in server.connections] == ["spiffe://example.org/ns/default/sa/frontend"] * 4
