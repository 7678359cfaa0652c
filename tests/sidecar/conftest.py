"""Listener test support: a server in the test's loop, raw socket exchanges, and a strict reader of responses."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx
import pytest

from meshlib._config.sidecar import SidecarLimitsConfig
from meshlib._sidecar.server import ConnectPolicy, Handler, HttpServer


def limits(**overrides: Any) -> SidecarLimitsConfig:
    """``SidecarLimitsConfig`` with durations given as strings, e.g. ``limits(header_timeout="200ms")``."""
    return SidecarLimitsConfig.model_validate(overrides)


@asynccontextmanager
async def serving(
    handler: Handler,
    *,
    limits: SidecarLimitsConfig | None = None,
    connect_tunnel: ConnectPolicy | None = None,
    name: str = "outbound",
) -> AsyncIterator[HttpServer]:
    """An :class:`HttpServer` on 127.0.0.1:0 in the running loop, closed on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = HttpServer(name, handler, limits or SidecarLimitsConfig(), connect_tunnel=connect_tunnel)
    await server.start(sock)
    try:
        yield server
    finally:
        await server.close()


def proxy_url(server: HttpServer) -> str:
    host, port = server.address
    return f"http://{host}:{port}"


@dataclass
class Exchange:
    """What a raw client got back: every byte, and whether the server closed (EOF) or reset the connection."""

    data: bytes
    closed: bool
    reset: bool = False


async def exchange(
    server: HttpServer, data: bytes | list[bytes], *, within: float = 5.0, pause: float = 0.0
) -> Exchange:
    """Send ``data`` (pieces with ``pause`` between them) on a new connection; read until the server closes
    (or ``within`` seconds pass)."""
    host, port = server.address
    reader, writer = await asyncio.open_connection(host, port)
    received = bytearray()
    closed = reset = False
    try:
        for piece in [data] if isinstance(data, bytes) else data:
            writer.write(piece)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            received += chunk
    except ConnectionError:
        closed = reset = True
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()
    return Exchange(bytes(received), closed, reset)


@dataclass
class Parsed:
    """One response read strictly by h11, as a client would."""

    status: int
    headers: dict[str, str]
    body: bytes
    header_list: list[tuple[str, str]] = field(default_factory=list)


def parse_responses(data: bytes, methods: list[str] | None = None, *, complete: bool = True) -> list[Parsed]:
    """Every response in ``data``, read with h11 as the client of requests with ``methods`` (GET by default).

    Raises ``h11.RemoteProtocolError`` on anything that isn't well-formed
    HTTP/1.1; with ``complete``, the last response must be whole too.
    """
    methods = list(methods or ["GET"] * 64)
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")  # the bytes end here: a close-delimited body ends, a truncated one is an error
    out: list[Parsed] = []
    while methods:
        method = methods.pop(0)
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "test")]))
        conn.send(h11.EndOfMessage())
        status = 0
        headers: list[tuple[str, str]] = []
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if not status and "ConnectionClosed" in str(exc):
                    return out  # closed where a response could start (after a 100 Continue, say)
                raise
            if event is h11.NEED_DATA:
                if complete and status:
                    raise h11.RemoteProtocolError("truncated response")
                return out
            if isinstance(event, h11.ConnectionClosed):
                return out
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = [(k.decode(), v.decode("latin-1")) for k, v in event.headers]
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                out.append(Parsed(status, dict(headers), bytes(body), headers))
                break
        if conn.their_state is not h11.DONE or conn.our_state is not h11.DONE or not conn.trailing_data[0]:
            return out  # closing, or no bytes left for another response
        conn.start_next_cycle()
    return out


class Counter:
    """A handler that answers 200 ``ok`` and counts the requests it got (what reached "upstream")."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(await request.aread())
        self.requests.append(request)
        return httpx.Response(200, content=b"ok")

    @property
    def count(self) -> int:
        return len(self.requests)


@pytest.fixture
def counter() -> Counter:
    return Counter()
