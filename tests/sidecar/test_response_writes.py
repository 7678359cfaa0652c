"""How the listener writes a response: a body that is all there goes out with its head in one write; a body
that has to wait gets its head first and streams; a cancellation reaches a body read that waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pytest

from meshlib._config.sidecar import SidecarLimitsConfig
from meshlib._sidecar import http1, server
from meshlib._sidecar.server import HttpServer

pytestmark = pytest.mark.anyio

HEAD = http1.parse_head(b"GET http://svc/x HTTP/1.1\r\nHost: svc", 65536)


class Transport:
    """Records each ``write`` (the listener's side of the client connection, without a socket)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def connection() -> tuple[Any, Transport]:
    listener = HttpServer("outbound", None, SidecarLimitsConfig())  # type: ignore[arg-type]  # no handler called
    conn = server._DownstreamConnection(listener, asyncio.get_running_loop())
    transport = Transport()
    conn._transport = cast(asyncio.Transport, transport)
    conn._state = server._WAIT
    return conn, transport


class Chunks(httpx.AsyncByteStream):
    """Yields ``chunks``; before each one, waits for ``gate`` when given. ``complete``: says none waits."""

    def __init__(self, chunks: list[bytes], gate: asyncio.Event | None = None, *, complete: bool | None = None) -> None:
        self.chunks = chunks
        self.gate = gate
        self.cancelled = False
        if complete is not None:
            self.complete = complete

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            if self.gate is not None:
                try:
                    await self.gate.wait()
                except asyncio.CancelledError:
                    self.cancelled = True
                    raise
            yield chunk


@pytest.mark.parametrize("complete", [None, True], ids=["reads-that-never-wait", "says-complete"])
async def test_a_body_that_is_all_there_goes_out_with_its_head_in_one_write(complete: bool | None) -> None:
    conn, transport = connection()
    body = Chunks([b"hello ", b"world"], complete=complete)
    await conn._send_response(httpx.Response(200, headers=[(b"content-length", b"11")], stream=body), HEAD)
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world"]


async def test_a_body_that_waits_gets_its_head_first_then_streams() -> None:
    conn, transport = connection()
    gate = asyncio.Event()
    sending = asyncio.create_task(conn._send_response(httpx.Response(200, stream=Chunks([b"hello"], gate)), HEAD))
    await asyncio.sleep(0.01)
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
    gate.set()
    await sending
    assert b"".join(transport.writes[1:]) == b"5\r\nhello\r\n0\r\n\r\n"


async def test_a_cancellation_reaches_the_body_read_that_waits() -> None:
    conn, _ = connection()
    body = Chunks([b"hello"], asyncio.Event())
    sending = asyncio.create_task(conn._send_response(httpx.Response(200, stream=body), HEAD))
    await asyncio.sleep(0.01)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    assert body.cancelled
