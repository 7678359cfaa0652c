"""httpx's request and response objects, built without re-checking what the wire or the original already holds.

``httpx.Request.__init__`` and ``httpx.Response.__init__`` accept anything
(strings or bytes, mappings or lists, a URL to parse) and normalise it:
each header name and value goes through three calls, a URL is wrapped
again. On the data path the inputs are already what httpx would make of
them (bytes read off the wire, a request httpx built), and those calls are
a few µs of every request. These functions set the same attributes the
constructors set for a streamed message; tests/test_httpx_shortcuts.py
compares them with httpx's own, so an httpx release that adds or renames
one fails a test, not a request.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Final

import httpx

__all__ = [
    "ASYNC_BYTE_STREAM",
    "BYTE_STREAM",
    "EMPTY_BODY",
    "HEADERS",
    "LOWER_NAME",
    "REQUEST",
    "RESPONSE",
    "URL",
    "copy_request",
    "header_value",
    "headers_from_wire",
    "new_instance",
    "request_from_wire",
    "response_from_wire",
]

# An instance without its class's __init__ (httpx's run Python frames): the fields are set by hand below.
new_instance: Final = object.__new__

# httpx's classes, bound once. Compiled, ``httpx.Request`` is a module attribute looked up at each use (about 250
# instructions, twenty times a request across the request path); these are read as C statics.
URL: Final = httpx.URL
REQUEST: Final = httpx.Request
RESPONSE: Final = httpx.Response
HEADERS: Final = httpx.Headers
BYTE_STREAM: Final = httpx.ByteStream
ASYNC_BYTE_STREAM: Final = httpx.AsyncByteStream

# The lower-case name of an httpx.Headers entry, (raw name, lower-case name, value): `map(LOWER_NAME,
# headers._list)` scans names in C, where `name in headers` first decodes every header of a new Headers.
LOWER_NAME: Final = itemgetter(1)

# The body of a request that has none, shared: a sender that meets this very object knows it is empty without
# iterating it (a ByteStream's iteration is a Python generator: a frame each time, and a request met it twice).
EMPTY_BODY: Final = httpx.ByteStream(b"")


def header_value(headers: httpx.Headers, key: bytes) -> str | None:
    """``headers.get(name)``, for ``key`` the name lower-cased as bytes, without decoding the other headers.

    httpx decodes every header of a new ``Headers`` to settle on its encoding, then each value it compares; here the
    names are compared as bytes and only the value found is decoded. Repeated headers are joined with ", ", as
    ``get`` joins them; a value outside ASCII is decoded in the encoding httpx settles on (an ASCII one reads the
    same in each it may pick: ASCII, UTF-8 or Latin-1).
    """
    first: bytes | None = None
    more: list[bytes] | None = None
    # Equality tests: a dict or set would hash each name, which httpx makes anew for every request.
    for _, name, value in headers._list:
        if name == key:
            if first is None:
                first = value
            elif more is None:
                more = [first, value]
            else:
                more.append(value)
    if first is None:
        return None
    raw = first if more is None else b", ".join(more)
    return raw.decode("ascii") if raw.isascii() else raw.decode(headers.encoding)


def raw_items(headers: httpx.Headers) -> list[tuple[bytes, bytes]]:
    """``headers.raw``: the names as given and the values, in bytes (compiled, where httpx's property is Python)."""
    return [(name, value) for name, _, value in headers._list]


def headers_from_wire(raw: list[tuple[bytes, bytes]]) -> httpx.Headers:
    """``httpx.Headers(raw)`` for names and values in bytes, as read: httpx keeps such bytes as they are."""
    headers: httpx.Headers = new_instance(HEADERS)
    headers._list = [(name, name.lower(), value) for name, value in raw]
    headers._encoding = None
    return headers


def request_from_wire(
    method: str, url: httpx.URL, raw: list[tuple[bytes, bytes]], stream: httpx.AsyncByteStream
) -> httpx.Request:
    """``httpx.Request(method, url, headers=raw, stream=stream)`` for a request read off the wire."""
    request: httpx.Request = new_instance(REQUEST)
    request.method = method.upper()
    request.url = url  # immutable: httpx.Request would wrap it in another URL of the same parts
    request.headers = headers_from_wire(raw)
    request.extensions = {}
    request.stream = stream
    return request


def copy_request(request: httpx.Request) -> httpx.Request:
    """``httpx.Request(method, url, headers=, stream=, extensions=)`` of ``request``: the engine's upstream copy.

    Its own headers and extensions, so the original stays untouched; the
    same method (upper-cased already), URL and stream, which httpx.Request
    would take as they are.
    """
    upstream: httpx.Request = new_instance(REQUEST)
    upstream.method = request.method
    upstream.url = request.url
    headers: httpx.Headers = new_instance(HEADERS)
    headers._list = list(request.headers._list)  # httpx.Headers(request.headers), without its Python frame
    headers._encoding = None  # as httpx's copy: it passes no encoding on
    upstream.headers = headers
    upstream.extensions = dict(request.extensions)
    upstream.stream = request.stream
    return upstream


def response_from_wire(
    status: int, raw: list[tuple[bytes, bytes]], stream: httpx.AsyncByteStream, extensions: dict[str, Any]
) -> httpx.Response:
    """``httpx.Response(status, headers=raw, stream=stream, extensions=extensions)`` for a response read off the
    wire (``extensions`` is the response's own, not copied)."""
    response: httpx.Response = new_instance(RESPONSE)
    response.status_code = status
    response.headers = headers_from_wire(raw)
    response._request = None
    response.next_request = None
    response.extensions = extensions
    response.history = []
    response.is_closed = False
    response.is_stream_consumed = False
    response.default_encoding = "utf-8"
    response.stream = stream
    response._num_bytes_downloaded = 0
    return response
