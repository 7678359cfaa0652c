"""The listener end to end on real sockets: request forms, proxies, keep-alive, bodies, errors, drain and counters.

The server runs in the test's event loop; upstreams are uvicorn apps in
threads (tests/conftest.py) and the sender is httpx's own transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

import meshlib
from meshlib._errors import (
    CircuitOpenError,
    NoHealthyUpstreamError,
    OverloadedError,
    RateLimitedError,
    RequestTimeoutError,
    RouteNotFoundError,
    UpstreamConnectError,
    UpstreamResetError,
)
from meshlib._frontdoors.sidecar_listeners import inbound_handler, outbound_handler
from meshlib._sidecar.server import HttpServer, _DownstreamConnection
from meshlib._transport import AsyncHTTP1Transport
from tests.conftest import (
    MakeMesh,
    Receive,
    RunningServer,
    Scope,
    Send,
    close_before_response,
    close_mid_body,
    raw_server,
    read_body,
    read_request_head,
    stall,
    start_server,
)
from tests.sidecar.conftest import Counter, exchange, parse_responses, proxy_url, serving

pytestmark = pytest.mark.anyio

BIG = 16 * 1024 * 1024


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """An upstream with a route per behaviour the listener must carry (see each branch)."""
    assert scope["type"] == "http"
    path = scope["path"]
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if p)
    if path == "/upload":  # read the body, answer its size and digest
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                break
        body = json.dumps({"size": size, "sha256": digest.hexdigest()}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
    elif path == "/download":  # ?size=N&length=1: N bytes in 64 KiB chunks, with a Content-Length or chunked
        size = int(query["size"])
        headers = [(b"content-length", b"%d" % size)] if query.get("length") == "1" else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        block = bytes(range(256)) * 256
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": sent < size})
        if size == 0:
            await send({"type": "http.response.body", "body": b""})
    elif path == "/stream":  # three chunks, no Content-Length: chunked on the wire
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"stream")]})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/204":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    else:  # echo, as JSON
        body = await read_body(receive)
        payload = {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body": body.decode("latin-1"),
        }
        data = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningServer]:
    server = start_server(app, "app")
    yield server
    server.stop()


@pytest.fixture
def mesh(make_mesh: MakeMesh, upstream: RunningServer) -> meshlib.Mesh:
    return make_mesh({"clusters": {"app": {"endpoints": [upstream.url]}}})


@pytest.fixture(params=["httpx", "pooled"])
async def sender(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncBaseTransport]:
    """The listener doesn't care what sends: httpx's own transport, and the sidecar's pooled one."""
    transport = httpx.AsyncHTTPTransport() if request.param == "httpx" else AsyncHTTP1Transport()
    async with transport:
        yield transport


@pytest.fixture
async def proxy(mesh: meshlib.Mesh, sender: httpx.AsyncBaseTransport) -> AsyncIterator[HttpServer]:
    async with serving(outbound_handler(mesh, sender)) as server:
        yield server


def echoed(body: bytes) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(body)
    payload["header_map"] = {k: v for k, v in payload["headers"]}
    return payload


# --- request forms ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET http://app/api/x?q=1 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
        b"GET /api/x?q=1 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
        b"GET http://app/api/x?q=1 HTTP/1.1\r\nHost: elsewhere\r\nConnection: close\r\n\r\n",  # Host replaced
    ],
    ids=["absolute", "origin", "absolute-overrides-host"],
)
async def test_absolute_and_origin_form_reach_the_routed_upstream(proxy: HttpServer, request_head: bytes) -> None:
    got = await exchange(proxy, request_head)
    [response] = parse_responses(got.data)
    assert response.status == 200
    payload = echoed(response.body)
    assert (payload["method"], payload["path"], payload["query"]) == ("GET", "/api/x", "q=1")
    assert payload["header_map"]["host"] == "app"
    assert got.closed


async def test_hop_by_hop_headers_are_not_forwarded(proxy: HttpServer) -> None:
    head = (
        b"GET /h HTTP/1.1\r\nHost: app\r\nConnection: close, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: 5\r\n"
        b"Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\n"
        b"Proxy-Authorization: Basic eDp5\r\nX-Kept: yes\r\n\r\n"
    )
    [response] = parse_responses((await exchange(proxy, head)).data)
    sent = {k for k, _ in echoed(response.body)["headers"]}
    assert "x-kept" in sent
    dropped = {"connection", "x-secret-hop", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}
    assert not sent & (dropped | {"proxy-authorization"})


async def test_an_httpx_client_uses_the_listener_as_its_http_proxy(proxy: HttpServer) -> None:
    async with httpx.AsyncClient(proxy=proxy_url(proxy)) as client:
        got = await client.get("http://app/via/proxy", params={"a": "b"})
        posted = await client.post("http://app/post", content=b"payload")
    assert got.status_code == 200
    assert echoed(got.content)["path"] == "/via/proxy"
    assert echoed(got.content)["query"] == "a=b"
    assert echoed(posted.content)["body"] == "payload"


async def test_unknown_but_valid_methods_are_forwarded(proxy: HttpServer) -> None:
    got = await exchange(proxy, b"PURGEX /m HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
    [response] = parse_responses(got.data)
    assert echoed(response.body)["method"] == "PURGEX"


async def test_http10_client_gets_close_delimited_or_keep_alive(proxy: HttpServer) -> None:
    got = await exchange(proxy, b"GET /stream HTTP/1.0\r\nHost: app\r\n\r\n")
    assert got.data.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in got.data.lower()
    assert got.data.endswith(b"one,two,three")
    assert got.closed
    # HTTP/1.0 with keep-alive: two answers on one connection
    request = b"GET /a HTTP/1.0\r\nHost: app\r\nConnection: keep-alive\r\n\r\n"
    got = await exchange(proxy, [request, request.replace(b"keep-alive", b"close")], pause=0.2)
    first, second = parse_responses(got.data)
    assert first.headers["connection"] == "keep-alive"
    assert (echoed(first.body)["path"], echoed(second.body)["path"]) == ("/a", "/a")


# --- keep-alive and pipelining ------------------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order_on_one_connection(proxy: HttpServer) -> None:
    pipelined = (
        b"GET /first HTTP/1.1\r\nHost: app\r\n\r\n"
        b"POST /second HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /third HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"GET /fourth HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
    )
    got = await exchange(proxy, pipelined)
    responses = parse_responses(got.data)
    assert [echoed(r.body)["path"] for r in responses] == ["/first", "/second", "/third", "/fourth"]
    assert [echoed(r.body)["body"] for r in responses] == ["", "hello", "abc", ""]
    assert got.closed


async def test_keep_alive_connection_serves_requests_one_after_another(proxy: HttpServer) -> None:
    host, port = proxy.address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for i in range(3):
            writer.write(b"GET /k%d HTTP/1.1\r\nHost: app\r\n\r\n" % i)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            assert echoed(body)["path"] == f"/k{i}"
            assert proxy.connections == 1
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_connection_s_requests_are_served_by_one_task_that_ends_with_the_connection() -> None:
    """A task per connection, not per request (cheaper); it waits between requests and ends when the client goes."""
    served_by: list[asyncio.Task[Any] | None] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        served_by.append(asyncio.current_task())
        return httpx.Response(200, content=request.url.path.encode())

    async with serving(handler) as server:
        host, port = server.address
        reader, writer = await asyncio.open_connection(host, port)
        for i in range(3):
            writer.write(b"GET /k%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            await asyncio.wait_for(reader.readuntil(b"/k%d" % i), 5)
        worker = served_by[0]
        assert worker is not None
        assert served_by == [worker] * 3
        assert not worker.done()  # waiting for the connection's next request
        writer.close()
        await writer.wait_closed()
        await _eventually(worker.done)
        assert (server.connections, server.in_flight) == (0, 0)


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 5)


async def test_a_cancellation_a_request_leaves_behind_never_reaches_the_next_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each request starts with no cancellation pending or counted, as in a task of its own.

    A cancellation the handler took without ``uncancel()`` would otherwise
    make the next request's own stray CancelledError look like the server's
    (dropped unanswered) rather than the handler bug it is (a 500, logged).
    """

    async def handler(request: httpx.Request) -> httpx.Response:
        task = asyncio.current_task()
        assert task is not None
        if request.url.path == "/cancel-self":  # requested as the request ends: nothing of it awaits again
            task.cancel()
        elif request.url.path == "/swallow":  # taken, never taken back
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
        elif request.url.path == "/escape":
            raise asyncio.CancelledError
        return httpx.Response(200, content=request.url.path.encode())

    caplog.set_level(logging.ERROR, logger="meshlib")
    async with serving(handler) as server:
        host, port = server.address
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for path in (b"/cancel-self", b"/next", b"/swallow"):
                writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
                head = await asyncio.wait_for(reader.readuntil(path), 5)
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            writer.write(b"GET /escape HTTP/1.1\r\nHost: x\r\n\r\n")
            [response] = parse_responses(await _until_closed(reader))
        finally:
            writer.close()
            await writer.wait_closed()
    assert response.status == 500
    assert [r.getMessage() for r in caplog.records if r.name == "meshlib"] == [
        "outbound listener: unexpected error handling GET http://x/escape"
    ]


async def test_a_request_pipelined_behind_one_that_left_a_cancellation_is_still_answered() -> None:
    """The worker ends with the request that left the cancellation; the request queued behind it gets a new one."""

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/swallow":
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
        return httpx.Response(200, content=request.url.path.encode())

    async with serving(handler) as server:
        got = await exchange(
            server,
            b"GET /swallow HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    assert [(r.status, r.body) for r in parse_responses(got.data)] == [(200, b"/swallow"), (200, b"/after")]
    assert got.closed


async def test_a_request_handed_to_the_worker_but_not_started_when_the_connection_drops_is_not_left_in_flight() -> None:
    """Dropped unstarted (closed, so never reported as un-awaited), and no longer counted in flight."""
    async with serving(Gate()) as server:
        conn = _DownstreamConnection(server, asyncio.get_running_loop())
        started = False

        async def request() -> None:
            nonlocal started
            started = True

        conn._run(request())  # the worker's first step is still to come
        assert server.in_flight == 1
        conn.connection_lost(None)
        await asyncio.sleep(0)
        assert (started, server.in_flight) == (False, 0)


# --- bodies ----------------------------------------------------------------------------------------------------------


async def test_chunked_response_for_http11_and_content_length_kept(proxy: HttpServer) -> None:
    got = await exchange(proxy, b"GET /stream HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
    [response] = parse_responses(got.data)
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.body == b"one,two,three"
    got = await exchange(proxy, b"GET /download?size=1000&length=1 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
    [response] = parse_responses(got.data)
    assert response.headers["content-length"] == "1000"
    assert "transfer-encoding" not in response.headers
    assert len(response.body) == 1000


async def test_head_and_204_have_no_body(proxy: HttpServer) -> None:
    pipelined = (
        b"HEAD /download?size=1000&length=1 HTTP/1.1\r\nHost: app\r\n\r\n"
        b"GET /204 HTTP/1.1\r\nHost: app\r\n\r\n"
        b"GET /last HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
    )
    got = await exchange(proxy, pipelined)
    head, no_content, last = parse_responses(got.data, ["HEAD", "GET", "GET"])
    assert (head.status, head.headers["content-length"], head.body) == (200, "1000", b"")
    assert (no_content.status, no_content.body) == (204, b"")
    assert "content-length" not in no_content.headers
    assert echoed(last.body)["path"] == "/last"  # the framing held: nothing of a body was mistaken for a response


async def test_large_bodies_stream_both_ways(proxy: HttpServer) -> None:
    block = bytes(range(256)) * 256
    expected = hashlib.sha256()
    for _ in range(BIG // len(block)):
        expected.update(block)

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(BIG // len(block)):
            yield block

    async with httpx.AsyncClient(proxy=proxy_url(proxy), timeout=30) as client:
        up = await client.post("http://app/upload", content=upload())  # chunked
        assert up.json() == {"size": BIG, "sha256": expected.hexdigest()}
        for length in ("1", "0"):
            async with client.stream("GET", f"http://app/download?size={BIG}&length={length}") as down:
                digest = hashlib.sha256()
                size = 0
                async for chunk in down.aiter_raw():
                    digest.update(chunk)
                    size += len(chunk)
            assert (size, digest.hexdigest()) == (BIG, expected.hexdigest())
            assert ("content-length" in down.headers) == (length == "1")


async def test_a_large_content_length_body_upload_streams(proxy: HttpServer) -> None:
    data = bytes(range(256)) * (4 * 1024)  # 1 MiB with a Content-Length: streamed, not buffered
    async with httpx.AsyncClient(proxy=proxy_url(proxy), timeout=30) as client:
        up = await client.post("http://app/upload", content=data)
    assert up.json() == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


async def test_small_bodies_are_buffered_for_replay_and_large_ones_stream() -> None:
    seen: list[tuple[type, int]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        stream_type = type(request.stream)  # aread() replaces the stream with the bytes it read
        body = await request.aread()
        seen.append((stream_type, len(body)))
        return httpx.Response(200, content=b"ok")

    async with serving(handler) as server, httpx.AsyncClient(proxy=proxy_url(server)) as client:
        await client.post("http://x/", content=b"a" * 65536)
        await client.post("http://x/", content=b"a" * 65537)

        async def chunks() -> AsyncIterator[bytes]:
            yield b"abc"

        await client.post("http://x/", content=chunks())
    assert seen[0] == (httpx.ByteStream, 65536)
    assert seen[1][0] is not httpx.ByteStream
    assert seen[1][1] == 65537
    assert seen[2][0] is not httpx.ByteStream


async def test_a_streamed_body_is_never_buffered_whole_while_the_engine_is_behind() -> None:
    reading = asyncio.Event()
    sizes: list[int] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        await reading.wait()
        total = 0
        async for chunk in request.stream:  # type: ignore[union-attr]
            total += len(chunk)
        return httpx.Response(200, content=b"%d" % total)

    async with serving(slow) as server:
        host, port = server.address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % BIG)
        block = b"z" * 65536
        sent = 0

        async def push() -> None:
            nonlocal sent
            while sent < BIG:
                writer.write(block)
                sent += len(block)
                await writer.drain()

        pusher = asyncio.create_task(push())
        await asyncio.sleep(0.5)  # the client is blocked by now: the proxy stopped reading
        conn = next(iter(server._connections))
        assert conn._body is not None
        sizes.append(conn._body.size)
        assert sent < BIG
        reading.set()
        await asyncio.wait_for(pusher, 30)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 200")
        writer.close()
        await writer.wait_closed()
    assert sizes[0] <= 512 * 1024


async def test_a_slow_client_pauses_the_response_body() -> None:
    produced = 0

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            nonlocal produced
            block = b"r" * 65536
            while produced < 1024 * 1024 * 1024:
                produced += len(block)
                yield block

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Endless())

    async with serving(handler) as server:
        host, port = server.address
        reader, writer = await asyncio.open_connection(host, port, limit=65536)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.5)  # not reading: the socket buffers fill and the proxy must stop pulling the body
        assert produced < 64 * 1024 * 1024
        writer.close()
        await writer.wait_closed()
        await _eventually(lambda: server.in_flight == 0)


@pytest.mark.parametrize("size", [10, 100_000], ids=["buffered", "streamed"])
async def test_expect_100_continue_is_answered_before_the_body(counter: Counter, size: int) -> None:
    async with serving(counter) as server:
        host, port = server.address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"PUT /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % size)
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"b" * size)
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert final.startswith(b"HTTP/1.1 200")
        writer.close()
        await writer.wait_closed()
    assert counter.bodies == [b"b" * size]
    assert "expect" not in counter.requests[0].headers


# --- errors ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (RouteNotFoundError("no route"), 404, "route_not_found"),
        (RateLimitedError("slow down"), 429, "rate_limited"),
        (CircuitOpenError("open"), 503, "circuit_open"),
        (OverloadedError("busy"), 503, "overloaded"),
        (NoHealthyUpstreamError("none"), 503, "no_healthy_upstream"),
        (UpstreamConnectError("refused"), 503, "upstream_connect_failure"),
        (UpstreamResetError("reset"), 502, "upstream_reset"),
        (RequestTimeoutError("slow"), 504, "timeout"),
        # passthrough traffic: httpx's own errors straight from the sender
        (httpx.ConnectError("refused"), 503, "upstream_connect_failure"),
        (httpx.ConnectTimeout("slow connect"), 503, "upstream_connect_failure"),
        (httpx.ReadTimeout("slow"), 504, "timeout"),
        (httpx.RemoteProtocolError("garbage"), 502, "upstream_reset"),
        (httpx.ReadError("reset"), 502, "upstream_reset"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
async def test_errors_become_mesh_error_responses(error: Exception, status: int, code: str) -> None:
    async def failing(request: httpx.Request) -> httpx.Response:
        raise error

    request = b"GET /e HTTP/1.1\r\nHost: x\r\n\r\nHEAD /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with serving(failing) as server:
        got = await exchange(server, request)
    get, head = parse_responses(got.data, ["GET", "HEAD"])
    assert (get.status, get.headers["x-meshlib-error"]) == (status, code)
    assert get.body.startswith(code.encode() + b": ")
    assert (head.status, head.body) == (status, b"")  # the keep-alive connection went on after the error


async def test_an_unexpected_exception_is_a_500_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request: httpx.Request) -> httpx.Response:
        raise ValueError("bug")

    caplog.set_level(logging.ERROR, logger="meshlib")
    async with serving(broken) as server:
        got = await exchange(server, b"GET /e HTTP/1.1\r\nHost: x\r\n\r\n")
    [response] = parse_responses(got.data)
    assert response.status == 500
    assert "x-meshlib-error" not in response.headers
    records = [r for r in caplog.records if r.name == "meshlib"]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert got.closed


async def test_a_body_that_fails_midway_aborts_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Failing(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"x" * 100_000  # big enough to be written before the failure
            raise ValueError("bug mid-body")

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-length": "200000"}, stream=Failing())

    caplog.set_level(logging.ERROR, logger="meshlib")
    async with serving(handler) as server:
        got = await exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert got.closed
    assert got.data.startswith(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(Exception, match=r"(?i)truncated|incomplete|peer closed"):
        parse_responses(got.data)
    assert len([r for r in caplog.records if r.name == "meshlib" and r.exc_info]) == 1


async def test_response_hop_by_hop_headers_are_dropped_and_do_not_close_the_client() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        headers = [
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "close"),
            ("trailer", "x-t"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ]
        return httpx.Response(200, headers=headers, content=b"ok")

    async with serving(handler) as server:
        two = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        got = await exchange(server, two)
    first, second = parse_responses(got.data)
    assert first.header_list == [("x-kept", "yes"), ("content-length", "2")]  # and the connection went on
    assert second.body == b"ok"


@pytest.mark.parametrize(
    ("cluster", "behaviour", "requests", "expected"),
    [
        (None, None, 1, [(404, "route_not_found")]),
        ({"rate_limit": {"rate": "1/minute"}}, "ok", 2, [(200, None), (429, "rate_limited")]),
        (
            {"circuit_breaker": {"failure_threshold": 1}, "retry": {"attempts": 1}},
            "closed-port",
            2,
            [(503, "upstream_connect_failure"), (503, "circuit_open")],
        ),
        ({"retry": {"attempts": 1}}, "closed-port", 1, [(503, "upstream_connect_failure")]),
        ({"retry": {"attempts": 1}}, "close-before-response", 1, [(502, "upstream_reset")]),
        ({"retry": {"attempts": 1}, "timeout": "150ms"}, "stall", 1, [(504, "timeout")]),
    ],
    ids=["route_not_found", "rate_limited", "circuit_open", "connect_failure", "upstream_reset", "timeout"],
)
async def test_mesh_errors_from_the_real_engine(
    make_mesh: MakeMesh,
    upstream: RunningServer,
    free_port: int,
    cluster: dict[str, Any] | None,
    behaviour: str | None,
    requests: int,
    expected: list[tuple[int, str | None]],
) -> None:
    handlers = {"close-before-response": close_before_response, "stall": stall}
    with raw_server(handlers.get(behaviour or "", close_before_response)) as raw:
        endpoint = {"ok": upstream.url, "closed-port": f"http://127.0.0.1:{free_port}"}.get(behaviour or "", raw.url)
        config: dict[str, Any] = {"outbound_policy": "registry_only", "clusters": {}, "allow_empty": True}
        if cluster is not None:
            config["clusters"]["svc"] = {"endpoints": [endpoint], **cluster}
        mesh = make_mesh(config)
        async with httpx.AsyncHTTPTransport() as sender, serving(outbound_handler(mesh, sender)) as server:
            one = b"GET http://svc/x HTTP/1.1\r\nHost: svc\r\n\r\n"
            last = b"GET http://svc/x HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"
            got = await exchange(server, one * (requests - 1) + last)
    responses = parse_responses(got.data)
    assert [(r.status, r.headers.get("x-meshlib-error")) for r in responses] == expected
    if expected[0][1] is not None and expected[0][0] != 404:
        assert responses[0].headers["x-meshlib-cluster"] == "svc"


async def test_passthrough_connect_failure_is_503(make_mesh: MakeMesh, free_port: int) -> None:
    mesh = make_mesh({"outbound_policy": "allow_any", "allow_empty": True})
    async with httpx.AsyncHTTPTransport() as sender, serving(outbound_handler(mesh, sender)) as server:
        got = await exchange(
            server, b"GET http://127.0.0.1:%d/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % free_port
        )
    [response] = parse_responses(got.data)
    assert (response.status, response.headers["x-meshlib-error"]) == (503, "upstream_connect_failure")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_an_upstream_that_dies_mid_body_aborts_the_client_response(make_mesh: MakeMesh, framing: str) -> None:
    def die_chunked(conn: Any, stop: Any) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")

    with raw_server(close_mid_body if framing == "content-length" else die_chunked) as raw:
        mesh = make_mesh({"clusters": {"svc": {"endpoints": [raw.url], "retry": {"attempts": 1}}}})
        async with httpx.AsyncHTTPTransport() as sender, serving(outbound_handler(mesh, sender)) as server:
            got = await exchange(server, b"GET /x HTTP/1.1\r\nHost: svc\r\n\r\n")
    assert got.closed
    assert got.data.startswith(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(Exception, match=r"(?i)truncated|incomplete|peer closed"):
        parse_responses(got.data)
    if framing == "chunked":
        assert not got.data.endswith(b"0\r\n\r\n")


# --- inbound --------------------------------------------------------------------------------------------------------


async def test_inbound_forwards_to_the_local_app_keeping_path_query_and_host(
    make_mesh: MakeMesh, upstream: RunningServer
) -> None:
    mesh = make_mesh({"allow_empty": True})
    async with httpx.AsyncHTTPTransport() as sender, serving(inbound_handler(mesh, upstream.url, sender)) as server:
        got = await exchange(server, b"GET /in/x?y=2 HTTP/1.1\r\nHost: reviews.mesh\r\nConnection: close\r\n\r\n")
    [response] = parse_responses(got.data)
    payload = echoed(response.body)
    assert (payload["path"], payload["query"], payload["header_map"]["host"]) == ("/in/x", "y=2", "reviews.mesh")


# --- drain, close and counters ----------------------------------------------------------------------------------------


class Gate:
    """A handler that holds each request until released."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.entered.set()
        await self.release.wait()
        return httpx.Response(200, content=b"done")


async def test_counters_follow_connections_and_requests_in_flight() -> None:
    gate = Gate()
    async with serving(gate) as server:
        host, port = server.address
        assert (server.connections, server.in_flight) == (0, 0)
        reader, writer = await asyncio.open_connection(host, port)
        _, idle_writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(gate.entered.wait(), 5)
        assert (server.connections, server.in_flight) == (2, 1)
        gate.release.set()
        await reader.readuntil(b"done")
        await _eventually(lambda: server.in_flight == 0)
        for w in (writer, idle_writer):
            w.close()
            await w.wait_closed()
        await _eventually(lambda: server.connections == 0)


async def _eventually(condition: Any, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_drain_closes_idle_connections_and_lets_requests_in_flight_finish() -> None:
    gate = Gate()
    async with serving(gate) as server:
        host, port = server.address
        busy_reader, busy_writer = await asyncio.open_connection(host, port)
        idle_reader, idle_writer = await asyncio.open_connection(host, port)
        busy_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(gate.entered.wait(), 5)
        await _eventually(lambda: server.connections == 2)
        draining = asyncio.create_task(server.drain(10))
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # the idle one is closed at once
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, port)
        assert not draining.done()
        gate.release.set()
        answer = await asyncio.wait_for(busy_reader.read(), 5)  # answered, then closed
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"connection: close\r\n" in answer
        for w in (busy_writer, idle_writer):  # the client closes its side too, as clients do after close
            w.close()
            await w.wait_closed()
        assert await asyncio.wait_for(draining, 5) is True
        assert server.connections == 0


async def test_drain_past_its_timeout_aborts_what_is_left() -> None:
    gate = Gate()
    async with serving(gate) as server:
        host, port = server.address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(gate.entered.wait(), 5)
        assert await server.drain(0.2) is False
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        assert (server.connections, server.in_flight) == (0, 0)
        writer.close()
        await writer.wait_closed()


async def test_close_aborts_everything_now() -> None:
    gate = Gate()
    async with serving(gate) as server:
        host, port = server.address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(gate.entered.wait(), 5)
        await server.close()
        assert (server.connections, server.in_flight) == (0, 0)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()


async def test_a_reload_is_seen_by_the_next_request(make_mesh: MakeMesh, upstream: RunningServer) -> None:
    mesh = make_mesh({"outbound_policy": "registry_only", "allow_empty": True})
    async with httpx.AsyncHTTPTransport() as sender, serving(outbound_handler(mesh, sender)) as server:
        request = b"GET /r HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
        before = parse_responses((await exchange(server, request)).data)
        mesh.reload(meshlib.MeshConfig.from_dict({"clusters": {"app": {"endpoints": [upstream.url]}}}))
        after = parse_responses((await exchange(server, request)).data)
    assert before[0].status == 404
    assert after[0].status == 200
