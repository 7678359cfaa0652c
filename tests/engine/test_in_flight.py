"""In-flight accounting: an endpoint is busy from send until its response body closes, in both modes."""

from __future__ import annotations

import httpx
import pytest
import respx

import meshlib
from tests.conftest import Caller, MakeMesh

pytestmark = pytest.mark.anyio

URL = "http://127.0.0.1:9081"
CONFIG = {"clusters": {"reviews": {"endpoints": [URL]}}}


def _endpoint(mesh: meshlib.Mesh) -> dict[str, int]:
    """The endpoint's request counts (stats() also reports its health and ejection)."""
    stats = mesh.stats()["clusters"]["reviews"]["endpoints"][URL]
    return {"in_flight": stats["in_flight"], "requests": stats["requests"]}


async def test_streamed_response_is_in_flight_until_closed(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{URL}/big").respond(200, content=b"x" * 10_000)
    mesh = make_mesh(CONFIG)
    async with caller(mesh) as client:
        response = await client.open_stream("GET", "http://reviews/big")
        assert _endpoint(mesh) == {"in_flight": 1, "requests": 1}
        await client.close_response(response)
        assert _endpoint(mesh) == {"in_flight": 0, "requests": 1}


async def test_reading_a_streamed_response_to_the_end_releases_it(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{URL}/big").respond(200, content=b"x" * 10_000)
    mesh = make_mesh(CONFIG)
    async with caller(mesh) as client:
        response = await client.open_stream("GET", "http://reviews/big")
        assert await client.read_response(response) == b"x" * 10_000
        assert _endpoint(mesh) == {"in_flight": 0, "requests": 1}


async def test_in_flight_is_released_once_even_if_closed_twice(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{URL}/").respond(200, content=b"abc")
    mesh = make_mesh(CONFIG)
    async with caller(mesh) as client:
        response = await client.open_stream("GET", "http://reviews/")
        await client.close_response(response)
        await client.close_response(response)
        await client.get("http://reviews/")
    assert _endpoint(mesh) == {"in_flight": 0, "requests": 2}


async def test_read_response_is_no_longer_in_flight(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{URL}/").respond(200, text="done")
    mesh = make_mesh(CONFIG)
    async with caller(mesh) as client:
        for _ in range(3):
            assert (await client.get("http://reviews/")).text == "done"
    assert _endpoint(mesh) == {"in_flight": 0, "requests": 3}


async def test_upstream_error_releases_the_endpoint(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{URL}/").mock(side_effect=httpx.ConnectError("refused"))
    mesh = make_mesh(CONFIG)
    async with caller(mesh) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://reviews/")
    assert _endpoint(mesh) == {"in_flight": 0, "requests": 1}


async def test_prebuilt_responses_from_a_mock_transport_are_not_left_in_flight(
    make_mesh: MakeMesh, caller: Caller
) -> None:
    """A handler's ``Response(content=...)`` is already read and closed: the engine must release it at once."""
    mesh = make_mesh(CONFIG)
    async with caller(mesh, transport=httpx.MockTransport(lambda request: httpx.Response(200, text="ok"))) as client:
        for _ in range(3):
            await client.get("http://reviews/")
    assert _endpoint(mesh) == {"in_flight": 0, "requests": 3}


async def test_body_read_error_releases_the_endpoint(make_mesh: MakeMesh, caller: Caller) -> None:
    class Broken(httpx.SyncByteStream, httpx.AsyncByteStream):
        def __iter__(self):
            yield b"part"
            raise httpx.ReadError("connection reset")

        async def __aiter__(self):
            yield b"part"
            raise httpx.ReadError("connection reset")

    mesh = make_mesh(CONFIG)
    inner = httpx.MockTransport(lambda request: httpx.Response(200, stream=Broken()))
    async with caller(mesh, transport=inner) as client:
        with pytest.raises(meshlib.UpstreamResetError):
            await client.get("http://reviews/")
    assert _endpoint(mesh) == {"in_flight": 0, "requests": 1}
