"""Hypothesis throws random bytes and mutated requests at a listener.

The listener runs on uvloop in a thread of its own (as in ``meshlib proxy``);
each example is one connection that sends its bytes and then half-closes. The
listener must answer only well-formed HTTP/1.1 responses (or nothing), must
never forward a request whose head a strict parser would refuse, and must
serve a well-formed request on a new connection afterwards.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
import uvloop
from hypothesis import HealthCheck, event, given, settings, strategies as st

from meshlib._sidecar.server import HttpServer
from tests.sidecar.conftest import limits, parse_responses

TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
ALLOWED_STATUSES = {200, 400, 405, 408, 414, 431, 501, 505}


class Listener:
    """A listener on its own loop in a thread; ``violations`` lists forwarded requests that should not have been."""

    def __init__(self) -> None:
        self.address = ("", 0)
        self.forwarded: list[httpx.Request] = []
        self.violations: list[str] = []

    def __repr__(self) -> str:  # short: Hypothesis prints it with every failing example
        return f"Listener({self.address}, {len(self.forwarded)} forwarded, violations={self.violations})"


def check_forwarded(request: httpx.Request) -> list[str]:
    """What is wrong with a request the listener forwarded (nothing, for a correct listener)."""
    problems = []
    if not TOKEN.fullmatch(request.method):
        problems.append(f"method {request.method!r}")
    if request.url.scheme not in ("http", "https") or not request.url.host:
        problems.append(f"url {request.url!r}")
    hosts = request.headers.get_list("host")
    if len(hosts) != 1:
        problems.append(f"host headers {hosts!r}")
    for name, value in request.headers.raw:
        if not TOKEN.fullmatch(name.decode("latin-1")):
            problems.append(f"header name {name!r}")
        if re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value):
            problems.append(f"header value {value!r}")
    if "content-length" in request.headers and "transfer-encoding" in request.headers:
        problems.append("both Content-Length and Transfer-Encoding")
    return problems


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    loop = uvloop.new_event_loop()
    ready = threading.Event()
    state: dict[str, object] = {}
    result = Listener()

    async def handler(request: httpx.Request) -> httpx.Response:
        await request.aread()
        problems = check_forwarded(request)
        result.forwarded.append(request)
        result.violations.extend(problems)
        return httpx.Response(200, content=b"ok")

    async def start() -> HttpServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        server = HttpServer("fuzz", handler, limits(header_timeout="300ms", idle_timeout="300ms"))
        await server.start(sock)
        return server

    def run() -> None:
        asyncio.set_event_loop(loop)
        state["server"] = loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="fuzz-listener", daemon=True)
    thread.start()
    assert ready.wait(10)
    server = state["server"]
    assert isinstance(server, HttpServer)
    result.address = server.address
    try:
        yield result
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def roundtrip(address: tuple[str, int], data: bytes) -> bytes:
    """Send ``data``, half-close, and read until the listener closes (bounded in time)."""
    received = bytearray()
    with socket.create_connection(address, timeout=3) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the listener refused early and closed: what it sent is still readable, or it reset
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return bytes(received)


def assert_well_formed(data: bytes, sent: bytes) -> None:
    if not data:
        event("closed without an answer")
        return
    responses = parse_responses(data, complete=True)
    if not responses and data == b"HTTP/1.1 100 Continue\r\n\r\n":
        event("closed after 100 Continue")  # the client's body ended early
        return
    assert responses, f"bytes that are no response: {data[:200]!r} (sent {sent[:200]!r})"
    statuses = [r.status for r in responses]
    assert set(statuses) <= ALLOWED_STATUSES, f"{statuses} for {sent[:200]!r}"
    event(f"answered {statuses[-1]}")


def assert_still_serving(listener: Listener) -> None:
    answer = roundtrip(listener.address, b"GET /alive HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert [r.status for r in parse_responses(answer)] == [200]


VALID = [
    b"GET /a?b=c HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n\r\n",
    b"GET http://example:8080/x HTTP/1.1\r\nHost: example\r\nConnection: keep-alive\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"PUT /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\nHost: a\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
]
INTERESTING = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b",", b";", b"0", b"9", b"f", b"-", b"\x7f", b"\xff"]
HEADER_LINES = [
    b"Content-Length: 5",
    b"Content-Length: 0",
    b"Content-Length: 5, 5",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip",
    b"Host: other",
    b" folded",
    b"\tfolded",
    b"Connection: close",
    b"Connection: Upgrade\r\nUpgrade: websocket",
    b"Expect: 100-continue",
    b"X: a\x00b",
    b"X : y",
]


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["insert", "replace", "delete", "header", "duplicate"]))
        at = draw(st.integers(0, len(data)))
        if kind == "insert":
            data[at:at] = draw(st.sampled_from(INTERESTING))
        elif kind == "replace" and at < len(data):
            data[at : at + 1] = draw(st.sampled_from(INTERESTING))
        elif kind == "delete" and at < len(data):
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "header":
            line_end = data.find(b"\r\n")
            if line_end >= 0:
                data[line_end + 2 : line_end + 2] = draw(st.sampled_from(HEADER_LINES)) + b"\r\n"
        else:
            data += bytes(data)  # pipelined twin
    return bytes(data)


FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


END = b"\r\n\r\n"
HTTPISH = st.lists(
    st.one_of(
        st.sampled_from([b"GET", b"POST", b" ", b"/", b"HTTP/1.1", b"HTTP/1.0", b"\r\n", b"Host: a", b":", b"\n"]),
        st.sampled_from([b"Content-Length: ", b"Transfer-Encoding: chunked", b"0\r\n\r\n", b"http://a/", b"*"]),
        st.binary(max_size=8),
    ),
    max_size=30,
).map(b"".join)


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), st.binary(max_size=600).map(lambda b: b + END), HTTPISH))
def test_random_bytes(listener: Listener, data: bytes) -> None:
    assert_well_formed(roundtrip(listener.address, data), data)
    assert listener.violations == []
    assert_still_serving(listener)


@FUZZ
@given(data=mutated_requests())
def test_mutated_requests(listener: Listener, data: bytes) -> None:
    assert_well_formed(roundtrip(listener.address, data), data)
    assert listener.violations == []
    assert_still_serving(listener)


def test_the_valid_seeds_are_forwarded_and_pass_the_check(listener: Listener) -> None:
    """The mutations start from requests that are served: the check on forwarded requests sees real ones."""
    before = len(listener.forwarded)
    for data in VALID:
        answer = roundtrip(listener.address, data)
        statuses = [r.status for r in parse_responses(answer)]
        assert statuses == ([405] if data.startswith(b"CONNECT") else [200] * data.count(b"HTTP/1."))
    assert len(listener.forwarded) - before == sum(data.count(b"HTTP/1.") for data in VALID) - 1
    assert listener.violations == []
