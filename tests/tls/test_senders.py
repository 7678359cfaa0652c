"""Swapping a TLS cluster's transport on rotation: new requests take the new one, the old closes once idle."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import httpx
import pytest

from meshlib._tls.cluster import ClusterTls
from meshlib._tls.senders import AsyncTlsTransport, TlsTransport

pytestmark = pytest.mark.anyio


class FakeTls:
    """Stands for a ClusterTls whose material is at ``version``."""

    def __init__(self) -> None:
        self.version = 1
        self.server_name = "reviews"
        self.verify_peer = None
        self.closed = False

    def current(self) -> tuple[int, ssl.SSLContext]:
        return self.version, ssl.create_default_context()


class Streamed(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body still on its connection (as httpx's network transports return): read when the caller reads."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        yield self.body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body


class Recorder(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """A transport per version: answers with its version, and records whether it was closed."""

    def __init__(self, version: int, *, whole: bool = False) -> None:
        self.version = version
        self.whole = whole
        self.closed = False
        self.sni: list[Any] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sni.append(request.extensions.get("sni_hostname"))
        body = b"v%d" % self.version
        return httpx.Response(200, stream=httpx.ByteStream(body) if self.whole else Streamed(body))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return self.handle_request(request)

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def _transports(kind: str, *, whole: bool = False) -> tuple[FakeTls, list[Recorder], TlsTransport | AsyncTlsTransport]:
    tls = FakeTls()
    built: list[Recorder] = []

    def build(context: ssl.SSLContext, verify_peer: object) -> Recorder:
        built.append(Recorder(tls.version, whole=whole))
        return built[-1]

    cls = TlsTransport if kind == "sync" else AsyncTlsTransport
    return tls, built, cls(cast(ClusterTls, tls), build)


async def _send(transport: TlsTransport | AsyncTlsTransport) -> httpx.Response:
    if isinstance(transport, TlsTransport):
        request = httpx.Request("GET", "https://127.0.0.1:9443/", extensions={"kind": "sync"})
        response = transport.handle_request(request)
    else:
        request = httpx.Request("GET", "https://127.0.0.1:9443/", extensions={"kind": "async"})
        response = await transport.handle_async_request(request)
    response.request = request
    return response


async def _close(response: httpx.Response) -> None:
    """Close the body the way its client would: httpx.Client closes, httpx.AsyncClient acloses."""
    if response.request.extensions.get("kind") == "sync":
        response.close()
    else:
        await response.aclose()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_rotation_builds_a_new_transport_and_the_old_closes_after_its_last_response(kind: str) -> None:
    tls, built, transport = _transports(kind)
    in_flight = await _send(transport)
    tls.version = 2  # the files rotated
    after = await _send(transport)
    assert [b.version for b in built] == [1, 2]
    assert not built[0].closed  # a response still reads from it
    await _close(in_flight)
    assert built[0].closed
    await _close(after)
    assert not built[1].closed
    assert built[0].sni == built[1].sni == ["reviews"]  # server_name goes as the SNI


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_body_read_whole_already_frees_its_transport_at_once(kind: str) -> None:
    # The sidecar's pooled client reads small bodies whole (``complete``): no wrapper waits for their close.
    tls, built, transport = _transports(kind, whole=True)
    response = await _send(transport)
    assert isinstance(response.stream, httpx.ByteStream)
    tls.version = 2
    await _send(transport)
    assert built[0].closed  # nothing of it is in use: closed when version 2 took over
    assert response.read() == b"v1"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_an_idle_old_transport_closes_at_once(kind: str) -> None:
    tls, built, transport = _transports(kind)
    await _close(await _send(transport))
    await _close(await _send(transport))
    tls.version = 2
    await _close(await _send(transport))
    assert len(built) == 2  # one transport per version, reused while it lasts
    assert built[0].closed
    assert not built[1].closed
    if isinstance(transport, TlsTransport):
        transport.close()
    else:
        await transport.aclose()
    assert built[1].closed
