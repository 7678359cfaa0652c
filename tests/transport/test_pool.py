"""meshlib.AsyncHTTP1Transport (the sidecar's upstream client, the fast inner transport) on real sockets.

Well-behaved upstreams are uvicorn apps; misbehaving ones (stalls, early
closes, odd framing, upgrades) are raw socket servers in threads
(tests/conftest.py ``raw_server``). Timeouts are 100-300 ms, and every wait
is bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshlib
from meshlib._errors import UpstreamConnectError, UpstreamResetError
from meshlib._transport import AsyncHTTP1Transport
from meshlib._transport.connection import ResponseStream
from tests.conftest import (
    MakeMesh,
    Receive,
    RunningServer,
    Scope,
    Send,
    close_before_response,
    close_mid_body,
    echo_app,
    eventually,
    raw_server,
    read_request_head,
    stall,
    start_server,
)
from tests.failing_upstreams import drip, reset_mid_body

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[pytest.param(False, id="asyncio"), pytest.param(True, id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    """Each test on the default asyncio loop, and on uvloop, which the sidecar runs on."""
    return ("asyncio", {"use_uvloop": request.param})


MB = 1024 * 1024
LARGE = 8 * MB


# -- upstreams -------------------------------------------------------------------------------------------------------


async def body_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/count``: the request body's size and sha256; ``/download``: LARGE bytes in 64 KiB messages."""
    assert scope["type"] == "http"
    if scope["path"] == "/download":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % LARGE)]})
        block = b"x" * 65536
        for _ in range(LARGE // len(block)):
            await send({"type": "http.response.body", "body": block, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    digest = hashlib.sha256()
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        digest.update(chunk)
        if not message.get("more_body", False):
            break
    data = json.dumps({"size": size, "sha256": digest.hexdigest()}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    server = start_server(echo_app("echo"), "echo")
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def bodies() -> Iterator[str]:
    server: RunningServer = start_server(body_app, "bodies")
    yield server.url
    server.stop()


@pytest.fixture
async def transport() -> AsyncIterator[AsyncHTTP1Transport]:
    pooled = AsyncHTTP1Transport()
    yield pooled
    await pooled.aclose()


class Reader:
    """Reads requests (head and Content-Length body) off one raw connection, keeping what it over-read.

    Gives up at EOF, after ``timeout`` seconds, or soon after ``stop`` is set (the server is stopping).
    """

    def __init__(self, conn: socket.socket, stop: threading.Event, timeout: float = 5.0) -> None:
        self.conn = conn
        self.stop = stop
        self.timeout = timeout
        self.buffer = b""
        conn.settimeout(0.02)

    def _recv(self, deadline: float) -> bytes:
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                return self.conn.recv(65536)
            except TimeoutError:
                continue
        return b""

    def request(self) -> bytes | None:
        """The next request's head, after reading its body; None at EOF, timeout or stop."""
        deadline = time.monotonic() + self.timeout
        try:
            while b"\r\n\r\n" not in self.buffer:
                chunk = self._recv(deadline)
                if not chunk:
                    return None
                self.buffer += chunk
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    size = int(value)
                    while len(self.buffer) < size:
                        chunk = self._recv(deadline)
                        if not chunk:
                            return None
                        self.buffer += chunk
                    self.buffer = self.buffer[size:]
            return head
        except OSError:
            return None


def keep_alive(answer: Callable[[bytes], bytes]) -> Callable[[socket.socket, threading.Event], None]:
    """A connection handler answering every request on the connection with ``answer(request_head)``."""

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        reader = Reader(conn, stop)
        while not stop.is_set() and (head := reader.request()) is not None:
            conn.sendall(answer(head))

    return handle


def ok(_head: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def request(method: str, url: str, timeout: float = 5.0, **kwargs: Any) -> httpx.Request:
    """A request with the timeout extension a client would add (and Host, and the body's framing headers)."""
    return httpx.Request(method, url, extensions={"timeout": httpx.Timeout(timeout).as_dict()}, **kwargs)


async def send(transport: AsyncHTTP1Transport, method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, bytes]:
    """Send a request built by :func:`request` and read its body."""
    response = await transport.handle_async_request(request(method, url, **kwargs))
    body = b""
    try:
        async for chunk in response.stream:  # type: ignore[union-attr]
            body += chunk
    finally:
        await response.aclose()
    return response, body


# -- bodies both ways --------------------------------------------------------------------------------------------------


async def test_get_returns_status_headers_body_and_extensions(transport: AsyncHTTP1Transport, echo: str) -> None:
    response, body = await send(transport, "GET", f"{echo}/items/7?q=1", headers={"x-trace": "abc"})
    assert response.status_code == 200
    assert response.headers["x-upstream"] == "echo"
    assert response.extensions == {"http_version": b"HTTP/1.1", "reason_phrase": b"OK"}
    seen = json.loads(body)
    assert (seen["method"], seen["raw_path"], seen["query"]) == ("GET", "/items/7", "q=1")
    assert ["x-trace", "abc"] in seen["headers"]
    assert ["host", echo.removeprefix("http://")] in seen["headers"]


async def test_post_with_content_length_body(transport: AsyncHTTP1Transport, echo: str) -> None:
    _, body = await send(transport, "POST", f"{echo}/p", content=b"hello world")
    seen = json.loads(body)
    assert seen["body"] == "hello world"
    assert ["content-length", "11"] in seen["headers"]


async def test_post_streams_a_chunked_body_and_reads_a_chunked_response(
    transport: AsyncHTTP1Transport, echo: str
) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one ", b"", b"two ", b"three"):
            yield part

    response, body = await send(transport, "POST", f"{echo}/p", content=parts())
    assert response.headers["transfer-encoding"] == "chunked"  # uvicorn streams its answer chunked too
    seen = json.loads(body)
    assert seen["body"] == "one two three"
    assert ["transfer-encoding", "chunked"] in seen["headers"]


async def test_a_streamed_body_with_content_length_is_sent_as_is(transport: AsyncHTTP1Transport, echo: str) -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    _, body = await send(transport, "PUT", f"{echo}/p", content=parts(), headers={"content-length": "6"})
    seen = json.loads(body)
    assert seen["body"] == "abcdef"
    assert ["content-length", "6"] in seen["headers"]
    assert not any(name == "transfer-encoding" for name, _ in seen["headers"])


async def test_a_streamed_body_that_breaks_its_content_length_is_refused(transport: AsyncHTTP1Transport) -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"abc"

    with raw_server(keep_alive(ok)) as server:
        for declared in ("2", "5"):
            with pytest.raises(httpx.LocalProtocolError, match="Content-Length"):
                await send(transport, "POST", f"{server.url}/p", content=parts(), headers={"content-length": declared})
        assert transport.idle_connections == 0  # the upstream saw a wrongly framed body: never reuse


async def test_an_answer_before_the_body_is_sent_stops_the_upload(transport: AsyncHTTP1Transport) -> None:
    def too_large(conn: socket.socket, stop: threading.Event) -> None:
        Reader(conn, stop).request()  # the head only: the body is chunked, so the Reader leaves it
        conn.sendall(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\n\r\ntoo big!")
        stop.wait(5)

    sent = 0

    async def slow_upload() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(100):
            sent += 1
            yield b"x" * 1024
            await asyncio.sleep(0.01)

    with raw_server(too_large) as server:
        response, body = await send(transport, "POST", f"{server.url}/up", content=slow_upload())
        assert (response.status_code, body) == (413, b"too big!")
        assert sent < 100
        assert transport.idle_connections == 0  # the body was cut short: the connection cannot be reused


async def test_a_large_upload_is_streamed(transport: AsyncHTTP1Transport, bodies: str) -> None:
    block = bytes(range(256)) * 256  # 64 KiB
    produced = 0

    async def upload() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(LARGE // len(block)):
            produced += len(block)
            yield block

    _, body = await send(transport, "POST", f"{bodies}/count", content=upload())
    assert json.loads(body) == {"size": LARGE, "sha256": hashlib.sha256(block * (LARGE // len(block))).hexdigest()}
    assert produced == LARGE


async def test_a_large_download_arrives_in_chunks(transport: AsyncHTTP1Transport, bodies: str) -> None:
    response = await transport.handle_async_request(request("GET", f"{bodies}/download"))
    sizes = [len(chunk) async for chunk in response.stream]  # type: ignore[union-attr]
    await response.aclose()
    assert sum(sizes) == LARGE
    assert len(sizes) > 8
    assert max(sizes) <= 1 * MB  # never the whole body at once


async def test_a_complete_body_is_taken_whole_and_the_connection_is_kept(
    transport: AsyncHTTP1Transport, echo: str
) -> None:
    """``take_whole`` hands over a body that is all here (what a listener writes with its head), once."""
    response = await transport.handle_async_request(request("GET", f"{echo}/whole"))
    stream = response.stream
    assert isinstance(stream, ResponseStream)
    for _ in range(200):  # the echo's small body comes with its head or right after
        if stream.complete:
            break
        await asyncio.sleep(0.005)
    chunks = stream.take_whole()
    assert chunks is not None
    assert json.loads(b"".join(chunks))["raw_path"] == "/whole"
    assert stream.take_whole() == []  # taken: nothing is handed over twice
    assert [chunk async for chunk in stream] == []
    await response.aclose()
    assert transport.idle_connections == 1  # read to its end: the connection goes back to the pool


async def test_a_body_still_arriving_is_not_taken_whole(transport: AsyncHTTP1Transport, bodies: str) -> None:
    response = await transport.handle_async_request(request("GET", f"{bodies}/download"))
    stream = response.stream
    assert isinstance(stream, ResponseStream)
    assert not stream.complete
    assert stream.take_whole() is None  # the caller iterates it instead, and gets all of it
    assert sum([len(chunk) async for chunk in stream]) == LARGE
    await response.aclose()
    assert transport.idle_connections == 1


async def test_a_closed_body_is_not_taken_whole(transport: AsyncHTTP1Transport, echo: str) -> None:
    response = await transport.handle_async_request(request("GET", f"{echo}/closed"))
    stream = response.stream
    assert isinstance(stream, ResponseStream)
    await response.aclose()
    assert stream.take_whole() is None


async def test_reading_pauses_while_the_consumer_is_behind() -> None:
    total = 16 * MB
    block = b"y" * 65536

    def big(conn: socket.socket, stop: threading.Event) -> None:
        Reader(conn, stop).request()
        conn.settimeout(5)  # sendall blocks while the client does not read
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        for _ in range(total // len(block)):
            if stop.is_set():
                return
            conn.sendall(block)

    pooled = AsyncHTTP1Transport()
    with raw_server(big) as server:
        response = await pooled.handle_async_request(request("GET", f"{server.url}/big"))
        stream: Any = response.stream
        await asyncio.sleep(0.3)  # the consumer is behind: the server keeps sending meanwhile
        assert stream.buffered <= 2 * 256 * 1024  # bounded, not the 16 MB on offer
        assert stream.conn.reading_paused
        received = 0
        async for chunk in stream:
            received += len(chunk)
        await response.aclose()
    assert received == total
    await pooled.aclose()


# -- the pool --------------------------------------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(transport: AsyncHTTP1Transport) -> None:
    with raw_server(keep_alive(ok)) as server:
        for _ in range(5):
            response, body = await send(transport, "GET", f"{server.url}/x")
            assert (response.status_code, body) == (200, b"ok")
            assert transport.idle_connections == 1
    assert server.connections == 1


async def test_concurrent_requests_open_connections_that_return_to_the_pool(transport: AsyncHTTP1Transport) -> None:
    n = 4
    barrier = threading.Barrier(n, timeout=5)
    first_round = threading.Event()

    def together(head: bytes) -> bytes:
        if not first_round.is_set():
            barrier.wait()  # all four requests are in flight at once, so each needs its own connection
        return ok(head)

    with raw_server(keep_alive(together)) as server:
        results = await asyncio.gather(*(send(transport, "GET", f"{server.url}/{i}") for i in range(n)))
        first_round.set()
        assert [body for _, body in results] == [b"ok"] * n
        assert server.connections == n
        assert transport.idle_connections == n
        for _ in range(3):
            await asyncio.gather(*(send(transport, "GET", f"{server.url}/again") for _ in range(n)))
        assert server.connections == n
    assert transport.idle_connections <= n


async def test_connection_close_on_either_side_is_not_reused(transport: AsyncHTTP1Transport) -> None:
    def closing(head: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"

    with raw_server(keep_alive(closing)) as server:
        for _ in range(2):
            _, body = await send(transport, "GET", f"{server.url}/x")
            assert body == b"ok"
        assert transport.idle_connections == 0
        assert server.connections == 2
    with raw_server(keep_alive(ok)) as server:
        for _ in range(2):
            await send(transport, "GET", f"{server.url}/x", headers={"connection": "close"})
        assert server.connections == 2
        assert transport.idle_connections == 0


async def test_a_body_left_unread_closes_its_connection(transport: AsyncHTTP1Transport) -> None:
    def long(head: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234"  # the rest never comes

    with raw_server(keep_alive(long)) as server:
        response = await transport.handle_async_request(request("GET", f"{server.url}/x"))
        await response.aclose()
        await eventually(lambda: transport.idle_connections == 0)
        response = await transport.handle_async_request(request("GET", f"{server.url}/x"))
        await response.aclose()
        assert server.connections == 2


async def test_max_idle_per_origin_bounds_the_idle_connections() -> None:
    pooled = AsyncHTTP1Transport(max_idle_per_origin=1)
    n = 3
    barrier = threading.Barrier(n, timeout=5)

    def together(head: bytes) -> bytes:
        barrier.wait()
        return ok(head)

    with raw_server(keep_alive(together)) as server:
        await asyncio.gather(*(send(pooled, "GET", f"{server.url}/{i}") for i in range(n)))
        assert pooled.idle_connections == 1
    await pooled.aclose()


async def test_a_connection_idle_past_keepalive_expiry_is_closed_not_reused() -> None:
    pooled = AsyncHTTP1Transport(keepalive_expiry=0.2)
    with raw_server(keep_alive(ok)) as server:
        await send(pooled, "GET", f"{server.url}/1")
        await send(pooled, "GET", f"{server.url}/2")  # well within the expiry: the same connection
        assert server.connections == 1
        await asyncio.sleep(0.3)
        _, body = await send(pooled, "GET", f"{server.url}/3")
        assert body == b"ok"
        assert server.connections == 2
        assert pooled.idle_connections == 1  # the expired one was closed, the new one is pooled
    await pooled.aclose()


async def test_expiry_closes_only_the_connections_idle_too_long() -> None:
    pooled = AsyncHTTP1Transport(keepalive_expiry=0.3)
    n = 2
    barrier = threading.Barrier(n, timeout=5)
    together_once = threading.Event()

    def together(head: bytes) -> bytes:
        if not together_once.is_set():
            barrier.wait()  # two requests at once: two connections
        return ok(head)

    with raw_server(keep_alive(together)) as server:
        await asyncio.gather(*(send(pooled, "GET", f"{server.url}/{i}") for i in range(n)))
        together_once.set()
        assert pooled.idle_connections == 2
        await asyncio.sleep(0.2)
        await send(pooled, "GET", f"{server.url}/fresh")  # reuses the newest and puts it back: idle since now
        await asyncio.sleep(0.2)  # the other one is now idle 0.4 s, past the expiry; the reused one 0.2 s
        await send(pooled, "GET", f"{server.url}/again")
        assert server.connections == 2  # no new connection: the recently used one carried it
        assert pooled.idle_connections == 1
    await pooled.aclose()


@pytest.mark.parametrize("bad", [{"keepalive_expiry": -1}, {"max_idle_per_origin": -1}])
def test_bad_pool_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        AsyncHTTP1Transport(**bad)


async def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    def once_then_close(conn: socket.socket, stop: threading.Event) -> None:
        Reader(conn, stop).request()
        conn.sendall(ok(b""))  # keep-alive as far as the client knows, then gone

    pooled = AsyncHTTP1Transport()
    with raw_server(once_then_close) as server:
        await send(pooled, "GET", f"{server.url}/1")
        await eventually(lambda: pooled.idle_connections == 0)  # the EOF took it out of the pool
        _, body = await send(pooled, "GET", f"{server.url}/2")
        assert body == b"ok"
        assert server.connections == 2
    await pooled.aclose()


def close_on_second_request(conn: socket.socket, stop: threading.Event) -> None:
    """Answers one request, then closes the connection as the next one arrives (a keep-alive race)."""
    reader = Reader(conn, stop)
    if reader.request() is None:
        return
    conn.sendall(ok(b""))
    reader.request()


async def test_a_request_that_loses_the_keep_alive_race_is_sent_again_on_a_new_connection() -> None:
    pooled = AsyncHTTP1Transport()
    with raw_server(close_on_second_request) as server:
        await send(pooled, "GET", f"{server.url}/1")
        response, body = await send(pooled, "PUT", f"{server.url}/2", content=b"replayable")
        assert (response.status_code, body) == (200, b"ok")
        assert server.connections == 2
    await pooled.aclose()


async def test_a_post_that_loses_the_keep_alive_race_is_not_sent_again() -> None:
    """The server may have taken the POST before it closed: sending it twice is not the transport's call."""
    pooled = AsyncHTTP1Transport()
    with raw_server(close_on_second_request) as server:
        await send(pooled, "GET", f"{server.url}/1")
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await send(pooled, "POST", f"{server.url}/2", content=b"replayable")
        assert server.connections == 1
    await pooled.aclose()


async def test_a_streamed_body_is_not_sent_again_after_a_keep_alive_race() -> None:
    async def once() -> AsyncIterator[bytes]:
        yield b"gone once sent"

    pooled = AsyncHTTP1Transport()
    with raw_server(close_on_second_request) as server:
        await send(pooled, "GET", f"{server.url}/1")
        # A close (or a reset: the server had not read the body) before any response byte, not retried.
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await send(pooled, "POST", f"{server.url}/2", content=once())
        assert server.connections == 1
    await pooled.aclose()


async def test_requests_beyond_the_connection_limit_wait_for_a_connection() -> None:
    pooled = AsyncHTTP1Transport(max_connections_per_origin=1)
    with raw_server(keep_alive(ok)) as server:
        results = await asyncio.gather(*(send(pooled, "GET", f"{server.url}/{i}") for i in range(5)))
        assert [body for _, body in results] == [b"ok"] * 5
        assert server.connections == 1
    await pooled.aclose()


async def test_pool_timeout_when_every_connection_is_busy() -> None:
    pooled = AsyncHTTP1Transport(max_connections_per_origin=1)
    with raw_server(stall) as server:
        first = asyncio.ensure_future(pooled.handle_async_request(request("GET", f"{server.url}/1", timeout=5)))
        await eventually(lambda: server.connections == 1)
        started = time.monotonic()
        with pytest.raises(httpx.PoolTimeout):
            await pooled.handle_async_request(request("GET", f"{server.url}/2", timeout=0.15))
        assert 0.1 <= time.monotonic() - started < 2
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        # The cancelled request gave its slot back: a new request gets a connection (and the stalling server).
        with pytest.raises(httpx.ReadTimeout):
            await pooled.handle_async_request(request("GET", f"{server.url}/3", timeout=0.1))
        assert server.connections == 2
    await pooled.aclose()


# -- responses without a body, or delimited by the close -----------------------------------------------------------


async def test_head_204_and_304_have_no_body_and_keep_the_connection(transport: AsyncHTTP1Transport) -> None:
    def answer(head: bytes) -> bytes:
        path = head.split(b" ")[1]
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        if path == b"/204":
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if path == b"/304":
            return b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"
        return ok(head)

    with raw_server(keep_alive(answer)) as server:
        for method, path, status in [("HEAD", "/", 200), ("GET", "/204", 204), ("GET", "/304", 304)]:
            response, body = await send(transport, method, f"{server.url}{path}")
            assert (response.status_code, body) == (status, b"")
            response, body = await send(transport, "GET", f"{server.url}/after")
            assert (response.status_code, body) == (200, b"ok")
        assert server.connections == 1


async def test_interim_1xx_responses_are_skipped(transport: AsyncHTTP1Transport) -> None:
    def answer(head: bytes) -> bytes:
        return b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(head)

    with raw_server(keep_alive(answer)) as server:
        response, body = await send(transport, "GET", f"{server.url}/x")
        assert (response.status_code, body) == (200, b"ok")
        assert "link" not in response.headers
        assert response.extensions["reason_phrase"] == b"OK"


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
async def test_a_body_without_length_is_read_to_the_close(transport: AsyncHTTP1Transport, version: bytes) -> None:
    def close_delimited(conn: socket.socket, stop: threading.Event) -> None:
        Reader(conn, stop).request()
        conn.sendall(version + b" 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ")
        time.sleep(0.02)
        conn.sendall(b"second part")

    with raw_server(close_delimited) as server:
        response, body = await send(transport, "GET", f"{server.url}/x")
    assert body == b"first part, second part"
    assert response.extensions["http_version"] == version
    assert transport.idle_connections == 0


@pytest.mark.parametrize(
    ("answer", "split", "version"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False, b"HTTP/1.1"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", False, b"HTTP/1.0"),
        # Its first bytes too few to read the version from: llhttp tells it.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True, b"HTTP/1.1"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", True, b"HTTP/1.0"),
        # The interim response's version is not the final one's.
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
            False,
            b"HTTP/1.0",
        ),
    ],
)
async def test_each_response_reports_the_version_its_status_line_gave(
    transport: AsyncHTTP1Transport, answer: bytes, split: bool, version: bytes
) -> None:
    """Twice on one connection: the second response's version is read afresh, not the first one's."""

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        reader = Reader(conn, stop)
        while not stop.is_set() and reader.request() is not None:
            if split:  # "HTTP" alone first
                conn.sendall(answer[:4])
                time.sleep(0.02)
                conn.sendall(answer[4:])
            else:
                conn.sendall(answer)

    with raw_server(handle) as server:
        for _ in range(2):
            response, body = await send(transport, "GET", f"{server.url}/x")
            assert (response.status_code, body, response.extensions["http_version"]) == (200, b"ok", version)
        assert transport.idle_connections == 1  # both on one connection


# -- errors ----------------------------------------------------------------------------------------------------------


async def test_a_refused_port_is_a_connect_error(transport: AsyncHTTP1Transport, free_port: int) -> None:
    with pytest.raises(httpx.ConnectError) as raised:
        await transport.handle_async_request(request("GET", f"http://127.0.0.1:{free_port}/"))
    assert raised.value.request.url.port == free_port


async def test_an_unknown_host_is_a_connect_error(transport: AsyncHTTP1Transport) -> None:
    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(request("GET", "http://no-such-host.invalid/"))


async def test_a_connect_that_hangs_is_a_connect_timeout(transport: AsyncHTTP1Transport) -> None:
    # A listener whose accept queue is full drops new SYNs, so connecting hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(httpx.ConnectTimeout):
            await transport.handle_async_request(request("GET", f"http://127.0.0.1:{port}/", timeout=0.15))
        assert time.monotonic() - started < 2
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_a_stalled_server_is_a_read_timeout(transport: AsyncHTTP1Transport) -> None:
    with raw_server(stall) as server:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout) as raised:
            await transport.handle_async_request(request("GET", f"{server.url}/x", timeout=0.15))
        assert 0.12 <= time.monotonic() - started < 2
        assert raised.value.request.url.path == "/x"
    assert transport.idle_connections == 0


async def test_a_body_that_stalls_is_a_read_timeout(transport: AsyncHTTP1Transport) -> None:
    def half(head: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234"

    with raw_server(keep_alive(half)) as server:
        response = await transport.handle_async_request(request("GET", f"{server.url}/x", timeout=0.15))
        with pytest.raises(httpx.ReadTimeout):
            await response.aread()
        await response.aclose()
    assert transport.idle_connections == 0


async def test_a_server_that_does_not_read_is_a_write_timeout(transport: AsyncHTTP1Transport) -> None:
    def never_reads(conn: socket.socket, stop: threading.Event) -> None:
        stop.wait(10)

    with raw_server(never_reads) as server:
        body = b"z" * (16 * MB)  # more than the socket buffers on both sides hold
        with pytest.raises(httpx.WriteTimeout):
            await transport.handle_async_request(request("POST", f"{server.url}/x", timeout=0.2, content=body))


async def test_a_close_before_the_response_is_a_remote_protocol_error(transport: AsyncHTTP1Transport) -> None:
    with (
        raw_server(close_before_response) as server,
        pytest.raises(httpx.RemoteProtocolError, match="Server disconnected without sending a response"),
    ):
        await transport.handle_async_request(request("GET", f"{server.url}/x"))


async def test_a_close_in_the_middle_of_the_head_is_a_remote_protocol_error(transport: AsyncHTTP1Transport) -> None:
    def half_head(conn: socket.socket, stop: threading.Event) -> None:
        Reader(conn, stop).request()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")

    with raw_server(half_head) as server, pytest.raises(httpx.RemoteProtocolError):
        await transport.handle_async_request(request("GET", f"{server.url}/x"))


async def test_a_close_mid_body_is_a_read_error(transport: AsyncHTTP1Transport) -> None:
    with raw_server(close_mid_body) as server:
        response = await transport.handle_async_request(request("GET", f"{server.url}/x"))
        assert response.status_code == 200
        stream: Any = response.stream
        assert await stream.__anext__() == b"0123456789"  # what came is delivered, then the truncation raises
        # h11's words, so that the failure reads the same through the sidecar as in process.
        words = "peer closed connection without sending complete message body (received 10 bytes, expected 1000)"
        with pytest.raises(httpx.ReadError, match=rf"^{re.escape(words)}$"):
            await stream.__anext__()
        await response.aclose()


async def test_a_reset_mid_body_is_a_read_error_in_the_oss_words(transport: AsyncHTTP1Transport) -> None:
    with raw_server(reset_mid_body) as server:
        response = await transport.handle_async_request(request("GET", f"{server.url}/x"))
        with pytest.raises(httpx.ReadError, match=r"^\[Errno 104\] Connection reset by peer$"):
            await response.aread()


async def test_a_chunked_body_without_its_last_chunk_is_a_read_error(transport: AsyncHTTP1Transport) -> None:
    def no_last_chunk(conn: socket.socket, stop: threading.Event) -> None:
        Reader(conn, stop).request()
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")

    with raw_server(no_last_chunk) as server:
        response = await transport.handle_async_request(request("GET", f"{server.url}/x"))
        with pytest.raises(httpx.ReadError, match=r"\(incomplete chunked read\)$"):
            await response.aread()


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HELLO\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
    ids=["status-not-a-number", "no-status-line", "two-lengths", "length-and-chunked", "status-99", "bare-101"],
)
async def test_a_malformed_response_is_a_remote_protocol_error(transport: AsyncHTTP1Transport, head: bytes) -> None:
    def malformed(conn: socket.socket, stop: threading.Event) -> None:
        Reader(conn, stop).request()
        conn.sendall(head)
        stop.wait(5)

    with raw_server(malformed) as server, pytest.raises(httpx.RemoteProtocolError):
        await transport.handle_async_request(request("GET", f"{server.url}/x"))
    assert transport.idle_connections == 0


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\n" + b"x-many: 1\r\n" * 101 + b"Content-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * (70 * 1024) + b"\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["101-header-lines", "70-KiB-head"],
)
async def test_a_response_head_beyond_the_limits_is_refused(transport: AsyncHTTP1Transport, head: bytes) -> None:
    def big_head(conn: socket.socket, stop: threading.Event) -> None:
        Reader(conn, stop).request()
        conn.sendall(head)
        stop.wait(5)

    with raw_server(big_head) as server, pytest.raises(httpx.RemoteProtocolError):
        await transport.handle_async_request(request("GET", f"{server.url}/x"))


async def test_bytes_after_a_complete_response_are_not_taken_for_the_next_one(transport: AsyncHTTP1Transport) -> None:
    def extra(head: bytes) -> bytes:
        return ok(head) + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"

    with raw_server(keep_alive(extra)) as server:
        for _ in range(2):
            _, body = await send(transport, "GET", f"{server.url}/x")
            assert body == b"ok"
        assert server.connections == 2


async def test_cr_or_lf_in_a_header_is_refused_before_sending(transport: AsyncHTTP1Transport) -> None:
    with raw_server(keep_alive(ok)) as server:
        with pytest.raises(httpx.LocalProtocolError):
            await transport.handle_async_request(request("GET", f"{server.url}/x", headers={"x-a": "1\r\nx-b: 2"}))
        assert server.connections == 0


async def test_cancelling_a_request_drops_its_connection(transport: AsyncHTTP1Transport) -> None:
    with raw_server(stall) as server:
        task = asyncio.ensure_future(transport.handle_async_request(request("GET", f"{server.url}/x")))
        await eventually(lambda: server.connections == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert transport.idle_connections == 0


# -- upgrades --------------------------------------------------------------------------------------------------------


async def test_101_hands_over_the_connection_as_a_network_stream(transport: AsyncHTTP1Transport) -> None:
    def upgrade_then_echo(conn: socket.socket, stop: threading.Event) -> None:
        reader = Reader(conn, stop)
        reader.request()
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nhello")
        pending = reader.buffer
        while not stop.is_set():
            if pending:
                conn.sendall(pending)
            try:
                pending = conn.recv(65536)
            except TimeoutError:
                pending = b""
                continue
            if not pending:
                return

    with raw_server(upgrade_then_echo) as server:
        upgrade = request("GET", f"{server.url}/ws", headers={"upgrade": "echo", "connection": "upgrade"})
        response = await transport.handle_async_request(upgrade)
        assert response.status_code == 101
        stream = response.extensions["network_stream"]
        assert await stream.read(65536) == b"hello"  # sent with the head, kept for the caller
        for message in (b"ping", b"pong" * 1000):
            await stream.write(message)
            echoed = b""
            while len(echoed) < len(message):
                echoed += await asyncio.wait_for(stream.read(65536), 5)
            assert echoed == message
        await response.aclose()
        await stream.aclose()
        assert transport.idle_connections == 0


# -- TLS -------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1, and a client context that trusts its CA."""
    import datetime
    import ipaddress
    import tempfile

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshlib test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:
        cert_file, key_file = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


def tls_keep_alive(context: ssl.SSLContext) -> Callable[[socket.socket, threading.Event], None]:
    def handle(conn: socket.socket, stop: threading.Event) -> None:
        conn.settimeout(5)
        try:
            tls_conn = context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client refused the certificate
        with tls_conn:
            keep_alive(ok)(tls_conn, stop)

    return handle


async def test_https_with_a_given_ssl_context(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls
    pooled = AsyncHTTP1Transport(ssl_context=client_context)
    with raw_server(tls_keep_alive(server_context)) as server:
        url = server.url.replace("http://", "https://")
        for _ in range(2):
            response, body = await send(pooled, "GET", f"{url}/secure")
            assert (response.status_code, body) == (200, b"ok")
        assert server.connections == 1
        await pooled.aclose()


async def test_https_checks_the_certificate_by_default(
    transport: AsyncHTTP1Transport, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    serve = tls_keep_alive(tls[0])
    refused = threading.Event()

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        serve(conn, stop)
        refused.set()

    with raw_server(handle) as server:
        url = server.url.replace("http://", "https://")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await transport.handle_async_request(request("GET", f"{url}/secure"))
        # The refused connection is dropped on the loop's next turn, and the server sees it end well before its own
        # 5 s read timeout: nothing is left open. (Waited for in a thread: blocking here would hold the loop.)
        assert await asyncio.to_thread(refused.wait, 2)


# -- the mesh on top -------------------------------------------------------------------------------------------------


def mesh_config(*endpoints: str, **cluster: Any) -> dict[str, Any]:
    return {"clusters": {"up": {"endpoints": list(endpoints), **cluster}}}


async def test_the_mesh_retries_through_it_on_another_endpoint(make_mesh: MakeMesh, echo: str) -> None:
    with raw_server(close_before_response) as failing:
        retry = {"attempts": 2, "backoff": {"base": "1ms", "max": "2ms"}}
        mesh = make_mesh(mesh_config(failing.url, echo, retry=retry))
        transport = mesh.async_transport(inner=AsyncHTTP1Transport())
        async with httpx.AsyncClient(transport=transport) as client:
            responses = [await client.get("http://up/x") for _ in range(4)]
        assert [r.status_code for r in responses] == [200] * 4
        assert {r.json()["name"] for r in responses} == {"echo"}
        assert failing.connections >= 1  # the failing endpoint was tried, and its reset retried


async def test_the_mesh_maps_its_errors(make_mesh: MakeMesh, free_port: int) -> None:
    with raw_server(close_mid_body) as failing:
        mesh = make_mesh(mesh_config(failing.url, retry={"attempts": 1}))
        async with httpx.AsyncClient(transport=mesh.async_transport(inner=AsyncHTTP1Transport())) as client:
            with pytest.raises(UpstreamResetError):
                await client.get("http://up/x")
    mesh = make_mesh(mesh_config(f"http://127.0.0.1:{free_port}", retry={"attempts": 1}))
    async with httpx.AsyncClient(transport=mesh.async_transport(inner=AsyncHTTP1Transport())) as client:
        with pytest.raises(UpstreamConnectError):
            await client.get("http://up/x")


async def test_the_mesh_per_try_timeout_cancels_a_try(make_mesh: MakeMesh) -> None:
    with raw_server(stall) as stalled:
        mesh = make_mesh(mesh_config(stalled.url, retry={"attempts": 1, "per_try_timeout": "150ms"}))
        inner = AsyncHTTP1Transport()
        async with httpx.AsyncClient(transport=mesh.async_transport(inner=inner)) as client:
            with pytest.raises(meshlib.MeshError):
                await client.get("http://up/x")
        assert inner.idle_connections == 0


async def test_a_body_received_whole_is_past_the_meshs_timeouts(make_mesh: MakeMesh, echo: str) -> None:
    """As Envoy disarms its timeouts once the upstream response is complete: reading it later is fine."""
    mesh = make_mesh(mesh_config(echo, retry={"attempts": 1, "per_try_timeout": "100ms"}))
    async with (
        httpx.AsyncClient(transport=mesh.async_transport(inner=AsyncHTTP1Transport())) as client,
        client.stream("GET", "http://up/x") as response,
    ):
        await asyncio.sleep(0.2)  # past the per-try timeout: a small answer came whole with its head
        assert (await response.aread()).startswith(b'{"name": "echo"')


async def test_a_body_is_complete_once_it_all_came(transport: AsyncHTTP1Transport, echo: str) -> None:
    with raw_server(drip) as server:
        response = await transport.handle_async_request(request("GET", f"{server.url}/x"))
        stream: Any = response.stream
        assert not stream.complete  # still coming
        await response.aclose()
    response = await transport.handle_async_request(request("GET", f"{echo}/x"))
    stream = response.stream
    await eventually(lambda: stream.complete)  # the rest came: nothing left to wait for
    await response.aread()


async def test_a_body_that_came_whole_while_the_reader_was_away_is_past_the_timeouts(make_mesh: MakeMesh) -> None:
    def in_two_parts(conn: socket.socket, stop: threading.Event) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        if not stop.wait(0.05):
            conn.sendall(b"56789")
            stop.wait(5)

    with raw_server(in_two_parts) as server:
        mesh = make_mesh(mesh_config(server.url, retry={"attempts": 1, "per_try_timeout": "150ms"}))
        pooled = AsyncHTTP1Transport()
        async with (
            httpx.AsyncClient(transport=mesh.async_transport(inner=pooled)) as client,
            client.stream("GET", "http://up/x") as response,
        ):
            chunks = response.aiter_raw()
            assert await chunks.__anext__() == b"01234"
            await asyncio.sleep(0.3)  # the rest came, then the per-try timeout passed
            assert [chunk async for chunk in chunks] == [b"56789"]
