"""Mesh errors on the wire: how the sidecar answers in place of a ``MeshError``, and how a client reads it back.

The sidecar answers a request it could not carry out with the error's status
(``RouteNotFoundError`` 404, ``RateLimitedError`` 429, ``UpstreamResetError``
502, ``RequestTimeoutError`` 504, the other refusals 503) and names the cause
in ``x-meshlib-error``, as Envoy names its local replies in response flags.
A client in ``mode="sidecar"`` turns such a response back into the same
exception class the in-process engine raises, so application code sees the
same behaviour in both modes. A response without the header is the
upstream's own answer, whatever its status.

The body is ``{code}: {message}``, so the client raises the very message the
engine wrote. When a timeout failed the request, ``x-meshlib-timeout`` names
it (``request``, ``per-try``, ``connect`` or ``client``) and
``x-meshlib-timeout-value`` gives its configured duration (``500ms``), which
become the error's ``kind`` and ``timeout``.

A response whose body fails after its head went out can't change its status
any more: a chunked body then ends with :func:`error_chunk`, an unfinished
chunk whose extensions carry the same fields, and the connection closes, so
every client sees the body cut short and meshlib's reads the error back
(:func:`error_from_chunk`). Its requests say so with ``x-meshlib-client``, and
the sidecar sends them every streamed body chunked (docs/sidecar.md, "When the
body fails").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import quote, unquote

import httpx

from meshlib._config.durations import format_duration, parse_duration
from meshlib._errors import (
    CircuitOpenError,
    MeshError,
    NoHealthyUpstreamError,
    OverloadedError,
    PeerIdentityError,
    RateLimitedError,
    RequestTimeoutError,
    RouteNotFoundError,
    TimeoutKind,
    UpstreamConnectError,
    UpstreamResetError,
)

__all__ = [
    "CLIENT_HEADER",
    "ERROR_HEADER",
    "LENGTH_HEADER",
    "TIMEOUT_HEADER",
    "TIMEOUT_VALUE_HEADER",
    "error_chunk",
    "error_from_chunk",
    "error_from_response",
    "error_head",
    "is_error_response",
]

ERROR_HEADER: Final = "x-meshlib-error"
ROUTE_HEADER = "x-meshlib-route"
CLUSTER_HEADER = "x-meshlib-cluster"
# Which timeout failed the request: "per-try" when one try ran out of time, "request" when the whole
# request's timeout did, "connect" or "client"; older clients read only "request" (per_try is False).
TIMEOUT_HEADER = "x-meshlib-timeout"
TIMEOUT_VALUE_HEADER = "x-meshlib-timeout-value"
# A PeerIdentityError's fields: the SPIFFE ID the upstream presented, and the expected ones (space-separated).
PEER_IDENTITY_HEADER = "x-meshlib-peer-identity"
EXPECTED_IDENTITIES_HEADER = "x-meshlib-expected-identities"
# On requests from meshlib's sidecar client, sent to the sidecar only (a proxy header) and dropped there: the
# client reads error chunks, so the sidecar chunks every streamed body it sends it, moving a Content-Length
# to LENGTH_HEADER, which the client puts back.
CLIENT_HEADER = "x-meshlib-client"
LENGTH_HEADER = "x-meshlib-content-length"

_TIMEOUT_TOKENS: dict[TimeoutKind, str] = {
    "request": "request",
    "per_try": "per-try",
    "connect": "connect",
    "client": "client",
}
_TIMEOUT_KINDS: dict[str, TimeoutKind] = {token: kind for kind, token in _TIMEOUT_TOKENS.items()}
# Route names are free text: all but printable ASCII is percent-encoded, and so are "%" and spaces (which a
# parser may strip from the ends of a value), so the client reads back the very name.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")
# An error chunk's parameters: quoted strings (RFC 9112 §7.1.1) of printable ASCII and spaces, but for the quote,
# the backslash and the percent sign, which is the escape for everything else.
_QUOTED_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\%')
_MESSAGE_PARAM = "x-meshlib-message"
_CHUNK_START = b"\r\n1;" + ERROR_HEADER.encode() + b'="'
_CHUNK_PARAM = re.compile(rb';(x-meshlib-[a-z-]+)="([^"]*)"')

_CLASSES: dict[str, type[MeshError]] = {
    cls.code: cls
    for cls in (
        RouteNotFoundError,
        NoHealthyUpstreamError,
        RateLimitedError,
        CircuitOpenError,
        OverloadedError,
        UpstreamConnectError,
        PeerIdentityError,
        UpstreamResetError,
        RequestTimeoutError,
    )
}


def _header_safe(text: str) -> bytes:
    """A name as a header value: UTF-8 percent-encoded outside printable ASCII (``revues-%C3%A9t%C3%A9``)."""
    return quote(text, safe=_HEADER_SAFE).encode("ascii")


def error_head(error: MeshError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The sidecar's answer in place of ``error``: status, headers and a one-line text body."""
    body = f"{error.code}: {error}\n".encode(errors="replace")
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (ERROR_HEADER.encode(), error.code.encode()),
    ]
    if error.route is not None:
        headers.append((ROUTE_HEADER.encode(), _header_safe(error.route)))
    if error.cluster is not None:
        headers.append((CLUSTER_HEADER.encode(), _header_safe(error.cluster)))
    if isinstance(error, RequestTimeoutError | UpstreamConnectError):
        token = _TIMEOUT_TOKENS[error.kind] if error.kind is not None else None
        if token is None and isinstance(error, RequestTimeoutError) and not error.per_try:
            token = "request"  # kind unknown, but not a try's own time: what per_try says, as before
        if token is not None:
            headers.append((TIMEOUT_HEADER.encode(), token.encode()))
        if error.timeout is not None:
            headers.append((TIMEOUT_VALUE_HEADER.encode(), format_duration(error.timeout).encode()))
    if isinstance(error, PeerIdentityError):
        if error.peer is not None:
            headers.append((PEER_IDENTITY_HEADER.encode(), _header_safe(error.peer)))
        headers.append((EXPECTED_IDENTITIES_HEADER.encode(), b" ".join(map(_header_safe, error.expected))))
    return error.status, headers, body


def error_chunk(error: MeshError) -> bytes:
    """The end of a chunked body that failed: a chunk-size line naming ``error`` in its extensions, and no data.

    ``1;x-meshlib-error="timeout";x-meshlib-timeout="per-try";...;x-meshlib-message="per-try timeout (300ms) ..."``:
    the parameters are the error answer's ``x-meshlib-*`` headers and the message, each a quoted string,
    percent-encoded beyond printable ASCII. The byte it announces never comes: the connection closes after it.
    """
    _, headers, _ = error_head(error)
    params = [(name, value.decode("ascii")) for name, value in headers if name.startswith(b"x-meshlib-")]
    params.append((_MESSAGE_PARAM.encode(), str(error)))
    line = b"".join(b';%b="%b"' % (name, quote(value, safe=_QUOTED_SAFE).encode("ascii")) for name, value in params)
    return b"1" + line + b"\r\n"


def error_from_chunk(tail: bytes, request: httpx.Request) -> MeshError | None:
    """The MeshError an :func:`error_chunk` at the very end of ``tail`` (the last bytes received) names, or None."""
    start = tail.rfind(_CHUNK_START)
    if start < 0 or not tail.endswith(b"\r\n") or tail.find(b"\r\n", start + 2) != len(tail) - 2:
        return None  # no error chunk, or not the last line: the connection ended for another reason
    fields = {name.decode("ascii"): unquote(value.decode("ascii")) for name, value in _CHUNK_PARAM.findall(tail, start)}
    if ERROR_HEADER not in fields:
        return None
    message = fields.pop(_MESSAGE_PARAM, "") or f"the sidecar failed the response body ({fields[ERROR_HEADER]})"
    return _error(fields, request, message)


def is_error_response(response: httpx.Response) -> bool:
    """Whether a sidecar's response stands for a MeshError (it names one in ``x-meshlib-error``)."""
    return ERROR_HEADER in response.headers


def error_from_response(response: httpx.Response, request: httpx.Request, body: bytes) -> MeshError:
    """The MeshError that a sidecar's error response (see :func:`is_error_response`) with ``body`` stands for."""
    code = response.headers[ERROR_HEADER]
    message = body.decode(errors="replace").strip()
    prefix = f"{code}: "
    message = message.removeprefix(prefix) or f"the sidecar answered {response.status_code} ({code})"
    return _error(response.headers, request, message)


def _error(fields: Mapping[str, str], request: httpx.Request, message: str) -> MeshError:
    """The MeshError that the ``x-meshlib-*`` ``fields`` of an error answer or error chunk name."""
    cls = _CLASSES.get(fields[ERROR_HEADER], MeshError)
    route = _name_from_header(fields.get(ROUTE_HEADER))
    cluster = _name_from_header(fields.get(CLUSTER_HEADER))
    if not issubclass(cls, RequestTimeoutError | UpstreamConnectError):
        return cls(message, request=request, route=route, cluster=cluster)
    token = fields.get(TIMEOUT_HEADER)
    error = cls(
        message,
        request=request,
        route=route,
        cluster=cluster,
        kind=_TIMEOUT_KINDS.get(token) if token is not None else None,
        timeout=_duration(fields.get(TIMEOUT_VALUE_HEADER)),
    )
    if isinstance(error, RequestTimeoutError):
        error.per_try = token != "request"
    elif isinstance(error, PeerIdentityError):
        error.peer = _name_from_header(fields.get(PEER_IDENTITY_HEADER))
        error.expected = tuple(unquote(i) for i in fields.get(EXPECTED_IDENTITIES_HEADER, "").split())
    return error


def _name_from_header(value: str | None) -> str | None:
    return unquote(value) if value is not None else None


def _duration(value: str | None) -> float | None:
    """A duration header's seconds; None when absent or unreadable (the error matters more than its detail)."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError:
        return None
