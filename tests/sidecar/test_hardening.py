"""Malformed and hostile requests, raw bytes over a socket: refused whole, connection closed, nothing forwarded.

Every malformed request is followed on the same connection by a valid one:
if the listener read the poisoned request differently than a strict parser
would (the root of request smuggling), that second request would reach the
upstream. It must not: the counting handler stands for the upstream.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import httpx
import pytest

from meshlib._frontdoors.sidecar_listeners import outbound_handler
from tests.conftest import MakeMesh, raw_server, read_request_head
from tests.sidecar.conftest import Counter, exchange, limits, parse_responses, serving

pytestmark = pytest.mark.anyio

FOLLOW_UP = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
CLOSE = b"\r\nConnection: close"


def req(head: bytes, body: bytes = b"") -> bytes:
    return head + b"\r\n\r\n" + body


MALFORMED: list[tuple[str, bytes, int]] = [
    # framing: Content-Length and Transfer-Encoding
    (
        "cl-and-te",
        req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked", b"0\r\n\r\n"),
        400,
    ),
    (
        "te-and-cl",
        req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 6", b"0\r\n\r\n"),
        400,
    ),
    ("two-cl", req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 5", b"abcde"), 400),
    ("two-equal-cl", req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3", b"abc"), 400),
    ("cl-list", req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3", b"abc"), 400),
    ("cl-plus", req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3", b"abc"), 400),
    ("cl-negative", req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1"), 400),
    ("cl-hex", req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3", b"abc"), 400),
    ("cl-empty", req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: "), 400),
    ("cl-huge", req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999"), 400),
    ("te-gzip", req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip", b"abc"), 501),
    ("te-gzip-chunked", req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked", b"0\r\n\r\n"), 501),
    ("te-unknown", req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked", b"0\r\n\r\n"), 501),
    ("te-chunked-not-last", req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip", b"0\r\n\r\n"), 400),
    ("te-chunked-twice", req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked", b"0\r\n\r\n"), 400),
    (
        "te-two-headers",
        req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked", b"0\r\n\r\n"),
        400,
    ),
    ("te-empty-element", req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked", b"0\r\n\r\n"), 400),
    ("te-quoted", req(b'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "chunked"', b"0\r\n\r\n"), 400),
    ("te-on-http10", req(b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked", b"0\r\n\r\n"), 400),
    # chunked framing (the body is read before anything is answered)
    (
        "chunk-size-not-hex",
        req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked", b"zz\r\nabc\r\n0\r\n\r\n"),
        400,
    ),
    (
        "chunk-size-negative",
        req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked", b"-3\r\nabc\r\n0\r\n\r\n"),
        400,
    ),
    (
        "chunk-size-space",
        req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked", b" 3\r\nabc\r\n0\r\n\r\n"),
        400,
    ),
    (
        "chunk-size-overflow",
        req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked", b"fffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
        400,
    ),
    ("chunk-bare-lf", req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked", b"3\nabc\n0\n\n"), 400),
    (
        "chunk-too-long",
        req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked", b"3\r\nabcdef\r\n0\r\n\r\n"),
        400,
    ),
    (
        "chunk-bad-trailer",
        req(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked", b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n"),
        400,
    ),
    # characters in header names and values
    ("nul-in-value", req(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b"), 400),
    ("ctl-in-value", req(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b"), 400),
    ("del-in-value", req(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb"), 400),
    ("cr-in-value", req(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb"), 400),
    ("lf-in-value", req(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nb: c"), 400),
    ("nul-in-name", req(b"GET / HTTP/1.1\r\nHost: a\r\nX\x00Y: b"), 400),
    ("space-before-colon", req(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 3", b"abc"), 400),
    ("tab-before-colon", req(b"GET / HTTP/1.1\r\nHost: a\r\nX\t: b"), 400),
    ("space-in-name", req(b"GET / HTTP/1.1\r\nHost: a\r\nX Y: b"), 400),
    ("name-not-token", req(b"GET / HTTP/1.1\r\nHost: a\r\nX@Y: b"), 400),
    ("empty-name", req(b"GET / HTTP/1.1\r\nHost: a\r\n: b"), 400),
    ("no-colon", req(b"GET / HTTP/1.1\r\nHost: a\r\nNoColon"), 400),
    ("obs-fold", req(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b"), 400),
    ("obs-fold-tab", req(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb"), 400),
    ("space-before-first-header", req(b"GET / HTTP/1.1\r\n Host: a"), 400),
    # line ends
    ("bare-lf", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare-lf-in-headers", req(b"GET / HTTP/1.1\r\nHost: a\nX: b"), 400),
    ("bare-cr", req(b"GET / HTTP/1.1\rHost: a"), 400),
    # request line
    ("method-not-token", req(b"G(T / HTTP/1.1\r\nHost: a"), 400),
    ("method-with-nul", req(b"GE\x00T / HTTP/1.1\r\nHost: a"), 400),
    ("double-space", req(b"GET  / HTTP/1.1\r\nHost: a"), 400),
    ("trailing-space", req(b"GET / HTTP/1.1 \r\nHost: a"), 400),
    ("space-in-target", req(b"GET /a b HTTP/1.1\r\nHost: a"), 400),
    ("fragment", req(b"GET /a#b HTTP/1.1\r\nHost: a"), 400),
    ("ctl-in-target", req(b"GET /\x01 HTTP/1.1\r\nHost: a"), 400),
    ("high-byte-in-target", req(b"GET /\xff HTTP/1.1\r\nHost: a"), 400),
    ("asterisk-on-get", req(b"GET * HTTP/1.1\r\nHost: a"), 400),
    ("ftp-scheme", req(b"GET ftp://a/x HTTP/1.1\r\nHost: a"), 400),
    ("relative-target", req(b"GET x/y HTTP/1.1\r\nHost: a"), 400),
    ("authority-on-get", req(b"GET a:80 HTTP/1.1\r\nHost: a"), 400),
    ("userinfo", req(b"GET http://u@a/ HTTP/1.1\r\nHost: a"), 400),
    ("empty-authority", req(b"GET http:///x HTTP/1.1\r\nHost: a"), 400),
    ("connect-origin-form", req(b"CONNECT /x HTTP/1.1\r\nHost: a"), 400),
    ("connect-without-port", req(b"CONNECT a HTTP/1.1\r\nHost: a"), 400),
    ("http09", b"GET /\r\n\r\n", 400),
    ("http20", req(b"GET / HTTP/2.0\r\nHost: a"), 505),
    ("http12", req(b"GET / HTTP/1.2\r\nHost: a"), 505),
    ("lowercase-version", req(b"GET / http/1.1\r\nHost: a"), 400),
    ("version-garbage", req(b"GET / HTTP/one\r\nHost: a"), 400),
    # Host
    ("missing-host", req(b"GET / HTTP/1.1\r\nX: a"), 400),
    ("duplicate-host", req(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b"), 400),
    ("host-with-space", req(b"GET / HTTP/1.1\r\nHost: a b"), 400),
    ("host-with-slash", req(b"GET / HTTP/1.1\r\nHost: a/b"), 400),
    ("host-bad-port", req(b"GET / HTTP/1.1\r\nHost: a:99999"), 400),
    # sizes
    ("request-line-too-long", req(b"GET /" + b"a" * (17 * 1024) + b" HTTP/1.1\r\nHost: a"), 414),
    ("header-block-too-large", req(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * (61 * 1024)), 431),
    ("too-many-headers", req(b"GET / HTTP/1.1\r\nHost: a" + b"".join(b"\r\nX-%d: v" % i for i in range(101))), 431),
]


@pytest.mark.parametrize(
    ("raw", "status"), [(raw, status) for _, raw, status in MALFORMED], ids=[m[0] for m in MALFORMED]
)
async def test_malformed_requests_are_refused_and_nothing_is_forwarded(
    counter: Counter, raw: bytes, status: int
) -> None:
    async with serving(counter) as server:
        got = await exchange(server, raw + FOLLOW_UP)
        [response] = parse_responses(got.data)  # one answer only: the follow-up was never read as a request
        assert response.status == status
        assert response.headers["connection"] == "close"
        assert got.closed
        assert counter.count == 0
        # the listener is fine: a valid request on a new connection is served
        again = await exchange(server, b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert [r.status for r in parse_responses(again.data)] == [200]
        assert counter.count == 1


@pytest.mark.parametrize(
    "raw",
    [
        req(b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked" + CLOSE, b"0\r\n\r\n"),
        req(b"OPTIONS * HTTP/1.1\r\nHost: a" + CLOSE),
        req(b"get / HTTP/1.1\r\nHost: a" + CLOSE),  # a lowercase method is just an unknown method
        req(b"GET / HTTP/1.0"),  # origin form needs a Host, whatever the version (400 below)
        req(b"GET http://a:8080/x?y HTTP/1.0"),  # absolute form on HTTP/1.0: no Host needed
        req(b"GET /x HTTP/1.1\r\nHost: [::1]:8080" + CLOSE),
        req(b"GET /x HTTP/1.1\r\nHost: a\r\nX: tab\tinside, obs-text \xe9" + CLOSE),
        req(b"GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked" + CLOSE, b"3;e=1\r\nabc\r\n0\r\nT: 1\r\n\r\n"),
        b"\r\n" + req(b"GET /x HTTP/1.1\r\nHost: a" + CLOSE),  # an empty line before the request line is ignored
        req(b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 000" + CLOSE),
    ],
    ids=["chunked-get", "options-asterisk", "lowercase-method", "http10", "http10-absolute", "ipv6-host", "value-chars",
         "chunk-extension-and-trailer", "leading-empty-line", "cl-leading-zeros"],
)  # fmt: skip
async def test_unusual_but_valid_requests_are_served(counter: Counter, raw: bytes) -> None:
    async with serving(counter) as server:
        got = await exchange(server, raw)
    statuses = [r.status for r in parse_responses(got.data)]
    if raw.startswith(b"GET / HTTP/1.0\r\n\r\n"):
        assert statuses == [400]  # origin form needs a Host, whatever the version
        assert counter.count == 0
        return
    assert statuses == [200]
    assert counter.count == 1


async def test_cl_te_smuggling_does_not_reach_the_upstream_as_two_requests(
    make_mesh: MakeMesh, upstreams: dict[str, str]
) -> None:
    """The classic CL.TE attack against a real upstream: the upstream must see no request at all."""
    seen: list[bytes] = []

    def record(conn: socket.socket, stop: threading.Event) -> None:
        seen.append(read_request_head(conn, timeout=1.0))

    with raw_server(record) as upstream:
        mesh = make_mesh({"clusters": {"svc": {"endpoints": [upstream.url]}}})
        async with httpx.AsyncHTTPTransport() as sender, serving(outbound_handler(mesh, sender)) as server:
            attack = (
                b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: svc\r\n\r\n"
            )
            got = await exchange(server, attack)
    assert [r.status for r in parse_responses(got.data)] == [400]
    assert seen == []


async def test_a_bad_chunk_after_the_head_was_forwarded_fails_that_request_only(counter: Counter) -> None:
    """A chunked body streams, so its head reaches the handler first; the bad chunk then fails it, and closes."""
    raw = req(b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked", b"3\r\nabc\r\nxyz\r\n") + FOLLOW_UP
    async with serving(counter) as server:
        got = await exchange(server, raw)
    assert [r.status for r in parse_responses(got.data)] == [400]
    assert got.closed
    assert counter.count == 0  # the handler's read of the body failed: no complete request went anywhere


async def test_a_header_block_over_the_configured_limit_is_431(counter: Counter) -> None:
    async with serving(counter, limits=limits(max_request_headers_kb=1)) as server:
        ok = await exchange(server, req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX: " + b"v" * 900))
        big = await exchange(server, req(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 1100))
    assert [r.status for r in parse_responses(ok.data)] == [200]
    assert [r.status for r in parse_responses(big.data)] == [431]


async def test_an_oversized_head_is_refused_before_it_ends(counter: Counter) -> None:
    """A head that never ends is cut off once it is over the limit, not buffered without bound."""
    async with serving(counter, limits=limits(max_request_headers_kb=1)) as server:
        line = await exchange(server, b"GET /" + b"a" * (20 * 1024))  # no CRLF at all
        block = await exchange(server, b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * (20 * 1024))
    assert [r.status for r in parse_responses(line.data)] == [414]
    assert [r.status for r in parse_responses(block.data)] == [431]
    assert line.closed
    assert block.closed


async def test_a_bare_lf_is_refused_before_the_head_ends(counter: Counter) -> None:
    async with serving(counter) as server:
        got = await exchange(server, b"GET / HTTP/1.1\nHost: a\n", within=2.0)
    assert [r.status for r in parse_responses(got.data)] == [400]
    assert got.closed


# --- slow and idle clients --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pieces",
    [
        [b""],  # connects and sends nothing
        [b"GET / HTTP/1.1\r\nHost:"],  # stops mid-head
        [b"GET / HT", b"TP/1.1\r\n", b"Host: a\r\n", b"X: 1\r\n", b"X: 2\r\n", b"X: 3\r\n"],  # a byte now and then
    ],
    ids=["silent", "stalled", "drip"],
)
async def test_header_timeout_answers_408_and_closes(counter: Counter, pieces: list[bytes]) -> None:
    async with serving(counter, limits=limits(header_timeout="200ms")) as server:
        started = asyncio.get_running_loop().time()
        got = await exchange(server, pieces, pause=0.06, within=5.0)
        elapsed = asyncio.get_running_loop().time() - started
    [response] = parse_responses(got.data)
    assert response.status == 408
    assert got.closed
    assert 0.15 < elapsed < 3.0
    assert counter.count == 0


async def test_header_timeout_counts_from_the_first_byte_of_each_request(counter: Counter) -> None:
    """On a keep-alive connection the idle time between requests is not the header timeout's."""
    async with serving(counter, limits=limits(header_timeout="300ms", idle_timeout="5s")) as server:
        host, port = server.address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(req(b"GET /1 HTTP/1.1\r\nHost: a"))
        await reader.readuntil(b"ok")
        await asyncio.sleep(0.5)  # idle, longer than the header timeout
        writer.write(req(b"GET /2 HTTP/1.1\r\nHost: a"))
        await asyncio.wait_for(reader.readuntil(b"ok"), 2)
        writer.close()
        await writer.wait_closed()
    assert counter.count == 2


async def test_idle_keep_alive_connections_are_closed_after_idle_timeout(counter: Counter) -> None:
    async with serving(counter, limits=limits(idle_timeout="200ms")) as server:
        host, port = server.address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(req(b"GET / HTTP/1.1\r\nHost: a"))
        first = await reader.readuntil(b"ok")
        started = asyncio.get_running_loop().time()
        rest = await asyncio.wait_for(reader.read(), 5)
        elapsed = asyncio.get_running_loop().time() - started
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.05)
        assert server.connections == 0
    assert first.startswith(b"HTTP/1.1 200")
    assert rest == b""  # closed quietly: no request was started
    assert 0.15 < elapsed < 3.0


async def test_a_stalled_request_body_times_out(counter: Counter) -> None:
    async with serving(counter, limits=limits(idle_timeout="200ms")) as server:
        got = await exchange(server, req(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10", b"abc"), within=5.0)
    assert [r.status for r in parse_responses(got.data)] == [408]
    assert counter.count == 0


async def test_connections_beyond_max_connections_are_closed_at_once(counter: Counter) -> None:
    async with serving(counter, limits=limits(max_connections=2)) as server:
        host, port = server.address
        held = [await asyncio.open_connection(host, port) for _ in range(2)]
        for _ in range(200):
            if server.connections == 2:
                break
            await asyncio.sleep(0.01)
        assert server.connections == 2
        refused = await exchange(server, req(b"GET / HTTP/1.1\r\nHost: a"), within=2.0)
        assert refused.closed
        assert refused.data == b""  # accepted and closed without a byte
        assert counter.count == 0
        for _, writer in held[:1]:
            writer.close()
            await writer.wait_closed()
        for _ in range(200):
            if server.connections == 1:
                break
            await asyncio.sleep(0.01)
        served = await exchange(server, req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close"))
        assert [r.status for r in parse_responses(served.data)] == [200]
        for _, writer in held[1:]:
            writer.close()
            await writer.wait_closed()


# --- upstream misbehaviour -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["garbage", "two-lengths", "bad-header", "bad-status"],
)
async def test_a_malformed_upstream_response_is_a_502(make_mesh: MakeMesh, answer: bytes) -> None:
    def answer_badly(conn: socket.socket, stop: threading.Event) -> None:
        read_request_head(conn)
        conn.sendall(answer)

    with raw_server(answer_badly) as upstream:
        mesh = make_mesh({"clusters": {"svc": {"endpoints": [upstream.url], "retry": {"attempts": 1}}}})
        async with httpx.AsyncHTTPTransport() as sender, serving(outbound_handler(mesh, sender)) as server:
            got = await exchange(server, req(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close"))
    [response] = parse_responses(got.data)
    assert (response.status, response.headers["x-meshlib-error"]) == (502, "upstream_reset")


async def test_a_handler_response_with_an_injected_header_is_a_502() -> None:
    async def injecting(request: httpx.Request) -> httpx.Response:
        response = httpx.Response(200, content=b"x")
        response.headers["x-evil"] = "a\r\nSet-Cookie: stolen=1"
        return response

    async with serving(injecting) as server:
        got = await exchange(server, req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close"))
    [response] = parse_responses(got.data)
    assert response.status == 502
    assert "set-cookie" not in response.headers


def test_every_malformed_case_has_a_unique_name() -> None:
    names: Any = [name for name, _, _ in MALFORMED]
    assert len(names) == len(set(names))
