"""Mesh errors on the wire: how the sidecar answers in place of a ``MeshError``, and how a client reads it back.

The sidecar answers a request it could not carry out with the error's status
(``RouteNotFoundError`` 404, ``RateLimitedError`` 429, ``UpstreamResetError``
502, ``RequestTimeoutError`` 504, the other refusals 503) and names the cause
in ``x-meshlib-error``, as Envoy names its local replies in response flags.
A client in ``mode="sidecar"`` turns such a response back into the same
exception class the in-process engine raises, so application code sees the
same behaviour in both modes. A response without the header is the
upstream's own answer, whatever its status.
"""

from __future__ import annotations

import httpx

from meshlib._errors import (
    CircuitOpenError,
    MeshError,
    NoHealthyUpstreamError,
    OverloadedError,
    RateLimitedError,
    RequestTimeoutError,
    RouteNotFoundError,
    UpstreamConnectError,
    UpstreamResetError,
)

__all__ = ["ERROR_HEADER", "error_from_response", "error_head", "is_error_response"]

ERROR_HEADER = "x-meshlib-error"
ROUTE_HEADER = "x-meshlib-route"
CLUSTER_HEADER = "x-meshlib-cluster"
# For timeouts: "per-try" when one try ran out of time, "request" when the whole request's timeout did.
TIMEOUT_HEADER = "x-meshlib-timeout"

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
    """A header value from names the config allows, with anything outside printable ASCII replaced."""
    return "".join(c if " " <= c <= "~" else "?" for c in text).encode("ascii")


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
    if isinstance(error, RequestTimeoutError):
        headers.append((TIMEOUT_HEADER.encode(), b"per-try" if error.per_try else b"request"))
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
    error = cls(
        message,
        request=request,
        route=response.headers.get(ROUTE_HEADER),
        cluster=response.headers.get(CLUSTER_HEADER),
    )
    if isinstance(error, RequestTimeoutError):
        error.per_try = response.headers.get(TIMEOUT_HEADER) != "request"
    return error
