"""HTTP/1.1 on the wire for the client: a request's bytes, and what a response's framing says.

Pure functions, no I/O: the connection (``connection.py``) writes what
:func:`encode_request` returns and asks :func:`close_delimited` and
:func:`truncated` about the response it parsed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import httpx

from meshlib._engine.urls import target_of
from meshlib._httpx_shortcuts import BYTE_STREAM, EMPTY_BODY

if TYPE_CHECKING:
    from meshlib._transport.connection import ResponseStream

# Limits on a response head, as Envoy's defaults: 60 KiB and 100 header lines.
MAX_HEAD_BYTES: Final = 60 * 1024
MAX_HEADERS: Final = 100
DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}
VERSIONS: Final = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}
LAST_CHUNK: Final = b"0\r\n\r\n"
_METHODS: Final = {m: m.encode() for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


def encode_request(request: httpx.Request) -> tuple[bytes, Any, int, bool]:
    """Serialize ``request`` for the wire.

    Returns the head (followed by the body when that is bytes), the body
    stream (None when the body was bytes), the stream's Content-Length or -1
    to chunk-encode it, and whether the request lets the connection live on.
    """
    method = request.method
    parts = [_METHODS.get(method) or method.encode("ascii"), b" ", target_of(request.url), b" HTTP/1.1\r\n"]
    content_length = -1
    chunked = False
    keep_alive = True
    lines = 2  # the request line and the empty line; one more per header line
    raw = request.headers._list  # (name, lower-case name, value): httpx's own, without its .raw copy
    for name, _, value in raw:
        size = len(name)
        if size == 14 or size == 17 or size == 10:  # content-length, transfer-encoding, connection
            lower = name.lower()
            if lower == b"content-length":
                if not value.isdigit() or content_length != -1:
                    raise httpx.LocalProtocolError(f"Invalid Content-Length {value!r}", request=request)
                content_length = int(value)
            elif lower == b"transfer-encoding":
                if chunked or not value.rstrip().lower().endswith(b"chunked"):
                    raise httpx.LocalProtocolError(f"Unsupported Transfer-Encoding {value!r}", request=request)
                chunked = True
            elif lower == b"connection" and b"close" in value.lower():
                keep_alive = False
        # Four appends, not `+= (...)`: compiled, each is a list append, where the tuple is made and then concatenated.
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    if chunked and content_length != -1:
        raise httpx.LocalProtocolError("Both Content-Length and Transfer-Encoding", request=request)
    stream: Any = request.stream
    # A ByteStream (a body given as bytes) yields its one bytes object: sent with the head in one write.
    if stream is EMPTY_BODY:
        body: bytes | None = b""
    else:
        body = b"".join(stream) if isinstance(stream, BYTE_STREAM) else None
    if body is not None:
        if content_length == -1 and not chunked and body:
            parts.append(b"Content-Length: %d\r\n" % len(body))
            lines += 1
        elif content_length != -1 and content_length != len(body):
            raise httpx.LocalProtocolError("Content-Length does not match the body", request=request)
    elif content_length == -1 and not chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")  # a stream of unknown length needs a framing
        chunked = True
        lines += 1
    parts.append(b"\r\n")
    head = b"".join(parts)
    # No CR, LF or NUL inside the method, target, names or values: each line ends in the one CRLF written here, so
    # the head holds exactly 2 × lines of them. One pass that drops them, rather than a count of each and a find.
    lines += len(raw)
    if len(head) - len(head.translate(None, b"\r\n\0")) != 2 * lines:
        raise httpx.LocalProtocolError("Illegal characters in the request head", request=request)
    if body is None:
        return head, stream, -1 if chunked else content_length, keep_alive
    if chunked:
        if body:
            return b"".join((head, b"%x\r\n" % len(body), body, b"\r\n", LAST_CHUNK)), None, -1, keep_alive
        return head + LAST_CHUNK, None, -1, keep_alive
    return (head + body if body else head), None, -1, keep_alive


def truncated(ex: ResponseStream) -> str:
    """What a body cut short by the upstream's close lacks, as h11 says it."""
    for name, value in ex.headers:
        if name.lower() == b"content-length" and value.isdigit():
            return (
                "peer closed connection without sending complete message body"
                f" (received {ex.size} bytes, expected {int(value)})"
            )
    return "peer closed connection without sending complete message body (incomplete chunked read)"


def close_delimited(ex: ResponseStream) -> bool:
    """Whether the body of a response that ends the connection runs until the close (RFC 9112 §6.3)."""
    if ex.head_only or ex.status in (204, 304):
        return False
    chunked = False
    for name, value in ex.headers:
        lower = name.lower()
        if lower == b"content-length":
            return False
        if lower == b"transfer-encoding":
            chunked = value.rstrip().lower().endswith(b"chunked")
    return not chunked
