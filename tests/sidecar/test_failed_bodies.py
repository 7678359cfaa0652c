"""A response body that fails after its head went out: how the listener ends it, so a client can tell why.

The status can't change once the head is out: a chunked body ends with an
error chunk naming the error, then a timeout closes the connection (FIN) and
any other failure resets it (RST). Requests marked ``x-meshlib-client`` get
every streamed body chunked. The handler here returns a body that fails on
cue; tests/parity runs the same through a real proxy and the sidecar client.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from meshlib._errors import MeshError, RequestTimeoutError, UpstreamResetError
from meshlib._sidecar.server import Handler, HttpServer
from meshlib._wire import error_chunk
from tests.sidecar.conftest import parse_responses, serving

pytestmark = pytest.mark.anyio

TIMEOUT = RequestTimeoutError(
    "per-try timeout (300ms) ran out during try 1 of route 'r', cluster 'c'",
    route="r",
    cluster="c",
    kind="per_try",
    timeout=0.3,
)
RESET = UpstreamResetError("connection reset by peer during try 1 of route 'r', cluster 'c'", route="r", cluster="c")
HEAD = b"GET http://svc/x HTTP/1.1\r\nHost: svc\r\n"
MARKED = HEAD + b"x-meshlib-client: 1\r\n"


class FailingBody(httpx.AsyncByteStream):
    """Yields ``hello`` (after the listener had time to send the head), then raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await asyncio.sleep(0.02)
        yield b"hello"
        await asyncio.sleep(0.02)
        raise self.error


def failing(error: Exception, headers: list[tuple[bytes, bytes]], seen: list[httpx.Request] | None = None) -> Handler:
    async def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(200, headers=headers, stream=FailingBody(error))

    return handle


async def raw_exchange(server: HttpServer, request: bytes) -> tuple[bytes, str]:
    """Send ``request`` on a plain socket and read until the server ends the connection: the bytes, and how
    it ended (``fin`` or ``rst``). Unlike asyncio's streams, a socket still yields what came before a reset."""
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(server.address)
    sock.setblocking(False)
    data = b""
    try:
        await loop.sock_sendall(sock, request)
        while True:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
            except ConnectionResetError:
                return data, "rst"
            if not chunk:
                return data, "fin"
            data += chunk
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("error", "ending"), [(TIMEOUT, "fin"), (RESET, "rst")], ids=["timeout-closes", "upstream-failure-resets"]
)
@pytest.mark.parametrize(
    ("request_head", "length", "chunked"),
    [
        (HEAD, None, True),
        (HEAD, b"100", False),
        (MARKED, b"100", True),  # meshlib's sidecar client: chunked all the same, the length in its own header
    ],
    ids=["chunked", "content-length", "content-length-to-meshlib-client"],
)
async def test_a_failed_body_ends_short_with_its_error_and_a_fin_or_a_reset(
    error: MeshError, ending: str, request_head: bytes, length: bytes | None, chunked: bool
) -> None:
    headers = [(b"content-length", length)] if length is not None else []
    async with serving(failing(error, headers)) as server:
        data, how = await raw_exchange(server, request_head + b"\r\n")
    assert how == ending
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    if chunked:
        assert body == b"5\r\nhello\r\n" + error_chunk(error)
        assert (b"x-meshlib-content-length: 100" in head) == (length is not None)
    else:
        assert (body, b"content-length: 100" in head) == (b"hello", True)
    with pytest.raises(Exception, match=r"(?i)truncated|incomplete|peer closed"):
        parse_responses(data)  # every client sees the body cut short


async def test_a_timed_out_body_that_ends_with_the_connection_resets_it() -> None:
    """HTTP/1.0 without a length: a FIN would end the body well, so a timeout resets the connection too."""
    async with serving(failing(TIMEOUT, [])) as server:
        data, how = await raw_exchange(server, b"GET http://svc/x HTTP/1.0\r\n\r\n")
    assert (how, data.endswith(b"\r\n\r\nhello")) == ("rst", True)


async def test_the_client_mark_stays_with_the_listener_and_changes_only_streamed_bodies() -> None:
    seen: list[httpx.Request] = []

    async def in_memory(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers=[(b"x-meshlib-content-length", b"99")], content=b"ok")

    async with serving(in_memory) as server:
        data, _ = await raw_exchange(server, MARKED + b"Connection: close\r\n\r\n")
    [response] = parse_responses(data)
    assert (response.body, response.headers.get("content-length")) == (b"ok", "2")
    assert "x-meshlib-content-length" not in response.headers  # the framing header is the listener's alone
    assert "x-meshlib-client" not in seen[0].headers


async def test_a_body_that_fails_before_its_head_went_out_gets_the_error_answer() -> None:
    class FailsAtOnce(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            raise TIMEOUT
            yield b""  # pragma: no cover - makes this an async generator

    async def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=FailsAtOnce())

    async with serving(handle) as server:
        data, _ = await raw_exchange(server, HEAD + b"Connection: close\r\n\r\n")
    [response] = parse_responses(data)
    assert (response.status, response.headers["x-meshlib-error"], response.headers["x-meshlib-timeout"]) == (
        504,
        "timeout",
        "per-try",
    )


async def test_a_body_longer_than_its_length_fails_chunked_to_the_meshlib_client_too() -> None:
    """Chunked for the client's sake, the body is still held to the upstream's Content-Length."""

    async def too_long(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=[(b"content-length", b"3")], stream=FailingBody(TIMEOUT))

    async with serving(too_long) as server:
        data, how = await raw_exchange(server, MARKED + b"\r\n")
    assert how == "rst"
    why = b"response body longer than its Content-Length (endpoint http://svc)"
    assert data.endswith(b'\r\n\r\n1;x-meshlib-error="upstream_reset";x-meshlib-message="' + why + b'"\r\n')
