"""A meshed response is freed by reference counting once it is closed: no cycle for the collector to find.

An httpx client wraps every response's stream in one that refers back to the
response (``BoundSyncStream`` / ``BoundAsyncStream``). The mesh transports put
their own body stream back once the response is closed, so a closed response
(with the request copy and the records the mesh kept for it) goes the moment
the caller drops it. Checked with the collector off: a weak reference that
still resolves after ``del`` is a cycle.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

import meshlib
from tests.conftest import MakeMesh

pytestmark = pytest.mark.anyio

URL = "http://reviews/x"
CONFIG = {
    "clusters": {
        "reviews": {
            "endpoints": ["http://10.0.0.1:80"],
            "timeout": "5s",
            "retry": {"attempts": 2, "retry_on": ["5xx"]},
            "circuit_breaker": {"failure_threshold": 50},
        }
    }
}


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, stream=_Chunks([b"he", b"llo"]))


class _Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that arrives in pieces (not in memory), as a network one does."""

    def __init__(self, chunks: list[bytes], fail: Exception | None = None) -> None:
        self.chunks = chunks
        self.fail = fail

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.fail is not None:
            raise self.fail

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.fail is not None:
            raise self.fail


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _sync_client(mesh: meshlib.Mesh) -> httpx.Client:
    return mesh.client(transport=httpx.MockTransport(_ok))


def _async_client(mesh: meshlib.Mesh) -> httpx.AsyncClient:
    return mesh.async_client(transport=httpx.MockTransport(_ok))


@pytest.mark.usefixtures("collector_off")
@pytest.mark.parametrize("how", ["mesh.client", "wrap"])
def test_a_read_response_is_freed_when_dropped(make_mesh: MakeMesh, how: str) -> None:
    mesh = make_mesh(CONFIG)
    if how == "wrap":
        client = meshlib.wrap(httpx.Client(transport=httpx.MockTransport(_ok)), mesh)
    else:
        client = _sync_client(mesh)
    with client:
        response = client.get(URL)
        assert response.text == "hello"
        assert response.elapsed.total_seconds() >= 0
        gone = weakref.ref(response)
        request = weakref.ref(response.request)
        del response
        assert gone() is None
        assert request() is None


@pytest.mark.usefixtures("collector_off")
async def test_an_async_response_read_or_closed_unread_is_freed_when_dropped(make_mesh: MakeMesh) -> None:
    async with _async_client(make_mesh(CONFIG)) as client:
        response = await client.get(URL)
        assert response.text == "hello"
        gone = weakref.ref(response)
        del response
        assert gone() is None

        async with client.stream("GET", URL) as streamed:
            pass  # closed unread: the connection goes, so does the response
        assert streamed.is_closed
        gone = weakref.ref(streamed)
        del streamed
        assert gone() is None


async def test_a_closed_response_behaves_as_httpx_says(make_mesh: MakeMesh) -> None:
    """What the caller can still do with a closed response is what httpx allows, no more, no less."""
    async with _async_client(make_mesh(CONFIG)) as client:
        response = await client.get(URL)
        assert response.is_closed
        assert response.is_stream_consumed
        await response.aclose()  # closing again is fine
        assert [chunk async for chunk in response.aiter_bytes()] == [b"hello"]  # from the content read
        assert response.elapsed.total_seconds() >= 0
        with pytest.raises(httpx.StreamConsumed):
            async for _ in response.aiter_raw():
                pass
        with pytest.raises(RuntimeError, match="sync"):
            response.close()  # an async response stays one

        async with client.stream("GET", URL) as streamed:
            pass
        with pytest.raises(httpx.StreamClosed):
            async for _ in streamed.aiter_raw():
                pass


def test_sync_closed_response_stays_sync(make_mesh: MakeMesh) -> None:
    with _sync_client(make_mesh(CONFIG)) as client:
        with client.stream("GET", URL) as response:
            assert response.read() == b"hello"
        response.close()
        assert response.elapsed.total_seconds() >= 0
        with pytest.raises(RuntimeError, match="async"):
            asyncio.run(response.aclose())


async def test_a_body_that_fails_keeps_elapsed_for_the_close_that_follows(make_mesh: MakeMesh) -> None:
    """A body that breaks mid-read closes its stream before the response knows: httpx's wrapper must stay until the
    caller closes the response, which is when ``elapsed`` is set."""

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_Chunks([b"he"], fail=httpx.ReadError("reset mid-body")))

    async with make_mesh(CONFIG).async_client(transport=httpx.MockTransport(broken)) as client:
        async with client.stream("GET", URL) as response:
            with pytest.raises(meshlib.MeshError) as raised:
                await response.aread()
            assert raised.value.code == "upstream_reset"
            assert not response.is_closed
        assert response.is_closed
        assert response.elapsed.total_seconds() >= 0
