"""``http1.parse_head`` and ``ChunkedDecoder`` on their own: bytes in, a parsed head, body or ProtocolError out.

No sockets and no event loop: the listener's tests (``test_hardening.py``, ``test_fuzz.py``) check the same
refusals over a connection; these pin the exact status and reason of each, the limits at their boundaries, and
(with Hypothesis) that valid heads and chunked bodies round-trip whatever their content and however the bytes
are split.
"""

from __future__ import annotations

import itertools
import re
import string

import pytest
from hypothesis import given, settings, strategies as st

from meshlib._sidecar import http1
from meshlib._sidecar.http1 import (
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    ChunkedDecoder,
    ProtocolError,
    RequestHead,
    parse_head,
)

MAX = 60 * 1024  # the listener's default max_request_headers_kb, in bytes
TOKEN_CHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
# The names parse_head consumes or treats specially (all others are forwarded as they came).
SPECIAL = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "host",
    "content-length",
    "expect",
    "x-meshlib-client",
}
# The decoder's limits (private in http1.py): a chunk-size or trailer line with its CRLF, the trailer section.
CHUNK_LINE = 4096
TRAILERS = 16 * 1024


def refusal(head: bytes, max_header_bytes: int = MAX) -> tuple[int, str]:
    with pytest.raises(ProtocolError) as caught:
        parse_head(head, max_header_bytes)
    assert caught.value.args == (caught.value.reason,)
    return caught.value.status, caught.value.reason


# --- parse_head: valid heads ---------------------------------------------------------------------------------------


def test_origin_form() -> None:
    head = parse_head(b"GET /a/b?c=d&e HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nx-CaSe: KeEp", MAX)
    assert head.method == "GET"
    assert head.url == b"http://example.com/a/b?c=d&e"
    assert head.http11 is True
    assert head.keep_alive is True
    assert head.headers == [(b"Host", b"example.com"), (b"Accept", b"*/*"), (b"x-CaSe", b"KeEp")]
    assert head.content_length is None
    assert head.chunked is False
    assert head.has_body is False
    assert head.connect is None
    assert head.upgrade is False
    assert head.expect_continue is False
    assert head.meshlib_client is False


@pytest.mark.parametrize(
    ("head", "url", "headers"),
    [
        # RFC 9112 §3.2.2: the target's authority replaces Host (in place, the header's name kept)
        (
            b"GET http://a.example:8080/x?y HTTP/1.1\r\nX: 1\r\nhost: b.example\r\nZ: 2",
            b"http://a.example:8080/x?y",
            [(b"X", b"1"), (b"host", b"a.example:8080"), (b"Z", b"2")],
        ),
        (b"GET HTTPS://a/ HTTP/1.1\r\nHost: a", b"https://a/", [(b"Host", b"a")]),  # the scheme is lowercased
        (b"GET http://a HTTP/1.1\r\nHost: a", b"http://a/", [(b"Host", b"a")]),
        (b"GET http://a?q=1 HTTP/1.1\r\nHost: a", b"http://a/?q=1", [(b"Host", b"a")]),
        (b"GET http://[::1]:80/ HTTP/1.1\r\nHost: x", b"http://[::1]:80/", [(b"Host", b"[::1]:80")]),
        (b"GET http://a:/ HTTP/1.1\r\nHost: a", b"http://a:/", [(b"Host", b"a:")]),  # an empty port is valid
        (b"GET http://a/x HTTP/1.0", b"http://a/x", []),  # HTTP/1.0: no Host needed
        (b"GET http://a/x HTTP/1.0\r\nHost:", b"http://a/x", [(b"Host", b"a")]),  # nor a non-empty one
    ],
    ids=["replaces-host", "scheme-case", "no-path", "query-only", "ipv6", "empty-port", "http10", "http10-empty-host"],
)
def test_absolute_form(head: bytes, url: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    parsed = parse_head(head, MAX)
    assert parsed.url == url
    assert parsed.headers == headers
    assert parsed.connect is None


@pytest.mark.parametrize(
    ("target", "connect"),
    [
        (b"example.com:443", ("example.com", 443)),
        (b"10.0.0.1:1", ("10.0.0.1", 1)),
        (b"[::1]:8443", ("::1", 8443)),
        (b"a:65535", ("a", 65535)),
        (b"a:00443", ("a", 443)),
    ],
)
def test_authority_form_for_connect(target: bytes, connect: tuple[str, int]) -> None:
    head = parse_head(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target, MAX)
    assert head.method == "CONNECT"
    assert head.connect == connect
    assert head.url == b"http://" + target
    assert head.headers == [(b"Host", target)]
    assert head.has_body is False


def test_connect_with_a_zero_content_length_has_no_body() -> None:
    head = parse_head(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 0", MAX)
    assert head.connect == ("a", 443)
    assert head.content_length == 0


@pytest.mark.parametrize(("version", "http11"), [(b"1.1", True), (b"1.0", False)])
def test_asterisk_form_for_options(version: bytes, http11: bool) -> None:
    head = parse_head(b"OPTIONS * HTTP/" + version + b"\r\nHost: a:81", MAX)
    assert head.method == "OPTIONS"
    assert head.url == b"http://a:81"
    assert head.http11 is http11


@pytest.mark.parametrize(
    ("method", "expected"),
    [(b"get", "get"), (b"PROPFIND", "PROPFIND"), (b"X-!#$%&'*+.^_`|~9", "X-!#$%&'*+.^_`|~9")],
)
def test_any_token_is_a_method(method: bytes, expected: str) -> None:
    assert parse_head(method + b" / HTTP/1.1\r\nHost: a", MAX).method == expected


@pytest.mark.parametrize(
    ("version", "lines", "keep_alive"),
    [
        (b"1.1", [], True),
        (b"1.1", [b"Connection: close"], False),
        (b"1.1", [b"Connection: Keep-Alive, CLOSE"], False),
        (b"1.1", [b"Connection: keep-alive"], True),
        (b"1.1", [b"Connection: x, y", b"Connection: close"], False),  # Connection lines add up
        (b"1.1", [b"Proxy-Connection: close"], True),  # Proxy-Connection counts on HTTP/1.0 only
        (b"1.0", [], False),
        (b"1.0", [b"Connection: keep-alive"], True),
        (b"1.0", [b"Connection: Keep-Alive"], True),
        (b"1.0", [b"Connection: keep-alive, close"], False),
        (b"1.0", [b"Proxy-Connection: keep-alive"], True),
        (b"1.0", [b"Proxy-Connection: keep-alive", b"Connection: close"], False),
        (b"1.0", [b"Keep-Alive: timeout=5"], False),  # the Keep-Alive header alone asks for nothing
    ],
)
def test_keep_alive_defaults_and_connection_tokens(version: bytes, lines: list[bytes], keep_alive: bool) -> None:
    raw = b"\r\n".join([b"GET / HTTP/" + version, b"Host: a", *lines])
    head = parse_head(raw, MAX)
    assert head.keep_alive is keep_alive
    assert head.http11 is (version == b"1.1")
    assert head.headers == [(b"Host", b"a")]  # Connection, Proxy-Connection and Keep-Alive are consumed


@pytest.mark.parametrize(
    ("line", "header"),
    [
        (b"X:v", (b"X", b"v")),
        (b"X: \t v  a \t ", (b"X", b"v  a")),  # optional whitespace around the value goes, inner whitespace stays
        (b"X:", (b"X", b"")),
        (b"X:   ", (b"X", b"")),
        (b"X: tab\tinside", (b"X", b"tab\tinside")),
        (b"X: obs-text \xe9\xff", (b"X", b"obs-text \xe9\xff")),
        (b'X: a: b, c="d"', (b"X", b'a: b, c="d"')),
        (b"!#$%&'*+-.^_`|~09aZ: v", (b"!#$%&'*+-.^_`|~09aZ", b"v")),
    ],
)
def test_header_values_are_trimmed_and_otherwise_kept(line: bytes, header: tuple[bytes, bytes]) -> None:
    assert parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n" + line, MAX).headers == [(b"Host", b"a"), header]


def test_hop_by_hop_headers_are_consumed() -> None:
    head = parse_head(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
        b"Trailer: X-Sum\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n"
        b"X-Meshlib-Client: 1\r\nX-End: 1",
        MAX,
    )
    assert head.headers == [(b"Host", b"a"), (b"X-End", b"1")]
    assert head.meshlib_client is True
    assert head.upgrade is False


def test_headers_named_by_connection_are_dropped_but_not_the_framing_ones() -> None:
    head = parse_head(
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: x-drop, HOST, content-length, , transfer-encoding\r\n"
        b"X-Drop: 1\r\nx-drop: 2\r\nX-Keep: 3\r\nContent-Length: 3",
        MAX,
    )
    assert head.headers == [(b"Host", b"a"), (b"X-Keep", b"3"), (b"Content-Length", b"3")]
    assert head.content_length == 3
    assert head.keep_alive is True


@pytest.mark.parametrize(
    ("value", "expect_continue", "headers"),
    [
        (b"100-continue", True, [(b"Host", b"a")]),
        (b"100-Continue", True, [(b"Host", b"a")]),
        (b"something-else", False, [(b"Host", b"a"), (b"Expect", b"something-else")]),
    ],
)
def test_expect(value: bytes, expect_continue: bool, headers: list[tuple[bytes, bytes]]) -> None:
    head = parse_head(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: " + value, MAX)
    assert head.expect_continue is expect_continue
    assert head.headers == headers


@pytest.mark.parametrize(
    ("value", "length", "has_body"),
    [(b"0", 0, False), (b"000", 0, False), (b"5", 5, True), (b"0012", 12, True), (b"9" * 18, 10**18 - 1, True)],
)
def test_content_length(value: bytes, length: int, has_body: bool) -> None:
    head = parse_head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + value + b"\r\nX: 1", MAX)
    assert head.content_length == length
    assert head.has_body is has_body
    assert head.chunked is False
    assert head.headers == [(b"Host", b"a"), (b"Content-Length", value), (b"X", b"1")]


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"CHUNKED", b" chunked \t"])
def test_chunked_is_reframed_at_the_end(value: bytes) -> None:
    head = parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding:" + value + b"\r\nHost: a\r\nX: 1", MAX)
    assert head.chunked is True
    assert head.has_body is True
    assert head.content_length is None
    assert head.headers == [(b"Host", b"a"), (b"X", b"1"), (b"Transfer-Encoding", b"chunked")]


def test_chunked_is_fine_on_any_method() -> None:
    head = parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked", MAX)
    assert head.chunked is True


def test_websocket_upgrade_keeps_its_pair_of_headers() -> None:
    head = parse_head(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Key: k",
        MAX,
    )
    assert head.upgrade is True
    assert head.headers == [
        (b"Host", b"a"),
        (b"Sec-WebSocket-Key", b"k"),
        (b"Connection", b"Upgrade"),
        (b"Upgrade", b"WebSocket"),
    ]


@pytest.mark.parametrize(
    "extra",
    [
        b"Connection: Upgrade\r\nUpgrade: h2c",  # not websocket
        b"Upgrade: websocket",  # Connection doesn't name upgrade
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 1",  # a body
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nTransfer-Encoding: chunked",
    ],
    ids=["h2c", "no-connection-token", "content-length", "chunked"],
)
def test_no_upgrade(extra: bytes) -> None:
    head = parse_head(b"GET /ws HTTP/1.1\r\nHost: a\r\n" + extra, MAX)
    assert head.upgrade is False
    assert not any(name.lower() in (b"upgrade", b"connection") for name, _ in head.headers)


def test_an_upgrade_keeps_its_connection_header_whatever_connection_names() -> None:
    head = parse_head(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade, connection\r\nUpgrade: websocket", MAX)
    assert head.upgrade is True
    assert head.headers == [(b"Host", b"a"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]


def test_upgrade_is_ignored_on_http10() -> None:
    head = parse_head(b"GET /ws HTTP/1.0\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket", MAX)
    assert head.upgrade is False
    assert head.headers == [(b"Host", b"a")]


@pytest.mark.parametrize(
    "host",
    [b"a", b"a.b-c_d~e", b"a:", b"a:0", b"a:65535", b"a:00080", b"10.1.2.3:8080", b"[::1]", b"[::ffff:1.2.3.4]:80"],
)
def test_valid_hosts(host: bytes) -> None:
    head = parse_head(b"GET /p HTTP/1.1\r\nHost: " + host, MAX)
    assert head.url == b"http://" + host + b"/p"


def test_valid_hosts_are_remembered_invalid_ones_never_and_the_memory_stays_bounded() -> None:
    """A Host value checked once is not checked again (the regex is a request's dearest step); a bad one always is."""
    http1._VALID_AUTHORITIES.clear()
    for _ in range(3):
        assert parse_head(b"GET / HTTP/1.1\r\nHost: api.internal:8080", MAX).url == b"http://api.internal:8080/"
        with pytest.raises(ProtocolError, match=BAD_HOST):
            parse_head(b"GET / HTTP/1.1\r\nHost: api.internal:99999", MAX)
    assert sorted(http1._VALID_AUTHORITIES) == [b"api.internal:8080"]
    for n in range(3 * http1._AUTHORITY_CACHE_SIZE):
        parse_head(b"GET / HTTP/1.1\r\nHost: host-%d" % n, MAX)
        assert len(http1._VALID_AUTHORITIES) <= http1._AUTHORITY_CACHE_SIZE
    with pytest.raises(ProtocolError, match=BAD_HOST):
        parse_head(b"GET / HTTP/1.1\r\nHost: a b", MAX)


def test_request_line_at_its_limit() -> None:
    line = b"GET /" + b"a" * (MAX_REQUEST_LINE - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == MAX_REQUEST_LINE
    assert parse_head(line + b"\r\nHost: a", MAX).url == b"http://a" + line[4:-9]
    assert refusal(line[:5] + b"a" + line[5:] + b"\r\nHost: a") == (414, "request line too long")


@pytest.mark.parametrize("limit", [20, 1024, MAX])
def test_header_block_at_its_limit(limit: int) -> None:
    """The limit counts the header block from the CRLF that ends the request line."""
    start = b"\r\nHost: a\r\nX: "
    block = start + b"v" * (limit - len(start))
    assert len(block) == limit
    assert parse_head(b"GET / HTTP/1.1" + block, limit).headers[-1] == (b"X", b"v" * (limit - len(start)))
    assert refusal(b"GET / HTTP/1.1" + block + b"v", limit) == (431, "request header block too large")


def test_header_count_at_its_limit() -> None:
    lines = b"".join(b"\r\nX-%d: v" % i for i in range(MAX_HEADERS - 1))
    assert len(parse_head(b"GET / HTTP/1.1\r\nHost: a" + lines, MAX).headers) == MAX_HEADERS
    assert refusal(b"GET / HTTP/1.1\r\nHost: a" + lines + b"\r\nX-Last: v") == (431, "more than 100 request headers")


# --- parse_head: refusals --------------------------------------------------------------------------------------------

BAD_LINE = "malformed request line: expected METHOD SP TARGET SP HTTP-VERSION"
BAD_TARGET = "invalid character in the request target"
NOT_A_FORM = "invalid request target: not origin, absolute, authority or asterisk form"
BARE = "bare CR or LF in the request head: lines must end with CRLF"
BAD_NAME = "invalid header name"
BAD_VALUE = "invalid character in a header value"
FOLD = "obsolete line folding in a header"
BAD_CL = "invalid Content-Length"
BAD_HOST = "invalid Host header"
NO_HOST = "missing Host header"
NOT_LAST = "chunked must be the final transfer coding, applied once"
ONLY_CHUNKED = "only the chunked transfer coding is supported"
BAD_AUTHORITY = "invalid authority in the request target"
CONNECT_TARGET = "CONNECT needs a host:port target"
BOTH = "both Content-Length and Transfer-Encoding"
TE_ON_10 = "Transfer-Encoding on an HTTP/1.0 request"


def get(*lines: bytes) -> bytes:
    """A GET / HTTP/1.1 head with ``Host: a`` and these header lines."""
    return b"\r\n".join([b"GET / HTTP/1.1", b"Host: a", *lines])


def post(*lines: bytes) -> bytes:
    return b"\r\n".join([b"POST / HTTP/1.1", b"Host: a", *lines])


REFUSED: list[tuple[str, bytes, int, str]] = [
    # request line
    ("http09", b"GET /", 400, "HTTP/0.9 request lines are not supported"),
    ("http09-with-headers", b"GET /x\r\nHost: a", 400, "HTTP/0.9 request lines are not supported"),
    ("no-target", b"GET HTTP/1.1\r\nHost: a", 400, BAD_LINE),
    ("method-only", b"GET", 400, BAD_LINE),
    ("empty", b"", 400, BAD_LINE),
    ("double-space", b"GET  / HTTP/1.1\r\nHost: a", 400, BAD_LINE),
    ("trailing-space", b"GET / HTTP/1.1 \r\nHost: a", 400, BAD_LINE),
    ("leading-space", b" GET / HTTP/1.1\r\nHost: a", 400, BAD_LINE),
    ("tab-separator", b"GET\t/ HTTP/1.1\r\nHost: a", 400, BAD_LINE),
    ("space-in-target", b"GET /a b HTTP/1.1\r\nHost: a", 400, BAD_LINE),
    ("bare-cr-after-line", b"GET / HTTP/1.1\rHost: a", 400, BAD_LINE),
    ("bare-lf-after-line", b"GET / HTTP/1.1\nHost: a", 400, BAD_LINE),
    ("method-not-token", b"G(T / HTTP/1.1\r\nHost: a", 400, "invalid method"),
    ("method-nul", b"GE\x00T / HTTP/1.1\r\nHost: a", 400, "invalid method"),
    ("method-high-byte", b"G\xc9T / HTTP/1.1\r\nHost: a", 400, "invalid method"),
    ("version-lowercase", b"GET / http/1.1\r\nHost: a", 400, "invalid HTTP version"),
    ("version-two-digits", b"GET / HTTP/1.10\r\nHost: a", 400, "invalid HTTP version"),
    ("version-major-two-digits", b"GET / HTTP/11.1\r\nHost: a", 400, "invalid HTTP version"),
    ("version-no-minor", b"GET / HTTP/1\r\nHost: a", 400, "invalid HTTP version"),
    ("version-garbage", b"GET / HTTP/one\r\nHost: a", 400, "invalid HTTP version"),
    ("target-ctl", b"GET /\x01 HTTP/1.1\r\nHost: a", 400, BAD_TARGET),
    ("target-del", b"GET /\x7f HTTP/1.1\r\nHost: a", 400, BAD_TARGET),
    ("target-high-byte", b"GET /\xff HTTP/1.1\r\nHost: a", 400, BAD_TARGET),
    ("target-lf", b"GET /\n HTTP/1.1\r\nHost: a", 400, BAD_TARGET),
    ("http20", b"GET / HTTP/2.0\r\nHost: a", 505, "HTTP/2.0 is not supported"),
    ("http12", b"GET / HTTP/1.2\r\nHost: a", 505, "HTTP/1.2 is not supported"),
    ("http09-version", b"GET / HTTP/0.9\r\nHost: a", 505, "HTTP/0.9 is not supported"),
    ("http20-before-header-checks", b"GET / HTTP/2.0\r\nX\x00: " + b"v" * MAX, 505, "HTTP/2.0 is not supported"),
    ("line-too-long-first", b"G(T /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1", 414, "request line too long"),
    # header lines
    ("bare-lf", get(b"X: b").replace(b"\r\nX", b"\nX"), 400, BARE),
    ("bare-cr", get(b"X: b").replace(b"\r\nX", b"\rX"), 400, BARE),
    ("cr-in-value", get(b"X: a\rb"), 400, BARE),
    ("lf-in-value", get(b"X: a\nb: c"), 400, BARE),
    ("obs-fold", get(b"X: a", b" b"), 400, FOLD),
    ("obs-fold-tab", get(b"X: a", b"\tb"), 400, FOLD),
    ("space-before-first-header", b"GET / HTTP/1.1\r\n Host: a", 400, FOLD),
    ("no-colon", get(b"NoColon"), 400, "header line without a colon"),
    ("blank-line-inside", get(b"", b"X: b"), 400, "header line without a colon"),
    ("final-crlf-included", get() + b"\r\n", 400, "header line without a colon"),
    ("space-before-colon", post(b"Content-Length : 3"), 400, "whitespace between a header name and the colon"),
    ("tab-before-colon", get(b"X\t: b"), 400, "whitespace between a header name and the colon"),
    ("space-in-name", get(b"X Y: b"), 400, BAD_NAME),
    ("name-not-token", get(b"X@Y: b"), 400, BAD_NAME),
    ("name-slash", get(b"X/Y: b"), 400, BAD_NAME),
    ("empty-name", get(b": b"), 400, BAD_NAME),
    ("nul-in-name", get(b"X\x00Y: b"), 400, BAD_NAME),
    ("high-byte-in-name", get(b"\xe9: b"), 400, BAD_NAME),
    ("nul-in-value", get(b"X: a\x00b"), 400, BAD_VALUE),
    ("ctl-in-value", get(b"X: a\x01b"), 400, BAD_VALUE),
    ("esc-in-value", get(b"X: \x1b[31m"), 400, BAD_VALUE),
    ("del-in-value", get(b"X: a\x7fb"), 400, BAD_VALUE),
    ("vt-in-value", get(b"X: a\x0bb"), 400, BAD_VALUE),
    ("ctl-in-host", b"GET / HTTP/1.1\r\nHost: a\x00", 400, BAD_VALUE),
    ("too-large-before-syntax", get(b"X\x00: " + b"v" * MAX), 431, "request header block too large"),
    # Host
    ("missing-host", b"GET / HTTP/1.1", 400, NO_HOST),
    ("missing-host-with-headers", b"GET / HTTP/1.1\r\nX: a", 400, NO_HOST),
    ("missing-host-absolute-11", b"GET http://a/ HTTP/1.1", 400, NO_HOST),
    ("missing-host-connect", b"CONNECT a:443 HTTP/1.1", 400, NO_HOST),
    ("http10-origin-without-host", b"GET / HTTP/1.0", 400, NO_HOST),
    ("http10-origin-empty-host", b"GET / HTTP/1.0\r\nHost:", 400, NO_HOST),
    ("http10-asterisk-without-host", b"OPTIONS * HTTP/1.0", 400, NO_HOST),
    ("duplicate-host", get(b"Host: b"), 400, "more than one Host header"),
    ("duplicate-host-any-case", get(b"HOST: a"), 400, "more than one Host header"),
    ("empty-host-11", b"GET / HTTP/1.1\r\nHost: ", 400, BAD_HOST),
    ("host-with-space", b"GET / HTTP/1.1\r\nHost: a b", 400, BAD_HOST),
    ("host-with-slash", b"GET / HTTP/1.1\r\nHost: a/b", 400, BAD_HOST),
    ("host-with-userinfo", b"GET / HTTP/1.1\r\nHost: u@a", 400, BAD_HOST),
    ("host-two-ports", b"GET / HTTP/1.1\r\nHost: a:80:80", 400, BAD_HOST),
    ("host-port-too-big", b"GET / HTTP/1.1\r\nHost: a:65536", 400, BAD_HOST),
    ("host-port-too-long", b"GET / HTTP/1.1\r\nHost: a:000080", 400, BAD_HOST),
    ("host-port-not-digits", b"GET / HTTP/1.1\r\nHost: a:8o", 400, BAD_HOST),
    ("host-ipv6-unclosed", b"GET / HTTP/1.1\r\nHost: [::1", 400, BAD_HOST),
    ("host-percent", b"GET / HTTP/1.1\r\nHost: a%20b", 400, BAD_HOST),
    ("host-checked-on-absolute-form", b"GET http://a/ HTTP/1.1\r\nHost: a b", 400, BAD_HOST),
    # framing
    ("two-cl", post(b"Content-Length: 3", b"Content-Length: 5"), 400, "more than one Content-Length header"),
    ("two-equal-cl", post(b"Content-Length: 3", b"content-length: 3"), 400, "more than one Content-Length header"),
    ("cl-and-te", post(b"Content-Length: 6", b"Transfer-Encoding: chunked"), 400, BOTH),
    ("te-and-cl", post(b"Transfer-Encoding: chunked", b"Content-Length: 6"), 400, BOTH),
    ("cl-and-bad-te", post(b"Content-Length: 6", b"Transfer-Encoding: gzip"), 400, BOTH),
    ("cl-list", post(b"Content-Length: 3, 3"), 400, BAD_CL),
    ("cl-plus", post(b"Content-Length: +3"), 400, BAD_CL),
    ("cl-negative", post(b"Content-Length: -1"), 400, BAD_CL),
    ("cl-hex", post(b"Content-Length: 0x3"), 400, BAD_CL),
    ("cl-empty", post(b"Content-Length: "), 400, BAD_CL),
    ("cl-decimal", post(b"Content-Length: 3.0"), 400, BAD_CL),
    ("cl-inner-space", post(b"Content-Length: 1 2"), 400, BAD_CL),
    ("cl-19-digits", post(b"Content-Length: " + b"1" * 19), 400, BAD_CL),
    ("cl-superscript", post(b"Content-Length: \xc2\xb2"), 400, BAD_CL),
    ("te-on-http10", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked", 400, TE_ON_10),
    ("te-gzip", post(b"Transfer-Encoding: gzip"), 501, ONLY_CHUNKED),
    ("te-identity", post(b"Transfer-Encoding: identity"), 501, ONLY_CHUNKED),
    ("te-gzip-chunked", post(b"Transfer-Encoding: gzip, chunked"), 501, ONLY_CHUNKED),
    ("te-two-headers-gzip-chunked", post(b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"), 501, ONLY_CHUNKED),
    ("te-unknown", post(b"Transfer-Encoding: xchunked"), 501, ONLY_CHUNKED),
    ("te-chunked-not-last", post(b"Transfer-Encoding: chunked, gzip"), 400, NOT_LAST),
    ("te-chunked-twice", post(b"Transfer-Encoding: chunked, chunked"), 400, NOT_LAST),
    ("te-two-headers", post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), 400, NOT_LAST),
    ("te-empty", post(b"Transfer-Encoding: "), 400, "malformed Transfer-Encoding"),
    ("te-empty-element", post(b"Transfer-Encoding: , chunked"), 400, "malformed Transfer-Encoding"),
    ("te-trailing-comma", post(b"Transfer-Encoding: chunked,"), 400, "malformed Transfer-Encoding"),
    ("te-quoted", post(b'Transfer-Encoding: "chunked"'), 400, "malformed Transfer-Encoding"),
    ("te-parameter", post(b"Transfer-Encoding: chunked;q=1"), 400, "malformed Transfer-Encoding"),
    # target forms
    ("fragment", b"GET /a#b HTTP/1.1\r\nHost: a", 400, "fragment in the request target"),
    ("fragment-absolute", b"GET http://a/#b HTTP/1.1\r\nHost: a", 400, "fragment in the request target"),
    ("asterisk-on-get", b"GET * HTTP/1.1\r\nHost: a", 400, "asterisk target on a method other than OPTIONS"),
    ("ftp-scheme", b"GET ftp://a/x HTTP/1.1\r\nHost: a", 400, NOT_A_FORM),
    ("relative-target", b"GET x/y HTTP/1.1\r\nHost: a", 400, NOT_A_FORM),
    ("authority-on-get", b"GET a:80 HTTP/1.1\r\nHost: a", 400, NOT_A_FORM),
    ("one-slash-scheme", b"GET http:/a HTTP/1.1\r\nHost: a", 400, NOT_A_FORM),
    ("lowercase-connect", b"connect a:443 HTTP/1.1\r\nHost: a", 400, NOT_A_FORM),  # methods are case-sensitive
    ("userinfo", b"GET http://u@a/ HTTP/1.1\r\nHost: a", 400, BAD_AUTHORITY),
    ("empty-authority", b"GET http:///x HTTP/1.1\r\nHost: a", 400, BAD_AUTHORITY),
    ("empty-authority-query", b"GET http://?x HTTP/1.1\r\nHost: a", 400, BAD_AUTHORITY),
    ("authority-bad-port", b"GET http://a:99999/ HTTP/1.1\r\nHost: a", 400, BAD_AUTHORITY),
    ("connect-origin-form", b"CONNECT /x HTTP/1.1\r\nHost: a", 400, CONNECT_TARGET),
    ("connect-without-port", b"CONNECT a HTTP/1.1\r\nHost: a", 400, CONNECT_TARGET),
    ("connect-empty-port", b"CONNECT a: HTTP/1.1\r\nHost: a", 400, CONNECT_TARGET),
    ("connect-port-0", b"CONNECT a:0 HTTP/1.1\r\nHost: a", 400, CONNECT_TARGET),
    ("connect-port-too-big", b"CONNECT a:65536 HTTP/1.1\r\nHost: a", 400, CONNECT_TARGET),
    ("connect-port-too-long", b"CONNECT a:000443 HTTP/1.1\r\nHost: a", 400, CONNECT_TARGET),
    ("connect-absolute", b"CONNECT http://a:443 HTTP/1.1\r\nHost: a", 400, CONNECT_TARGET),
    ("connect-asterisk", b"CONNECT * HTTP/1.1\r\nHost: a", 400, CONNECT_TARGET),
    ("connect-content-length", b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\nContent-Length: 5", 400, "CONNECT with a body"),
    ("connect-chunked", b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked", 400, "CONNECT with a body"),
    # sizes
    (
        "request-line-too-long",
        b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\nHost: a",
        414,
        "request line too long",
    ),
    ("request-line-too-long-alone", b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1", 414, "request line too long"),
    ("header-block-too-large", get(b"X: " + b"v" * MAX), 431, "request header block too large"),
    ("too-many-headers", get(*(b"X-%d: v" % i for i in range(MAX_HEADERS))), 431, "more than 100 request headers"),
]


@pytest.mark.parametrize(
    ("head", "status", "reason"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED]
)
def test_refused(head: bytes, status: int, reason: str) -> None:
    assert refusal(head) == (status, reason)


def test_refused_case_names_are_unique() -> None:
    names = [case[0] for case in REFUSED]
    assert len(names) == len(set(names))


# --- ChunkedDecoder -------------------------------------------------------------------------------------------------


class Outcome:
    """What a decoder made of a stream fed in pieces: the body, bytes used, done, and the refusal if any."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.decoder = decoder = ChunkedDecoder()
        self.body = b""
        self.used = 0
        self.error: tuple[int, str] | None = None
        self.done_after: int | None = None  # how many pieces it took to be done
        for i, piece in enumerate(pieces):
            try:
                out, used = decoder.feed(piece)
            except ProtocolError as error:
                self.error = (error.status, error.reason)
                return
            assert all(out), f"an empty body piece from {piece!r}"
            assert 0 <= used <= len(piece)
            if used < len(piece):
                assert decoder.done, "fewer bytes used before the end of the body"
            self.body += b"".join(out)
            self.used += used
            if decoder.done and self.done_after is None:
                self.done_after = i + 1

    def key(self) -> tuple[bytes, int, bool, tuple[int, str] | None]:
        return self.body, self.used, self.decoder.done, self.error


def whole(data: bytes) -> Outcome:
    return Outcome([data])


def bytewise(data: bytes) -> Outcome:
    return Outcome([data[i : i + 1] for i in range(len(data))])


VALID_BODIES: list[tuple[str, bytes, bytes]] = [
    ("one-chunk", b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    ("empty-body", b"0\r\n\r\n", b""),
    ("hex-both-cases", b"A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n", b"0123456789abcdefghij"),
    ("leading-zeros", b"0005\r\nhello\r\n000\r\n\r\n", b"hello"),
    ("sixteen-digits", b"0000000000000005\r\nhello\r\n0000000000000000\r\n\r\n", b"hello"),
    ("crlf-in-data", b"4\r\n\r\n\r\n\r\n2\r\n0\n\r\n0\r\n\r\n", b"\r\n\r\n0\n"),
    ("binary-data", b"3\r\n\x00\xff\n\r\n0\r\n\r\n", b"\x00\xff\n"),
    ("extension", b"5;name=value\r\nhello\r\n0;last\r\n\r\n", b"hello"),
    ("extension-quoted", b'5 ; a="q;\\"x" ; b\r\nhello\r\n0\r\n\r\n', b"hello"),
    ("extension-tab-obs-text", b"5\t;e=\xe9\t\r\nhello\r\n0\r\n\r\n", b"hello"),
    ("bad-whitespace-only", b"5 \t \r\nhello\r\n0\r\n\r\n", b"hello"),
    ("trailers", b"5\r\nhello\r\n0\r\nX-Sum: 1\r\nempty:\r\nT: a\tb \xe9\r\n\r\n", b"hello"),
    ("many-chunks", b"".join(b"1\r\n%c\r\n" % c for c in b"abcdefgh") + b"0\r\n\r\n", b"abcdefgh"),
]


@pytest.mark.parametrize(("encoded", "body"), [c[1:] for c in VALID_BODIES], ids=[c[0] for c in VALID_BODIES])
def test_chunked_body_at_once_and_byte_by_byte(encoded: bytes, body: bytes) -> None:
    at_once = whole(encoded)
    assert at_once.key() == (body, len(encoded), True, None)
    one_by_one = bytewise(encoded)
    assert one_by_one.key() == (body, len(encoded), True, None)
    assert one_by_one.done_after == len(encoded)  # done on the last byte, not before


def test_bytes_after_the_last_chunk_are_left_for_the_next_request() -> None:
    decoder = ChunkedDecoder()
    out, used = decoder.feed(b"3\r\nabc\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\n")
    assert (out, used, decoder.done) == ([b"abc"], len(b"3\r\nabc\r\n0\r\nT: 1\r\n\r\n"), True)
    assert decoder.feed(b"more") == ([], 0)
    assert decoder.feed(b"") == ([], 0)


def test_partial_input_is_kept_across_feeds() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"") == ([], 0)
    assert decoder.feed(b"1") == ([], 1)
    assert decoder.feed(b"0;e\r") == ([], 4)
    assert decoder.feed(b"\nabc") == ([b"abc"], 4)
    assert decoder.feed(b"d" * 13) == ([b"d" * 13], 13)
    assert not decoder.done
    assert decoder.feed(b"\r\n0\r\n") == ([], 5)
    assert not decoder.done  # the trailer section (empty here) still has to end
    assert decoder.feed(b"\r\nX") == ([], 2)
    assert decoder.done


def test_sixteen_hex_digits_is_a_size_seventeen_is_not() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"ffffffffffffffff\r\nabc") == ([b"abc"], 21)
    assert not decoder.done
    assert whole(b"10000000000000000\r\n").error == (400, "invalid chunk size")


def test_a_size_line_at_its_limit() -> None:
    line = b"3;" + b"e" * (CHUNK_LINE - 4) + b"\r\n"
    assert len(line) == CHUNK_LINE
    assert whole(line + b"abc\r\n0\r\n\r\n").key() == (b"abc", len(line) + 10, True, None)
    assert bytewise(line + b"abc\r\n0\r\n\r\n").key() == (b"abc", len(line) + 10, True, None)
    longer = b"3;e" + line[2:]
    assert whole(longer).error == (400, "chunk size line too long")
    assert bytewise(longer).error == (400, "chunk size line too long")


def test_a_trailer_section_at_its_limit() -> None:
    long_line = b"T:" + b"v" * (CHUNK_LINE - 4) + b"\r\n"  # the longest trailer line
    full = (TRAILERS // (CHUNK_LINE - 2)) * long_line
    rest = TRAILERS - (TRAILERS // (CHUNK_LINE - 2)) * (CHUNK_LINE - 2)
    fits = b"0\r\n" + full + b"U:" + b"w" * (rest - 2) + b"\r\n\r\n"
    assert whole(fits).key() == (b"", len(fits), True, None)
    too_big = b"0\r\n" + full + b"U:" + b"w" * (rest - 1) + b"\r\n\r\n"
    assert whole(too_big).error == (400, "invalid trailer section")
    assert bytewise(too_big).error == (400, "invalid trailer section")


BAD_SIZE = "invalid chunk size"
BARE_LF = "bare LF in chunked framing"
LONGER = "chunk data longer than its size"
LONG_LINE = "chunk size line too long"
BAD_TRAILER = "invalid trailer section"

BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("not-hex", b"zz\r\nabc\r\n0\r\n\r\n", BAD_SIZE),
    ("negative", b"-3\r\nabc\r\n", BAD_SIZE),
    ("plus", b"+3\r\nabc\r\n", BAD_SIZE),
    ("0x", b"0x3\r\nabc\r\n", BAD_SIZE),
    ("leading-space", b" 3\r\nabc\r\n", BAD_SIZE),
    ("empty-size", b"\r\nabc\r\n", BAD_SIZE),
    ("extension-without-size", b";e\r\n", BAD_SIZE),
    ("space-inside-size", b"1 0\r\n", BAD_SIZE),
    ("ctl-in-extension", b"3;\x00\r\nabc\r\n", BAD_SIZE),
    ("cr-in-size-line", b"3\r\r\nabc\r\n", BAD_SIZE),
    ("seventeen-digits", b"10000000000000000\r\n", BAD_SIZE),
    ("seventeen-zeros", b"00000000000000000\r\n\r\n", BAD_SIZE),
    ("bare-lf-after-size", b"3\nabc\n0\n\n", BARE_LF),
    ("bare-lf-after-data", b"3\r\nabc\n0\r\n\r\n", BARE_LF),
    ("bare-lf-after-last-size", b"3\r\nabc\r\n0\n\r\n", BARE_LF),
    ("bare-lf-ending-trailers", b"0\r\n\n", BARE_LF),
    ("bare-lf-after-trailer", b"0\r\nT: 1\n\r\n", BARE_LF),
    ("data-longer-than-size", b"3\r\nabcdef\r\n0\r\n\r\n", LONGER),
    ("size-line-right-after-data", b"3\r\nabc0\r\n\r\n", LONGER),
    ("bare-cr-after-data", b"3\r\nabc\rX\r\n", LONGER),
    ("no-crlf-after-data", b"3\r\nabc" + b"x" * (CHUNK_LINE + 1), LONG_LINE),
    ("size-line-too-long", b"3;" + b"e" * CHUNK_LINE + b"\r\nabc\r\n0\r\n\r\n", LONG_LINE),
    ("size-line-never-ends", b"3;" + b"e" * CHUNK_LINE, LONG_LINE),
    ("trailer-line-too-long", b"0\r\nT:" + b"v" * CHUNK_LINE + b"\r\n\r\n", LONG_LINE),
    ("trailer-without-colon", b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n", BAD_TRAILER),
    ("trailer-obs-fold", b"0\r\nT: 1\r\n 2\r\n\r\n", BAD_TRAILER),
    ("trailer-space-before-colon", b"0\r\nT : 1\r\n\r\n", BAD_TRAILER),
    ("trailer-ctl", b"0\r\nT: \x00\r\n\r\n", BAD_TRAILER),
    ("trailer-bare-cr", b"0\r\nT: 1\r2\r\n\r\n", BAD_TRAILER),
]


@pytest.mark.parametrize(("encoded", "reason"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES])
def test_chunked_framing_errors_at_once_and_byte_by_byte(encoded: bytes, reason: str) -> None:
    assert whole(encoded).error == (400, reason)
    assert bytewise(encoded).error == (400, reason)


def test_bad_body_case_names_are_unique() -> None:
    names = [case[0] for case in BAD_BODIES] + [case[0] for case in VALID_BODIES]
    assert len(names) == len(set(names))


def test_an_incomplete_body_is_not_done() -> None:
    for cut in range(len(b"3\r\nabc\r\n0\r\n\r\n")):
        outcome = whole(b"3\r\nabc\r\n0\r\n\r\n"[:cut])
        assert outcome.key() == (b"abc"[: max(0, min(3, cut - 3))], cut, False, None)


# --- Hypothesis: round-trips ----------------------------------------------------------------------------------------

EXTENSIONS = [b"", b";a", b";a=b", b' ; n="v;\\"x"', b"\t;e=\xe9", b"  "]
TRAILER_LINES = [b"X-Sum: 1", b"T:", b"t: a\tb", b"Expires: \xe9"]


@st.composite
def chunk_encoded(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
    """Random body chunks and their chunked encoding (random size spellings, extensions and trailers)."""
    chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=8))
    parts = []
    for chunk in chunks:
        size = f"{len(chunk):x}" if draw(st.booleans()) else f"{len(chunk):X}"
        size = "0" * draw(st.integers(0, 16 - len(size))) + size
        parts.append(size.encode() + draw(st.sampled_from(EXTENSIONS)) + b"\r\n" + chunk + b"\r\n")
    parts.append(b"0" * draw(st.integers(1, 16)) + draw(st.sampled_from(EXTENSIONS)) + b"\r\n")
    parts.extend(line + b"\r\n" for line in draw(st.lists(st.sampled_from(TRAILER_LINES), max_size=3)))
    parts.append(b"\r\n")
    return chunks, b"".join(parts)


@settings(max_examples=200, deadline=None)
@given(encoded=chunk_encoded(), after=st.binary(max_size=20), data=st.data())
def test_chunked_round_trip_split_anywhere(
    encoded: tuple[list[bytes], bytes], after: bytes, data: st.DataObject
) -> None:
    chunks, wire = encoded
    stream = wire + after  # whatever follows (a pipelined request) is not the body's
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=12))))
    bounds = [0, *(c for c in cuts if c < len(stream)), len(stream)]
    pieces = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    decoder = ChunkedDecoder()
    body = b""
    fed = 0
    used_total = 0
    for piece in pieces:
        was_done = decoder.done
        out, used = decoder.feed(piece)
        body += b"".join(out)
        used_total += used
        fed += len(piece)
        if was_done:
            assert (out, used) == ([], 0)
        elif fed < len(wire):
            assert used == len(piece)
            assert not decoder.done
        else:  # this piece holds the last byte of the body
            assert decoder.done
            assert used == len(piece) - (fed - len(wire))
    assert decoder.done
    assert used_total == len(wire)
    assert body == b"".join(chunks)


HEAD_VALUE_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
TARGET_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#")
HOST_CHARS = string.ascii_letters + string.digits + "-._~"


@st.composite
def hosts(draw: st.DrawFn) -> str:
    name = draw(st.text(HOST_CHARS, min_size=1, max_size=15))
    port = draw(st.one_of(st.none(), st.integers(0, 65535)))
    return name if port is None else f"{name}:{port}"


@settings(max_examples=100, deadline=None)
@given(
    method=st.text(TOKEN_CHARS, min_size=1, max_size=12).filter(lambda m: m != "CONNECT"),
    absolute=st.one_of(st.none(), st.tuples(st.sampled_from(["http", "https", "HTTP", "Https"]), hosts())),
    path=st.one_of(
        st.just(""),
        st.text(TARGET_CHARS, max_size=30).map("/".__add__),
        st.text(TARGET_CHARS, max_size=30).map("?".__add__),
    ),
    host=hosts(),
    headers=st.lists(
        st.tuples(
            st.text(TOKEN_CHARS, min_size=1, max_size=20).filter(lambda n: n.lower() not in SPECIAL),
            st.text(HEAD_VALUE_CHARS, max_size=30),
        ),
        max_size=20,
    ),
    host_at=st.integers(0, 20),
    http11=st.booleans(),
)
def test_head_round_trip(
    method: str,
    absolute: tuple[str, str] | None,
    path: str,
    host: str,
    headers: list[tuple[str, str]],
    host_at: int,
    http11: bool,
) -> None:
    # origin form ("/", "//x", "/?x") or absolute form
    target = "/" + path if absolute is None else f"{absolute[0]}://{absolute[1]}{path}"
    lines = [f"{name}:{value}" for name, value in headers]
    lines.insert(host_at, f"Host: {host}")
    raw = "\r\n".join([f"{method} {target} HTTP/1.{int(http11)}", *lines]).encode()

    head = parse_head(raw, MAX)

    assert head.method == method
    authority = host if absolute is None else absolute[1]
    expected = [(name.encode(), value.strip(" ").encode()) for name, value in headers]
    expected.insert(host_at, (b"Host", authority.encode()))
    assert head.headers == expected
    if absolute is None:
        assert head.url == f"http://{host}{target}".encode()
    else:
        assert head.url == f"{absolute[0].lower()}://{absolute[1]}{path if path[:1] == '/' else '/' + path}".encode()
    assert head.http11 is http11
    assert head.keep_alive is http11
    assert (head.content_length, head.chunked, head.upgrade, head.connect) == (None, False, False, None)


# --- Hypothesis: whatever the bytes, a checked head or a ProtocolError ----------------------------------------------

HEAD_FRAGMENTS = [
    b"GET",
    b"POST",
    b"CONNECT",
    b"OPTIONS",
    b" ",
    b"/",
    b"*",
    b"http://",
    b"a",
    b"[::1]",
    b":",
    b"443",
    b"99999",
    b"#",
    b"?",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"\r\n",
    b"\r",
    b"\n",
    b"\t",
    b",",
    b"Host:",
    b"Host: a",
    b"Content-Length:",
    b"0",
    b"5",
    b"Transfer-Encoding:",
    b"chunked",
    b"gzip",
    b"Connection:",
    b"close",
    b"keep-alive",
    b"upgrade",
    b"Upgrade: websocket",
    b"Expect: 100-continue",
    b"X-Meshlib-Client: 1",
    b"Proxy-Connection: keep-alive",
    b"X: y",
    b"\x00",
    b"\xe9",
]


def check_head(head: RequestHead) -> None:
    """What any head parse_head accepts must satisfy, whatever it came from."""
    assert TOKEN.fullmatch(head.method.encode())
    assert head.url.startswith((b"http://", b"https://"))
    for name, value in head.headers:
        assert TOKEN.fullmatch(name), name
        assert not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value), value
        assert value == value.strip(b" \t")
    names = [name.lower() for name, _ in head.headers]
    assert names.count(b"host") <= 1
    assert names.count(b"content-length") == (head.content_length is not None)
    assert names.count(b"transfer-encoding") == head.chunked
    assert not (head.chunked and head.content_length is not None)
    assert not head.chunked or head.http11
    assert not (head.connect and head.has_body)
    if head.connect is not None:
        assert head.method == "CONNECT"
        assert 0 < head.connect[1] <= 65535
    assert not set(names) & {b"te", b"trailer", b"keep-alive", b"proxy-connection", b"proxy-authorization"}
    assert (b"upgrade" in names) == head.upgrade


REQUEST_LINES = [
    b"GET / HTTP/1.1",
    b"POST /x?y HTTP/1.0",
    b"CONNECT a:443 HTTP/1.1",
    b"CONNECT [::1]:8 HTTP/1.0",
    b"OPTIONS * HTTP/1.1",
    b"GET http://a:80/x HTTP/1.1",
    b"GET https://[::1] HTTP/1.0",
]
HOST_LINES = [b"Host: a", b"host: [::1]:8", b"Host: a:1", b"Host:"]
HEADER_LINES = [
    b"Content-Length: 5",
    b"Content-Length: 0",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Connection: close",
    b"Connection: Upgrade",
    b"Connection: keep-alive, x",
    b"Connection: host, content-length",
    b"Upgrade: websocket",
    b"Expect: 100-continue",
    b"Expect: other",
    b"Proxy-Connection: keep-alive",
    b"Keep-Alive: 5",
    b"TE: trailers",
    b"X-Meshlib-Client: 1",
    b"x: 1",
    b"X: \t v \xe9 ",
]
# A line built from fragments: mostly malformed, now and then a valid one.
LINE_FRAGMENTS = st.lists(
    st.one_of(st.sampled_from(HEAD_FRAGMENTS), st.binary(max_size=3)), min_size=1, max_size=8
).map(b"".join)


@settings(max_examples=150, deadline=None)
@given(
    request_line=st.sampled_from(REQUEST_LINES),
    host=st.one_of(st.none(), st.sampled_from(HOST_LINES)),
    lines=st.lists(st.sampled_from(HEADER_LINES), max_size=8),
    odd_line=st.one_of(st.none(), LINE_FRAGMENTS),
    at=st.integers(-1, 8),
)
def test_any_head_is_parsed_and_checked_or_refused(
    request_line: bytes, host: bytes | None, lines: list[bytes], odd_line: bytes | None, at: int
) -> None:
    if host is not None:
        lines.insert(at % 3, host)
    if odd_line is not None and at < 0:
        request_line = odd_line
    elif odd_line is not None:
        lines.insert(at, odd_line)
    refused: ProtocolError | None = None
    try:
        head = parse_head(b"\r\n".join([request_line, *lines]), 1024)
    except ProtocolError as error:
        refused = error
    if refused is None:
        check_head(head)
    else:
        assert refused.status in (400, 414, 431, 501, 505)
        assert refused.reason


BODY_FRAGMENTS = [
    b"0",
    b"3",
    b"a",
    b"F",
    b"10",
    b"\r\n",
    b"\r",
    b"\n",
    b";",
    b"e=1",
    b" ",
    b"\t",
    b"abc",
    b"T: 1",
    b":",
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(BODY_FRAGMENTS), st.binary(max_size=3)), max_size=30))
def test_any_chunked_stream_decodes_the_same_however_it_is_split(fragments: list[bytes]) -> None:
    stream = b"".join(fragments)
    at_once = whole(stream)
    for split in (bytewise(stream), Outcome(fragments)):
        if at_once.error is None:
            assert split.key() == at_once.key()
        else:  # the same refusal, whatever was decoded before it
            assert split.error == at_once.error
    if at_once.error is not None:
        assert at_once.error[0] == 400
    elif not at_once.decoder.done:
        assert at_once.used == len(stream)  # all of it taken, partial lines kept for later
