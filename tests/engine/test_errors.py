"""describe(): every mapped error says what happened, in the same words whichever httpx driver raised it.

The chains below are the ones httpx 0.28 and httpcore raise (printed from real
sockets on loopback): sync errors carry the OS error's text, async ones often
carry none, and the sidecar's own upstream client passes the OS error on as text.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl

import httpx
import pytest

from meshlib._engine.errors import describe
from meshlib._engine.timeouts import timeout_message
from meshlib._errors import TimeoutKind, try_message


def chained(*errors: BaseException) -> BaseException:
    """``errors[0]`` raised from ``errors[1]``, raised from ``errors[2]``, ...: as httpx maps httpcore's."""
    for outer, inner in itertools.pairwise(errors):
        outer.__cause__ = inner
    return errors[0]


RESET = ConnectionResetError(104, "Connection reset by peer")


@pytest.mark.parametrize(
    ("error", "words"),
    [
        # sync: the OS error's text all the way up
        (chained(httpx.ReadError("[Errno 104] Connection reset by peer"), RESET), "connection reset by peer"),
        # async: no text at all above the OS error
        (chained(httpx.ReadError(""), OSError(), RESET), "connection reset by peer"),
        # the sidecar's upstream client: the OS error as text only
        (httpx.ReadError("[Errno 104] Connection reset by peer"), "connection reset by peer"),
        # async connect: anyio's words above, the refusal below
        (
            chained(
                httpx.ConnectError("All connection attempts failed"),
                OSError("All connection attempts failed"),
                ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)"),
            ),
            "connection refused",
        ),
        (
            chained(httpx.ConnectError("[Errno 111] Connection refused"), ConnectionRefusedError(111, "x")),
            "connection refused",
        ),
        # a resolver error: its code is not an errno, its words are its own
        (
            chained(
                httpx.ConnectError("[Errno -2] Name or service not known"),
                socket.gaierror(-2, "Name or service not known"),
            ),
            "name or service not known",
        ),
        (httpx.ConnectError("[Errno -2] Name or service not known"), "name or service not known"),
        # an SSL error's errno is OpenSSL's: its text says more
        (
            chained(
                httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
                ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
            ),
            # Named as TLS, without OpenSSL's wrapping (the real handshake's words are in tests/tls/)
            "TLS handshake failed: certificate verify failed",
        ),
        # h11's words, the same in both drivers
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            "server disconnected without sending a response",
        ),
        (httpx.ConnectError("refused 3"), "refused 3"),
    ],
    ids=[
        "sync-reset",
        "async-reset",
        "text-only-reset",
        "async-refused",
        "sync-refused",
        "resolver",
        "resolver-text-only",
        "ssl",
        "closed-before-response",
        "plain-text",
    ],
)
def test_an_error_is_described_by_what_happened(error: BaseException, words: str) -> None:
    assert describe(error) == words


def test_the_cancellation_under_an_async_timeout_is_not_what_happened() -> None:
    timeout = TimeoutError()
    timeout.__context__ = asyncio.CancelledError("Cancelled via cancel scope 7f00; reason: deadline exceeded")
    assert describe(chained(httpx.ReadTimeout(""), httpx.ReadTimeout(""), timeout)) == "read timed out"


@pytest.mark.parametrize(
    ("cls", "words"),
    [
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
        (httpx.TransportError, "TransportError"),
    ],
)
def test_an_error_without_words_is_described_by_its_type(cls: type[httpx.TransportError], words: str) -> None:
    assert describe(cls("")) == words


def test_a_cycle_of_causes_ends() -> None:
    first, second = httpx.ReadError(""), httpx.ReadError("")
    first.__cause__, second.__cause__ = second, first
    assert describe(first) == "connection failed while reading the response"


def test_a_failed_try_is_named_in_one_shape() -> None:
    endpoint = "http://127.0.0.1:9081"
    assert (
        try_message("it broke", attempt=2, route="r", cluster="c", endpoint=endpoint)
        == f"it broke during try 2 of route 'r', cluster 'c' (endpoint {endpoint})"
    )
    assert try_message("it broke", attempt=2, route="r", cluster=None) == "it broke during try 2 of route 'r'"
    # A try that never started had no endpoint.
    assert (
        try_message("it broke", attempt=2, route=None, cluster="c", endpoint=endpoint, before=True)
        == "it broke before try 2 of cluster 'c'"
    )
    assert try_message("it broke", attempt=1, route=None, cluster=None) == "it broke during try 1"


@pytest.mark.parametrize(
    ("kind", "seconds", "message"),
    [
        ("request", 1.0, "request timeout (1s) ran out during try 3 of route 'r', cluster 'c' (endpoint E)"),
        ("per_try", 0.25, "per-try timeout (250ms) ran out during try 3 of route 'r', cluster 'c' (endpoint E)"),
        ("connect", 1.5, "connect timeout (1500ms) ran out during try 3 of route 'r', cluster 'c' (endpoint E)"),
        ("client", 5.0, "client timeout (5s) ran out during try 3 of route 'r', cluster 'c' (endpoint E)"),
        (None, None, "timeout ran out during try 3 of route 'r', cluster 'c' (endpoint E)"),
    ],
)
def test_a_timeout_names_its_kind_and_configured_duration(
    kind: TimeoutKind | None, seconds: float | None, message: str
) -> None:
    assert timeout_message(kind, seconds, route="r", cluster="c", attempt=3, endpoint="E") == message
