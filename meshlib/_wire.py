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
"""

from __future__ import annotations

from urllib.parse import quote, unquote

import httpx

from meshlib._config.durations import format_duration, parse_duration
from meshlib._errors import (
    CircuitOpenError,
    MeshError,
    NoHealthyUpstreamError,
    OverloadedError,
    RateLimitedError,
    RequestTimeoutError,
    RouteNotFoundError,
    TimeoutKind,
    UpstreamConnectError,
    UpstreamResetError,
)

__all__ = [
    "ERROR_HEADER",
    "TIMEOUT_HEADER",
    "TIMEOUT_VALUE_HEADER",
    "error_from_response",
    "error_head",
    "is_error_response",
]

ERROR_HEADER = "x-meshlib-error"
ROUTE_HEADER = "x-meshlib-route"
CLUSTER_HEADER = "x-meshlib-cluster"
# Which timeout failed the request: "per-try" when one try ran out of time, "request" when the whole
# request's timeout did, "connect" or "client"; older clients read only "request" (per_try is False).
TIMEOUT_HEADER = "x-meshlib-timeout"
TIMEOUT_VALUE_HEADER = "x-meshlib-timeout-value"

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

_CLASSES: dict[str, type[MeshError]] = {
    cls.code: cls
    for cls in (
        RouteNotFoundError,
        NoHealthyUpstreamError,
        RateLimitedError,
        CircuitOpenError,
        OverloadedError,
        UpstreamConnectError,
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
    return error.status, headers, body


def is_error_response(response: httpx.Response) -> bool:
    """Whether a sidecar's response stands for a MeshError (it names one in ``x-meshlib-error``)."""
    return ERROR_HEADER in response.headers


def error_from_response(response: httpx.Response, request: httpx.Request, body: bytes) -> MeshError:
    """The MeshError that a sidecar's error response (see :func:`is_error_response`) with ``body`` stands for."""
    code = response.headers[ERROR_HEADER]
    cls = _CLASSES.get(code, MeshError)
    message = body.decode(errors="replace").strip()
    prefix = f"{code}: "
    message = message.removeprefix(prefix) or f"the sidecar answered {response.status_code} ({code})"
    route = _name_from_header(response.headers.get(ROUTE_HEADER))
    cluster = _name_from_header(response.headers.get(CLUSTER_HEADER))
    if not issubclass(cls, RequestTimeoutError | UpstreamConnectError):
        return cls(message, request=request, route=route, cluster=cluster)
    token = response.headers.get(TIMEOUT_HEADER)
    error = cls(
        message,
        request=request,
        route=route,
        cluster=cluster,
        kind=_TIMEOUT_KINDS.get(token) if token is not None else None,
        timeout=_duration(response.headers.get(TIMEOUT_VALUE_HEADER)),
    )
    if isinstance(error, RequestTimeoutError):
        error.per_try = token != "request"
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
