"""Tunnels through the listener: CONNECT to a raw echo server, and a WebSocket-style upgrade through the engine.

No websocket library is installed, so the upgrade's upstream is a raw
socket server that checks the handshake headers, answers 101 and echoes.
Upgrades run with httpx's transport and with the sidecar's pooled one.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

import meshlib
from meshlib._frontdoors.sidecar_listeners import connect_policy, outbound_handler
from meshlib._sidecar.server import HttpServer
from meshlib._transport import AsyncHTTP1Transport
from tests.conftest import MakeMesh, raw_server, read_request_head
from tests.sidecar.conftest import exchange, parse_responses, serving

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A TCP echo server in the test's loop; at the client's end of stream it sends ``[eof]`` and closes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write(b"[eof]")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def tunnelling_proxy(mesh: meshlib.Mesh) -> AsyncIterator[HttpServer]:
    policy = connect_policy(mesh)
    async with (
        httpx.AsyncHTTPTransport() as sender,
        serving(outbound_handler(mesh, sender), connect_tunnel=policy) as server,
    ):
        yield server


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


# --- CONNECT ---------------------------------------------------------------------------------------------------------


async def test_connect_tunnels_bytes_both_ways_and_passes_half_close_on(make_mesh: MakeMesh) -> None:
    mesh = make_mesh({"outbound_policy": "allow_any", "allow_empty": True})
    async with echo_server() as port, tunnelling_proxy(mesh) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.address)
        target = b"127.0.0.1:%d" % port
        # bytes right behind the CONNECT head (a TLS ClientHello, say) travel too
        writer.write(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\nearly")
        assert await read_head(reader) == b"HTTP/1.1 200 Connection established\r\n\r\n"
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"early"
        for i in range(3):
            message = b"message %d" % i
            writer.write(message)
            assert await asyncio.wait_for(reader.readexactly(len(message)), 5) == message
        assert proxy.in_flight == 1
        writer.write_eof()  # half-close: the echo server sees its end of stream and still answers
        assert await asyncio.wait_for(reader.read(), 5) == b"[eof]"
        writer.close()
        await writer.wait_closed()
        for _ in range(500):
            if proxy.connections == 0 and proxy.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert (proxy.connections, proxy.in_flight) == (0, 0)


async def test_connect_carries_a_large_transfer(make_mesh: MakeMesh) -> None:
    mesh = make_mesh({"allow_empty": True})
    payload = bytes(range(256)) * 16 * 1024  # 4 MiB, echoed back while it is still being sent
    async with echo_server() as port, tunnelling_proxy(mesh) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.address)
        writer.write(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (port, port))
        await read_head(reader)

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sending = asyncio.create_task(send())
        received = await asyncio.wait_for(reader.read(), 30)
        await sending
        writer.close()
        await writer.wait_closed()
    assert received == payload + b"[eof]"


async def test_connect_is_refused_under_registry_only(make_mesh: MakeMesh) -> None:
    mesh = make_mesh({"outbound_policy": "registry_only", "allow_empty": True})
    async with echo_server() as port, tunnelling_proxy(mesh) as proxy:
        got = await exchange(proxy, b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\nhello" % (port, port))
    [response] = parse_responses(got.data)
    assert (response.status, response.headers["x-meshlib-error"]) == (404, "route_not_found")
    assert response.headers["connection"] == "close"
    assert got.closed


async def test_connect_to_a_closed_port_is_a_connect_failure(make_mesh: MakeMesh, free_port: int) -> None:
    mesh = make_mesh({"allow_empty": True})
    async with tunnelling_proxy(mesh) as proxy:
        got = await exchange(proxy, b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n" % free_port)
    [response] = parse_responses(got.data)
    assert (response.status, response.headers["x-meshlib-error"]) == (503, "upstream_connect_failure")
    assert got.closed


async def test_connect_without_a_policy_is_not_served() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("CONNECT never reaches the handler")

    async with serving(handler) as server:
        got = await exchange(server, b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: x\r\n\r\n")
    [response] = parse_responses(got.data)
    assert response.status == 405
    assert got.closed


# --- Upgrade ---------------------------------------------------------------------------------------------------------

HANDSHAKE = (
    b"GET http://ws/chat HTTP/1.1\r\nHost: ws\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def websocket_like(
    heads: list[bytes], *, accept: bool = True, on_eof: bytes = b""
) -> Callable[[socket.socket, threading.Event], None]:
    """A raw upstream: answers an upgrade with 101 (plus a greeting in the same packet) and echoes; or refuses.

    At the client's end of stream it sends ``on_eof`` (if any) before closing.
    """

    def serve(conn: socket.socket, stop: threading.Event) -> None:
        head = read_request_head(conn)
        heads.append(head)
        if not accept:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno")
            return
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\ngreeting"
        )
        conn.settimeout(0.1)
        while not stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                if on_eof:
                    conn.sendall(on_eof)
                return
            conn.sendall(data)

    return serve


@pytest.fixture(params=["httpx", "pooled"])
def make_sender(request: pytest.FixtureRequest) -> Callable[[], httpx.AsyncBaseTransport]:
    return httpx.AsyncHTTPTransport if request.param == "httpx" else AsyncHTTP1Transport


async def test_a_websocket_upgrade_goes_through_the_engine_and_tunnels(
    make_mesh: MakeMesh, make_sender: Callable[[], httpx.AsyncBaseTransport]
) -> None:
    heads: list[bytes] = []
    with raw_server(websocket_like(heads)) as upstream:
        mesh = make_mesh({"outbound_policy": "registry_only", "clusters": {"ws": {"endpoints": [upstream.url]}}})
        async with make_sender() as sender, serving(outbound_handler(mesh, sender)) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.address)
            writer.write(HANDSHAKE)
            head = await read_head(reader)
            assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
            assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
            assert b"upgrade: websocket" in head.lower()
            assert await asyncio.wait_for(reader.readexactly(8), 5) == b"greeting"
            for frame in (b"\x81\x05hello", b"\x81\x05world", b"x" * 100_000):
                writer.write(frame)
                assert await asyncio.wait_for(reader.readexactly(len(frame)), 5) == frame
            writer.close()
            await writer.wait_closed()
            for _ in range(500):
                if proxy.in_flight == 0:
                    break
                await asyncio.sleep(0.01)
            assert proxy.in_flight == 0
    [forwarded] = heads
    lower = forwarded.lower()
    assert lower.startswith(b"get /chat http/1.1\r\n")
    assert b"upgrade: websocket" in lower
    assert b"connection: upgrade" in lower
    assert b"sec-websocket-key: dghlihnhbxbszsbub25jzq==" in lower


async def test_the_clients_half_close_reaches_the_upgraded_upstream(make_mesh: MakeMesh) -> None:
    """With the sidecar's pooled client the tunnel passes a half-close on, as CONNECT tunnels do."""
    with raw_server(websocket_like([], on_eof=b"[eof]")) as upstream:
        mesh = make_mesh({"clusters": {"ws": {"endpoints": [upstream.url]}}})
        async with AsyncHTTP1Transport() as sender, serving(outbound_handler(mesh, sender)) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.address)
            writer.write(HANDSHAKE)
            await read_head(reader)
            assert await asyncio.wait_for(reader.readexactly(8), 5) == b"greeting"
            writer.write(b"\x81\x03bye")
            assert await asyncio.wait_for(reader.readexactly(5), 5) == b"\x81\x03bye"
            writer.write_eof()  # the upstream sees the end of stream and still answers
            assert await asyncio.wait_for(reader.read(), 5) == b"[eof]"
            writer.close()
            await writer.wait_closed()


async def test_the_upstream_closing_ends_the_tunnel(make_mesh: MakeMesh) -> None:
    def greet_and_close(conn: socket.socket, stop: threading.Event) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nbye")

    with raw_server(greet_and_close) as upstream:
        mesh = make_mesh({"clusters": {"ws": {"endpoints": [upstream.url]}}})
        async with httpx.AsyncHTTPTransport() as sender, serving(outbound_handler(mesh, sender)) as proxy:
            got = await exchange(proxy, HANDSHAKE)
    assert got.data.startswith(b"HTTP/1.1 101 ")
    assert got.data.endswith(b"\r\n\r\nbye")
    assert got.closed


async def test_a_refused_upgrade_is_answered_and_the_connection_closed(make_mesh: MakeMesh) -> None:
    heads: list[bytes] = []
    with raw_server(websocket_like(heads, accept=False)) as upstream:
        mesh = make_mesh({"clusters": {"ws": {"endpoints": [upstream.url]}}})
        async with httpx.AsyncHTTPTransport() as sender, serving(outbound_handler(mesh, sender)) as proxy:
            got = await exchange(proxy, HANDSHAKE + b"\x81\x05early")  # frames sent too soon are never parsed
    [response] = parse_responses(got.data)
    assert (response.status, response.body) == (400, b"no")
    assert response.headers["connection"] == "close"
    assert got.closed
    assert len(heads) == 1
