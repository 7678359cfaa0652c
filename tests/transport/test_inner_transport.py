"""``meshlib.AsyncHTTP1Transport`` as a mesh client's inner transport: real sockets by default, respx when it mocks.

respx patches httpx's transports, which this one does not use: while a respx
router is active the transport hands requests to an ``httpx.AsyncHTTPTransport``
so the mocks (and the mesh's retries over them) behave as with the default
client, and it goes back to its own pool once respx stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from unittest import mock

import httpx
import pytest
import respx

import meshlib
from tests.conftest import MakeMesh, RunningServer, echo_app, start_server

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningServer]:
    server = start_server(echo_app("reviews"), "reviews")
    yield server
    server.stop()


def _config(url: str, **cluster: Any) -> dict[str, Any]:
    return {"clusters": {"reviews": {"endpoints": [url], **cluster}}}


async def test_a_mesh_client_sends_through_it_over_real_sockets(make_mesh: MakeMesh, upstream: RunningServer) -> None:
    transport = meshlib.AsyncHTTP1Transport()
    mesh = make_mesh(_config(upstream.url, timeout="2s"))
    async with mesh.async_client(transport=transport) as client:
        for _ in range(3):
            response = await client.get("http://reviews/api/reviews/1", headers={"x-test": "yes"})
            assert response.status_code == 200
            body = response.json()
            assert body["name"] == "reviews"
            assert body["path"] == "/api/reviews/1"
            assert ["x-test", "yes"] in body["headers"]
        # Its own pool carried them: one kept-alive connection, waiting for the next request.
        assert transport.idle_connections == 1


async def test_respx_mocks_intercept_it_and_the_mesh_retries_over_them(make_mesh: MakeMesh) -> None:
    transport = meshlib.AsyncHTTP1Transport()
    retry = {"attempts": 3, "retry_on": ["5xx"], "backoff": {"base": "1ms", "max": "1ms"}}
    mesh = make_mesh(_config("http://127.0.0.1:9081", retry=retry))
    async with mesh.async_client(transport=transport) as client, respx.mock(assert_all_called=True) as router:
        route = router.get("http://127.0.0.1:9081/x").mock(
            side_effect=[httpx.Response(503), httpx.Response(503), httpx.Response(200, text="third")]
        )
        response = await client.get("http://reviews/x")
        assert (response.status_code, response.text) == (200, "third")
        assert route.call_count == 3
        assert transport.idle_connections == 0  # nothing went out through its own pool


async def test_the_respx_mock_fixture_intercepts_it(make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    route = respx_mock.get("http://127.0.0.1:9081/x").mock(side_effect=httpx.ConnectError("refused"))
    mesh = make_mesh(_config("http://127.0.0.1:9081"))
    async with mesh.async_client(transport=meshlib.AsyncHTTP1Transport()) as client:
        with pytest.raises(meshlib.UpstreamConnectError):
            await client.get("http://reviews/x")
    assert route.called


async def test_it_uses_its_own_pool_again_once_respx_stops(make_mesh: MakeMesh, upstream: RunningServer) -> None:
    transport = meshlib.AsyncHTTP1Transport()
    mesh = make_mesh(_config(upstream.url))
    async with mesh.async_client(transport=transport) as client:
        with respx.mock() as router:
            router.route(url__startswith=upstream.url).mock(return_value=httpx.Response(418))
            assert (await client.get("http://reviews/")).status_code == 418
        response = await client.get("http://reviews/")
        assert response.status_code == 200
        assert response.json()["name"] == "reviews"
        assert transport.idle_connections == 1


async def test_respx_pass_through_routes_reach_the_network(make_mesh: MakeMesh, upstream: RunningServer) -> None:
    mesh = make_mesh(_config(upstream.url))
    async with mesh.async_client(transport=meshlib.AsyncHTTP1Transport()) as client, respx.mock() as router:
        route = router.route(url__startswith=upstream.url).pass_through()
        response = await client.get("http://reviews/real")
        assert response.json()["path"] == "/real"
        assert route.called


async def test_closing_the_client_closes_the_transport(make_mesh: MakeMesh, upstream: RunningServer) -> None:
    transport = meshlib.AsyncHTTP1Transport()
    mesh = make_mesh(_config(upstream.url))
    async with mesh.async_client(transport=transport) as client:
        await client.get("http://reviews/")
    assert transport.idle_connections == 0
    with pytest.raises(RuntimeError, match="closed"):
        await transport.handle_async_request(httpx.Request("GET", upstream.url))


async def test_a_read_timeout_that_repeats_costs_no_loop_timer_per_request(upstream: RunningServer) -> None:
    """A client's fixed read timeout shares its delay's alarm queue: one loop timer for many requests."""
    loop = asyncio.get_running_loop()
    calls = 0
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        nonlocal calls
        calls += 1
        return call_at(when, callback, *args, **kwargs)

    async with httpx.AsyncClient(transport=meshlib.AsyncHTTP1Transport(), timeout=5.0) as client:
        assert (await client.get(upstream.url)).status_code == 200  # the connection is open: no connect timer below
        with mock.patch.object(loop, "call_at", counting):
            for _ in range(40):
                assert (await client.get(upstream.url)).status_code == 200
    assert calls <= 2, calls
