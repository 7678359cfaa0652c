"""HTTP/1.1 on the wire, sans I/O: request heads parsed and checked strictly, chunked bodies, response heads.

The listener faces untrusted clients, so a request head is checked against
RFC 9112 before anything is forwarded; whatever could be read two ways by two
parsers (the root of request smuggling) is refused rather than repaired:

* request line: a token method (unknown methods are fine), one space, a
  target of visible ASCII without a fragment, one space, ``HTTP/1.0`` or
  ``HTTP/1.1`` (another well-formed version: 505; anything else: 400);
* the target's form fits the method: origin (``/path``), absolute
  (``http(s)://authority/path``), authority (``host:port``, CONNECT only) or
  asterisk (``*``, OPTIONS only);
* header lines: a token name right before the colon, a value without control
  bytes (tab aside), CRLF line ends only: no bare LF or CR, no obs-fold;
* exactly one valid ``Host`` (required on HTTP/1.1);
* framing: ``Content-Length`` once and all digits; ``Transfer-Encoding``
  exactly ``chunked`` (other codings: 501, malformed lists: 400), never with
  ``Content-Length``, never on HTTP/1.0;
* sizes: request line up to 16 KiB (414), header block up to the configured
  KiB and 100 lines (431).

httptools (llhttp) is not used for requests, although its bare parse is a few
µs per request cheaper than this one (about 6 µs for a typical head, every
check included): it refuses valid methods it doesn't know, accepts HTTP/0.9,
missing or duplicate ``Host`` and ``HTTP/2.0`` request lines, so the head
would be checked again anyway, and it reports no byte offsets, so a pipelined
request behind a body could not be held back until the one before is
answered. Two strict regular expressions over the head do most of the
checking in C.

Response heads (:func:`response_head`) are the handler's response as the
client must read it: hop-by-hop headers and what ``Connection`` names are
dropped, the framing is redone (the upstream's Content-Length, else chunked
on HTTP/1.1, else the connection's end), and names and values are checked
(a token name; a value without CR, LF or other control bytes) without a
regular expression, since every response passes here.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

import httpx

from meshlib._wire import CLIENT_HEADER, LENGTH_HEADER

__all__ = [
    "BUFFERED_BODY_LIMIT",
    "CHUNKED",
    "LAST_CHUNK",
    "LENGTH",
    "MAX_HEADERS",
    "MAX_REQUEST_LINE",
    "UNTIL_CLOSE",
    "WHOLE",
    "BadResponseError",
    "ChunkedDecoder",
    "ProtocolError",
    "RequestHead",
    "ResponseHead",
    "local_response",
    "parse_head",
    "plain_error",
    "response_head",
    "status_line",
    "upgrade_head",
    "with_body",
]

MAX_REQUEST_LINE: Final = 16 * 1024
MAX_HEADERS: Final = 100
# A request body with a Content-Length up to this size is read whole before the engine sees it, so that
# the engine can retry, hedge and mirror it (its bounded retry buffer); larger or chunked bodies stream.
BUFFERED_BODY_LIMIT: Final = 64 * 1024
# Chunk-size lines (with extensions) and the trailer section have no use for more than this.
_MAX_CHUNK_LINE: Final = 4096
_MAX_TRAILERS: Final = 16 * 1024

_TOKEN: Final = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_VALUE_CHARS: Final = rb"[\t\x20-\x7e\x80-\xff]"
_REQUEST_LINE: Final = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_HEADER_BLOCK: Final = re.compile(rb"(?:\r\n" + _TOKEN + rb":" + _VALUE_CHARS + rb"*)*")
_HEADER_FIELD: Final = re.compile(rb"\r\n([^:]+):([^\r]*)")
_HEADER_LINE: Final = re.compile(_TOKEN + rb":" + _VALUE_CHARS + rb"*")
_IS_TOKEN: Final = re.compile(_TOKEN)
# host [":" port], host a reg-name, IPv4 or [IPv6] (percent-encoded reg-names aside: no client sends them).
_AUTHORITY: Final = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[-A-Za-z0-9._~!$&'()*+,;=]+)(?::([0-9]*))?")
_ABSOLUTE: Final = re.compile(rb"([Hh][Tt][Tt][Pp][Ss]?)://([^/?]*)(.*)", re.DOTALL)
_CHUNK_SIZE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})[\t ]*(?:;[\t\x20-\x7e\x80-\xff]*)?")

# Hop-by-hop: they describe one connection, so the proxy consumes them instead of forwarding them.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
    }
)
# meshlib's sidecar client marks its requests: for the listener only (see meshlib/_wire.py), never forwarded.
_CLIENT: Final = CLIENT_HEADER.encode()
# The headers parse_head looks at; all others are forwarded as they came.
_SPECIAL: Final = HOP_BY_HOP | {b"host", b"content-length", b"expect", _CLIENT}
# Never removed because Connection names them: they frame the request or name its target.
_PROTECTED: Final = frozenset({b"host", b"content-length", b"transfer-encoding"})


class ProtocolError(Exception):
    """A request the listener refuses: ``status`` to answer (always with ``Connection: close``) and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestHead:
    """A request head that passed every check, ready to forward.

    ``headers`` keep their order and case, minus the hop-by-hop ones (the
    upgrade pair stays on an upgrade request) and ``Expect: 100-continue``,
    which the listener answers itself. ``url`` is the absolute URL as bytes
    (origin form: ``http://{Host}{target}``); for CONNECT, ``connect`` is the
    target's (host, port). ``meshlib_client``: sent by meshlib's sidecar
    client, which reads the error chunk of a failed body (``_wire.py``).
    """

    __slots__ = (
        "chunked",
        "connect",
        "content_length",
        "expect_continue",
        "headers",
        "http11",
        "keep_alive",
        "meshlib_client",
        "method",
        "upgrade",
        "url",
    )

    def __init__(self) -> None:
        self.method = ""
        self.url = b""
        self.http11 = True
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.upgrade = False
        self.connect: tuple[str, int] | None = None
        self.meshlib_client = False

    @property
    def has_body(self) -> bool:
        """Whether a body follows the head."""
        return self.chunked or bool(self.content_length)


def _bad(reason: str) -> ProtocolError:
    return ProtocolError(400, reason)


def _request_line_error(line: bytes) -> ProtocolError:
    """Why a request line failed the strict pattern (the error path only)."""
    parts = line.split(b" ")
    if len(parts) == 2 and not parts[1].startswith(b"HTTP/"):
        return _bad("HTTP/0.9 request lines are not supported")
    if len(parts) != 3:
        return _bad("malformed request line: expected METHOD SP TARGET SP HTTP-VERSION")
    method, _, version = parts
    if not _IS_TOKEN.fullmatch(method):
        return _bad("invalid method")
    if not re.fullmatch(rb"HTTP/[0-9]\.[0-9]", version):
        return _bad("invalid HTTP version")
    return _bad("invalid character in the request target")


def _header_error(block: bytes) -> ProtocolError:
    """Which header line failed the strict pattern, and how (the error path only)."""
    if re.search(rb"\r(?!\n)|(?<!\r)\n", block):
        return _bad("bare CR or LF in the request head: lines must end with CRLF")
    for line in block.split(b"\r\n")[1:]:
        if line[:1] in (b" ", b"\t"):
            return _bad("obsolete line folding in a header")
        if _HEADER_LINE.fullmatch(line):
            continue
        name, colon, _ = line.partition(b":")
        if not colon:
            return _bad("header line without a colon")
        if name.rstrip(b" \t") != name:
            return _bad("whitespace between a header name and the colon")
        if not _IS_TOKEN.fullmatch(name):
            return _bad("invalid header name")
        return _bad("invalid character in a header value")
    return _bad("malformed header block")  # pragma: no cover - the pattern and this walk agree


# Host values found valid: a listener's clients send the same few, and the check is a regex and an int() (about
# 2,500 instructions a request, 1.5% of the sidecar's own). Bounded: emptied when full.
_VALID_AUTHORITIES: set[bytes] = set()
_AUTHORITY_CACHE_SIZE: Final = 256


def _valid_authority(value: bytes) -> bool:
    if value in _VALID_AUTHORITIES:
        return True
    match = _AUTHORITY.fullmatch(value)
    if match is None:
        return False
    port = match.group(2)
    if port is None or port == b"" or (len(port) <= 5 and int(port) <= 65535):
        if len(_VALID_AUTHORITIES) >= _AUTHORITY_CACHE_SIZE:
            _VALID_AUTHORITIES.clear()
        _VALID_AUTHORITIES.add(value)
        return True
    return False


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip(b" \t").lower() for t in value.split(b",")]


def parse_head(head: bytes, max_header_bytes: int) -> RequestHead:
    """Parse and check a request head: everything before the blank line, leading empty lines already skipped.

    Raises :class:`ProtocolError` with the status to answer.
    """
    nl = head.find(b"\r\n")
    if nl < 0:
        nl = len(head)
    if nl > MAX_REQUEST_LINE:
        raise ProtocolError(414, "request line too long")
    match = _REQUEST_LINE.fullmatch(head, 0, nl)
    if match is None:
        raise _request_line_error(head[:nl])
    method_b, target, major, minor = match.groups()
    if major != b"1" or minor not in (b"0", b"1"):
        raise ProtocolError(505, f"HTTP/{major.decode()}.{minor.decode()} is not supported")
    if len(head) - nl > max_header_bytes:
        raise ProtocolError(431, "request header block too large")
    if _HEADER_BLOCK.fullmatch(head, nl) is None:
        raise _header_error(head[nl:])
    fields = _HEADER_FIELD.findall(head, nl)
    if len(fields) > MAX_HEADERS:
        raise ProtocolError(431, f"more than {MAX_HEADERS} request headers")

    result = RequestHead()
    result.method = method = method_b.decode("ascii")
    http11 = result.http11 = minor == b"1"
    headers = result.headers
    host: bytes | None = None
    content_length: bytes | None = None
    transfer_encoding: list[bytes] | None = None
    connection: list[bytes] = []
    upgrade: bytes | None = None
    host_index = -1
    for name, raw_value in fields:
        value = raw_value.strip(b" \t")
        lname = name.lower()
        if lname not in _SPECIAL:
            headers.append((name, value))
        elif lname == b"host":
            if host is not None:
                raise _bad("more than one Host header")
            host = value
            host_index = len(headers)
            headers.append((name, value))
        elif lname == b"content-length":
            if content_length is not None:
                raise _bad("more than one Content-Length header")
            content_length = value
            headers.append((name, value))
        elif lname == b"transfer-encoding":
            if transfer_encoding is None:
                transfer_encoding = []
            transfer_encoding.append(value)
        elif lname == b"connection":
            connection.extend(_tokens(value))
        elif lname == b"proxy-connection":
            # Old HTTP/1.0 clients talking to a proxy ask for keep-alive here.
            if not http11 and b"keep-alive" in _tokens(value):
                connection.append(b"keep-alive")
        elif lname == b"upgrade":
            upgrade = value
        elif lname == b"expect":
            if value.lower() == b"100-continue":
                result.expect_continue = True
            else:
                headers.append((name, value))
        elif lname == _CLIENT:
            result.meshlib_client = True
        # te, trailer, keep-alive, proxy-authorization: consumed here

    # Framing.
    if transfer_encoding is not None:
        if content_length is not None:
            raise _bad("both Content-Length and Transfer-Encoding")
        if not http11:
            raise _bad("Transfer-Encoding on an HTTP/1.0 request")
        codings = _tokens(b",".join(transfer_encoding))
        if any(not _IS_TOKEN.fullmatch(c) for c in codings):
            raise _bad("malformed Transfer-Encoding")
        if codings != [b"chunked"]:
            if codings.count(b"chunked") > 1 or (b"chunked" in codings and codings[-1] != b"chunked"):
                raise _bad("chunked must be the final transfer coding, applied once")
            raise ProtocolError(501, "only the chunked transfer coding is supported")
        result.chunked = True
    elif content_length is not None:
        if not content_length.isdigit() or len(content_length) > 18:
            raise _bad("invalid Content-Length")
        result.content_length = int(content_length)

    # Target and Host.
    if host is None:
        if http11:
            raise _bad("missing Host header")
    elif not _valid_authority(host) and not (host == b"" and not http11):
        raise _bad("invalid Host header")
    if target.find(b"#") >= 0:  # not `in`, which raises and clears a TypeError first (see _transport/wire.py)
        raise _bad("fragment in the request target")
    if method == "CONNECT":
        hostport = _AUTHORITY.fullmatch(target)
        port = hostport.group(2) if hostport else None
        if hostport is None or not port or len(port) > 5 or not 0 < int(port) <= 65535:
            raise _bad("CONNECT needs a host:port target")
        result.connect = (hostport.group(1).decode("ascii").strip("[]"), int(port))
        if result.has_body:
            raise _bad("CONNECT with a body")
        result.url = b"http://" + target
    elif target[0] == 47:  # "/": origin form
        if not host:
            raise _bad("missing Host header")
        result.url = b"http://" + host + target
    elif target == b"*":
        if method != "OPTIONS":
            raise _bad("asterisk target on a method other than OPTIONS")
        if not host:
            raise _bad("missing Host header")
        result.url = b"http://" + host
    else:
        absolute = _ABSOLUTE.fullmatch(target)
        if absolute is None:
            raise _bad("invalid request target: not origin, absolute, authority or asterisk form")
        scheme, authority, rest = absolute.groups()
        if not authority or not _valid_authority(authority):
            raise _bad("invalid authority in the request target")
        if rest and rest[0] not in b"/?":
            raise _bad("invalid request target")
        result.url = scheme.lower() + b"://" + authority + (rest if rest[:1] == b"/" else b"/" + rest)
        # RFC 9112 §3.2.2: a proxy replaces Host with the target's authority.
        if host_index >= 0:
            headers[host_index] = (headers[host_index][0], authority)

    # Connection: keep-alive, upgrade, and the headers it names (hop-by-hop too).
    if http11:
        result.keep_alive = b"close" not in connection
    else:
        result.keep_alive = b"keep-alive" in connection and b"close" not in connection
    if (
        http11  # RFC 9110 §7.8: a server must ignore Upgrade in an HTTP/1.0 request
        and upgrade is not None
        and b"upgrade" in connection
        and b"websocket" in _tokens(upgrade)
        and result.connect is None
        and not result.has_body
    ):
        result.upgrade = True
    named = [t for t in connection if t not in (b"close", b"keep-alive", b"upgrade", b"") and t not in _PROTECTED]
    if named:
        drop = frozenset(named)
        result.headers = headers = [(n, v) for n, v in headers if n.lower() not in drop]
    if result.upgrade and upgrade is not None:
        # Added after the named headers are dropped: a Connection naming "connection" cannot take these away.
        headers.append((b"Connection", b"Upgrade"))
        headers.append((b"Upgrade", upgrade))
    if result.chunked:
        # The framing is the proxy's to redo; the upstream request is chunked as well.
        result.headers.append((b"Transfer-Encoding", b"chunked"))
    return result


class ChunkedDecoder:
    """Decodes a chunked request body strictly: hex sizes, CRLF everywhere, trailers checked and dropped."""

    __slots__ = ("_line", "_remaining", "_state", "_trailer_bytes", "done")

    # The decoder's states (one assignment each: mypyc compiles no tuple unpacking in a class body).
    _SIZE = 0
    _DATA = 1
    _DATA_END = 2
    _TRAILER = 3

    def __init__(self) -> None:
        self._state = self._SIZE
        self._remaining = 0
        self._line = b""
        self._trailer_bytes = 0
        self.done = False

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        """Decode ``data``: the body pieces in it, and how many bytes it used (fewer only once ``done``).

        Raises :class:`ProtocolError` (400) on a framing error.
        """
        out: list[bytes] = []
        pos = 0
        end = len(data)
        while pos < end and not self.done:
            if self._state == self._DATA:
                take = min(self._remaining, end - pos)
                out.append(data[pos : pos + take] if take != end or pos else data)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = self._DATA_END
                continue
            lf = data.find(b"\n", pos)
            if lf < 0:
                self._line += data[pos:]
                if len(self._line) > _MAX_CHUNK_LINE:
                    raise _bad("chunk size line too long")
                return out, end
            line = self._line + data[pos : lf + 1] if self._line else data[pos : lf + 1]
            self._line = b""
            pos = lf + 1
            if len(line) > _MAX_CHUNK_LINE:
                raise _bad("chunk size line too long")
            if line[-2:] != b"\r\n":
                raise _bad("bare LF in chunked framing")
            line = line[:-2]
            if self._state == self._SIZE:
                match = _CHUNK_SIZE.fullmatch(line)
                if match is None:
                    raise _bad("invalid chunk size")
                size = int(match.group(1), 16)
                if size:
                    self._remaining = size
                    self._state = self._DATA
                else:
                    self._state = self._TRAILER
            elif self._state == self._DATA_END:
                if line:
                    raise _bad("chunk data longer than its size")
                self._state = self._SIZE
            else:  # trailer section: checked like header lines, then dropped
                if not line:
                    self.done = True
                    break
                self._trailer_bytes += len(line)
                if self._trailer_bytes > _MAX_TRAILERS or not _HEADER_LINE.fullmatch(line):
                    raise _bad("invalid trailer section")
        return out, pos


def _reason(code: int) -> bytes:
    try:
        return HTTPStatus(code).phrase.encode("ascii")
    except ValueError:
        return b""


_STATUS_LINES: Final = {code: b"HTTP/1.1 %d %s\r\n" % (code, _reason(code)) for code in range(100, 600)}


def status_line(code: int) -> bytes:
    """``HTTP/1.1 CODE Reason\\r\\n``."""
    line = _STATUS_LINES.get(code)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % code


def local_response(
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    close: bool,
    head_only: bool = False,
    keep_alive_header: bool = False,
) -> bytes:
    """A whole response the listener answers itself; ``headers`` must already carry the Content-Length."""
    parts = [status_line(status)]
    for name, value in headers:
        parts.append(name + b": " + value + b"\r\n")
    if close:
        parts.append(b"connection: close\r\n")
    elif keep_alive_header:
        parts.append(b"connection: keep-alive\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def plain_error(status: int, reason: str, *, head_only: bool = False) -> bytes:
    """A listener's refusal as a whole response, always closing the connection."""
    body = f"{reason}\n".encode("ascii", "replace")
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    return local_response(status, headers, body, close=True, head_only=head_only)


# --- response heads ----------------------------------------------------------------------------------------------

# Response framings, as the client reads them: where the body ends.
WHOLE: Final = 0  # no body, or the body written whole with the head: nothing can fail midway
LENGTH: Final = 1
CHUNKED: Final = 2
UNTIL_CLOSE: Final = 3  # HTTP/1.0 without a length: the connection's end is the body's end
LAST_CHUNK: Final = b"0\r\n\r\n"

_LENGTH_HEADER: Final = LENGTH_HEADER.encode()
# Response headers that describe the upstream connection or its framing: never passed on as they came.
_RESPONSE_DROP: Final = HOP_BY_HOP | {b"content-length", _LENGTH_HEADER}
_TOKEN_CHARS: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# What a header line may hold besides its CRLF: visible ASCII, space, tab, obs-text.
_LINE_CHARS: Final = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
# Response header names checked already (tokens), by their bytes as sent: their lower case. Few names recur.
_NAMES: dict[bytes, bytes] = {}
_NAME_CACHE_SIZE: Final = 1024


class BadResponseError(httpx.RemoteProtocolError):
    """The handler's response can't be written as a valid HTTP/1.1 response: a malformed response, as httpcore
    says of one it can't parse (so the one error mapping, ``_engine/errors.py``, makes it an UpstreamResetError).

    ``close``: the connection was to close after the response (its head was framed already), so it closes
    after the answer given in its place too.
    """

    close = False


class ResponseHead:
    """A response head ready to write: ``data``, the body's ``framing``, its Content-Length (-1: none), and
    whether the connection ``close``\\ s after it."""

    __slots__ = ("close", "data", "framing", "length")

    def __init__(self, data: bytes, framing: int, length: int, close: bool) -> None:
        self.data = data
        self.framing = framing
        self.length = length
        self.close = close


# A builtin bound once: compiled, ``map`` is looked up on the builtins module at each use.
_map: Final = map


def _is_token(name: bytes) -> bool:
    return bool(name) and not name.translate(None, _TOKEN_CHARS)


def _header_lines(headers: list[tuple[bytes, bytes]], names_checked: bool) -> bytes:
    """The header lines, CRLF after each; BadResponseError unless every name is a token and no value holds CR,
    LF or another control byte."""
    if not headers:
        return b""
    lines = b"\r\n".join(_map(b": ".join, headers))  # in C: no bytecode per header
    # The names are tokens (checked, or known), so only the values' CR, LF and controls can be left beside the CRLFs.
    if lines.translate(None, _LINE_CHARS) != b"\r\n" * (len(headers) - 1) or not (
        names_checked or all(_is_token(name) for name, _ in headers)
    ):
        raise BadResponseError("invalid header in the response")
    return lines + b"\r\n"


def response_head(
    status: int, fields: list[tuple[bytes, bytes]], request: RequestHead, *, close: bool, in_memory: bool
) -> ResponseHead:
    """The head of a handler's response (``fields``: its raw headers) to ``request``, for a client on HTTP/1.x.

    ``close``: the connection closes after this response (the head then says
    so; HTTP/1.0 without a length forces it). ``in_memory``: the body is
    bytes already, so it can't fail midway. Raises BadResponseError for a
    response that can't be passed on (a bad or conflicting Content-Length, an
    invalid header).
    """
    headers: list[tuple[bytes, bytes]] = []
    length: bytes | None = None
    named: list[bytes] | None = None
    names = _NAMES
    checked = True
    for field in fields:
        name, value = field
        lname = names.get(name)
        if lname is None:
            lname = name.lower()
            if _is_token(name):
                if len(names) >= _NAME_CACHE_SIZE:
                    names.clear()
                names[name] = lname
            else:
                checked = False  # checked with the block: a name that is dropped anyway may be anything
        if lname in _RESPONSE_DROP:
            if lname == b"content-length":
                if length is not None and value != length:
                    raise BadResponseError("conflicting Content-Length in the response")
                length = value
            elif lname == b"connection":
                named = [t.strip().lower() for t in value.split(b",")]
            continue
        headers.append(field)
    if named:
        drop = frozenset(named)
        headers = [(n, v) for n, v in headers if n.lower() not in drop]
    if length is not None and (not length.isdigit() or len(length) > 18):
        raise BadResponseError("invalid Content-Length in the response")
    framing = WHOLE
    if request.method == "HEAD" or status == 204 or status == 304:
        if length is not None and status != 204:
            headers.append((b"content-length", length))
    elif length is not None:
        if request.meshlib_client and request.http11 and not in_memory:
            # meshlib's sidecar client reads why a body failed from its error chunk, so it gets every
            # streamed body chunked, and puts the Content-Length back (meshlib/_wire.py).
            headers.append((_LENGTH_HEADER, length))
            headers.append((b"transfer-encoding", b"chunked"))
            framing = CHUNKED
        else:
            headers.append((b"content-length", length))
            framing = LENGTH
    elif request.http11:
        headers.append((b"transfer-encoding", b"chunked"))
        framing = CHUNKED
    else:
        close = True  # HTTP/1.0 without a length: the body ends with the connection
        framing = UNTIL_CLOSE
    if close:
        headers.append((b"connection", b"close"))
    elif not request.http11:
        headers.append((b"connection", b"keep-alive"))
    try:
        lines = _header_lines(headers, checked)
    except BadResponseError as error:
        error.close = close
        raise
    return ResponseHead(
        status_line(status) + lines + b"\r\n", framing, int(length) if length is not None else -1, close
    )


def upgrade_head(fields: list[tuple[bytes, bytes]], upgrade: bytes | None) -> bytes:
    """The ``101 Switching Protocols`` head of an upgrade the upstream accepted (``fields``: its raw headers)."""
    headers = [(n, v) for n, v in fields if n.lower() not in _RESPONSE_DROP]
    headers.append((b"connection", b"upgrade"))
    if upgrade is not None:
        headers.append((b"upgrade", upgrade))
    return status_line(101) + _header_lines(headers, False) + b"\r\n"


def with_body(head: bytes, parts: list[bytes], chunked: bool, *, end: bool = False) -> bytes:
    """A response head and body ``parts`` as one write; when ``chunked``, each part a chunk of its own, and the
    last chunk after them if ``end``."""
    if not chunked:
        if len(parts) == 1:
            return head + parts[0]
        return b"".join([head, *parts]) if parts else head
    out = [head]
    for part in parts:
        out += (b"%x\r\n" % len(part), part, b"\r\n")
    if end:
        out.append(LAST_CHUNK)
    return b"".join(out)
