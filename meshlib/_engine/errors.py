"""Error mapping at the send boundary: httpx's transport errors → the mesh's typed errors, in one place.

Like httpx's ``map_httpcore_exceptions``: one table, the most specific match
wins, and the original error stays as ``__cause__``. Every message says what
happened in words that read the same in sync and async (:func:`describe`).
Two callers:

* :func:`upstream_error`, for a try the engine sent: the message names the
  try, route, cluster and endpoint; a timeout's names the timeout that ran
  out (``_policies/timeout.py``); errors that are not the upstream's (a
  malformed request, an unsupported scheme) pass through as they are.
* :func:`mesh_error`, for a front door that must answer every failure on the
  wire (the sidecar's listener: passthrough traffic goes straight to the
  sender, and a response it cannot write is the upstream's fault): the
  message names the endpoint, and any other transport error is a reset.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import ssl

import httpx

from meshlib._engine.context import CallContext
from meshlib._engine.timeouts import Phase, timeout_error
from meshlib._errors import (
    MeshError,
    PeerIdentityError,
    RequestTimeoutError,
    UpstreamConnectError,
    UpstreamResetError,
    try_message,
)
from meshlib._tls.identity import PeerIdentityMismatch

__all__ = ["describe", "mesh_error", "openssl_words", "upstream_error"]

# Order matters: ConnectTimeout is a TimeoutException, but the request never left, so it is a connect failure.
_PHASES: tuple[tuple[type[httpx.TimeoutException], Phase], ...] = (
    (httpx.ConnectTimeout, "connect"),
    (httpx.WriteTimeout, "write"),
    (httpx.PoolTimeout, "pool"),
)
# What a transport error stands for, most specific first: ConnectError is a NetworkError, and ConnectTimeout
# a TimeoutException whose request never left, so a connect failure. (A try's timeouts say more: timeout_error.)
_MAPPING: tuple[tuple[type[httpx.TransportError], type[MeshError]], ...] = (
    (httpx.ConnectError, UpstreamConnectError),
    (httpx.ConnectTimeout, UpstreamConnectError),
    (httpx.TimeoutException, RequestTimeoutError),
    (httpx.NetworkError, UpstreamResetError),
    (httpx.RemoteProtocolError, UpstreamResetError),
)
# What an exception without words of its own (async ones often have none) stands for; most specific first.
_WORDS: tuple[tuple[type[BaseException], str], ...] = (
    (httpx.ConnectTimeout, "connect timed out"),
    (httpx.ReadTimeout, "read timed out"),
    (httpx.WriteTimeout, "write timed out"),
    (httpx.PoolTimeout, "timed out waiting for a pooled connection"),
    (httpx.ConnectError, "connection failed"),
    (httpx.ReadError, "connection failed while reading the response"),
    (httpx.WriteError, "connection failed while sending the request"),
    (httpx.CloseError, "connection failed while closing"),
    (httpx.RemoteProtocolError, "malformed response"),
    (httpx.LocalProtocolError, "malformed request"),
    (httpx.ProxyError, "proxy error"),
    (httpx.UnsupportedProtocol, "unsupported protocol"),
    (httpx.NetworkError, "network error"),
    (TimeoutError, "timed out"),
    (httpx.TimeoutException, "timed out"),
)
# httpx → httpcore → anyio or h11 → the OS error: the chain is short.
_CHAIN_LIMIT = 8
_QUOTED_ERRNO = re.compile(r"\[Errno (-?\d+)\] (.+)", re.DOTALL)
# What OpenSSL wraps its reason in: "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:2580)".
_OPENSSL_NOISE = re.compile(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\] | \(_ssl\.c:\d+\)$")


def upstream_error(exc: httpx.TransportError, ctx: CallContext) -> MeshError | None:
    """The mesh error for ``exc`` (raised by the inner transport), or None to let it through as is."""
    if isinstance(exc, MeshError):
        return None
    if isinstance(exc, PeerIdentityMismatch):
        return PeerIdentityError(
            _in_try(str(exc), ctx),
            request=ctx.original,
            route=ctx.route.name,
            cluster=ctx.cluster,
            peer=exc.peer,
            expected=exc.expected,
        )
    if isinstance(exc, httpx.TimeoutException):
        phase: Phase = next((phase for cls, phase in _PHASES if isinstance(exc, cls)), "read")
        return timeout_error(ctx, phase)
    target = _mesh_class(exc)
    if target is None:
        return None
    return target(_in_try(describe(exc), ctx), request=ctx.original, route=ctx.route.name, cluster=ctx.cluster)


def _in_try(text: str, ctx: CallContext) -> str:
    """``text``, saying which try of which route, cluster and endpoint it happened in."""
    return try_message(
        text,
        attempt=ctx.attempt,
        route=ctx.route.name,
        cluster=ctx.cluster,
        endpoint=ctx.endpoint.url if ctx.endpoint is not None else None,
    )


def mesh_error(exc: BaseException, request: httpx.Request | None) -> MeshError | None:
    """The ``MeshError`` that stands for ``exc`` on the wire, or None for an exception that is no transport error.

    For a front door that answers every failure itself (the sidecar's
    listener): a ``MeshError`` is itself; a transport error raised outside
    the engine's tries (passthrough traffic) maps through the same table as
    a try's, every other one (a malformed request, a response that can't be
    passed on) is an :class:`UpstreamResetError`, as Envoy resets the
    stream. The message says what happened and where:
    ``connection refused (endpoint http://host:port)``.
    """
    if isinstance(exc, MeshError):
        return exc
    if not isinstance(exc, httpx.TransportError):
        return None
    message = describe(exc)
    if request is not None:
        message += f" (endpoint {request.url.scheme}://{request.url.netloc.decode('ascii')})"
    return (_mesh_class(exc) or UpstreamResetError)(message, request=request)


def _mesh_class(exc: httpx.TransportError) -> type[MeshError] | None:
    return next((target for source, target in _MAPPING if isinstance(exc, source)), None)


def describe(exc: BaseException) -> str:
    """What ``exc`` says happened, never empty, e.g. ``connection reset by peer``.

    An OS error code under it wins (as an OSError in the chain of causes, or
    quoted as ``[Errno 104] ...`` in the first words found), since sync and
    async wrap the same one in different words (``[Errno 111] Connection
    refused`` and ``All connection attempts failed``) or in none; then the
    first words along the chain; then words for the exception's type.
    """
    text = ""
    seen: BaseException | None = exc
    for _ in range(_CHAIN_LIMIT):
        # A cancellation under a timeout is how anyio implements it, not what happened.
        if seen is None or isinstance(seen, asyncio.CancelledError):
            break
        if isinstance(seen, ssl.SSLError):  # the same words whichever client made the handshake
            return _tls_words(seen)
        if isinstance(seen, OSError):
            words = _os_words(seen.errno, seen.strerror)
            if words:
                return _sentence(words)
        if not text:
            text = str(seen).strip()
            # An OS error passed on as text only ("[Errno 104] Connection reset by peer"): its errno still counts.
            quoted = _QUOTED_ERRNO.match(text)
            if quoted is not None:
                return _sentence(_os_words(int(quoted[1]), quoted[2]) or quoted[2])
        seen = seen.__cause__ or seen.__context__
    if text:
        return _sentence(text)
    return next((words for cls, words in _WORDS if isinstance(exc, cls)), type(exc).__name__)


def openssl_words(exc: ssl.SSLError) -> str:
    """OpenSSL's reason without its wrapping: ``tlsv1 alert unknown ca``, ``ee key too small``."""
    return _OPENSSL_NOISE.sub("", str(exc.strerror or exc)).strip() or type(exc).__name__


def _tls_words(exc: ssl.SSLError) -> str:
    """``TLS handshake failed: certificate verify failed: certificate has expired``, or ``TLS error: REASON``."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = getattr(exc, "verify_message", None)  # set by OpenSSL's verification, not by a hand-made error
        words = f"certificate verify failed: {_sentence(why)}" if why else _sentence(openssl_words(exc))
        return f"TLS handshake failed: {words}"
    return f"TLS error: {_sentence(openssl_words(exc))}"


def _os_words(code: int | None, words: str | None) -> str | None:
    """An OS error in words: the errno's own when it is the OS's, else the error's (a resolver's gaierror)."""
    if code is not None and code in errno.errorcode:
        return os.strerror(code)
    return words or None


def _sentence(text: str) -> str:
    """``Connection refused.`` → ``connection refused``: a clause that fits inside a longer message."""
    text = text.strip().removesuffix(".")
    if text[:1].isupper() and text[1:2].islower():  # leave an acronym (``SSL: ...``) alone
        text = text[0].lower() + text[1:]
    return text
