"""wrap(): an existing client's traffic goes through the mesh and every setting of its own is kept."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
import respx

import meshlib
from tests.conftest import MakeMesh

CONFIG = {"clusters": {"reviews": {"endpoints": ["http://127.0.0.1:9081"]}}}


def _headers(route: respx.Route) -> httpx.Headers:
    return route.calls.last.request.headers


def test_wrap_keeps_a_sync_clients_settings(make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    upstream = respx_mock.get("http://127.0.0.1:9081/api/x").respond(200)
    events: list[str] = []
    client = httpx.Client(
        base_url="http://reviews/api",
        headers={"x-app": "1"},
        timeout=3.5,
        auth=("user", "secret"),
        event_hooks={
            "request": [lambda request: events.append(f"request {request.url}")],
            "response": [lambda response: events.append(f"response {response.status_code}")],
        },
    )
    with meshlib.wrap(client, make_mesh(CONFIG)) as wrapped:
        assert wrapped is client
        response = wrapped.get("/x")
    assert response.status_code == 200
    headers = _headers(upstream)
    assert headers["x-app"] == "1"
    assert headers["authorization"] == "Basic " + base64.b64encode(b"user:secret").decode()
    assert headers["host"] == "reviews"
    assert upstream.calls.last.request.extensions["timeout"] == {"connect": 3.5, "read": 3.5, "write": 3.5, "pool": 3.5}
    assert events == ["request http://reviews/api/x", "response 200"]
    assert response.request.url == "http://reviews/api/x"


@pytest.mark.anyio
async def test_wrap_keeps_an_async_clients_settings(make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    upstream = respx_mock.get("http://127.0.0.1:9081/api/x").respond(200)
    events: list[str] = []

    async def on_request(request: httpx.Request) -> None:
        events.append(f"request {request.url}")

    async def on_response(response: httpx.Response) -> None:
        events.append(f"response {response.status_code}")

    client = httpx.AsyncClient(
        base_url="http://reviews/api",
        headers={"x-app": "1"},
        timeout=3.5,
        auth=("user", "secret"),
        event_hooks={"request": [on_request], "response": [on_response]},
    )
    async with meshlib.wrap(client, make_mesh(CONFIG)) as wrapped:
        assert wrapped is client
        response = await wrapped.get("/x")
    assert response.status_code == 200
    headers = _headers(upstream)
    assert headers["x-app"] == "1"
    assert headers["authorization"].startswith("Basic ")
    assert upstream.calls.last.request.extensions["timeout"]["read"] == 3.5
    assert events == ["request http://reviews/api/x", "response 200"]


@pytest.mark.parametrize("client_class", [httpx.Client, httpx.AsyncClient])
def test_wrapping_twice_does_not_wrap_twice(make_mesh: MakeMesh, client_class: Any) -> None:
    mesh = make_mesh(CONFIG)
    client = client_class()
    meshlib.wrap(client, mesh)
    transport = client._transport
    assert isinstance(transport, meshlib.MeshTransport | meshlib.AsyncMeshTransport)
    assert meshlib.wrap(client, mesh) is client
    assert client._transport is transport
    assert not isinstance(transport.inner, meshlib.MeshTransport | meshlib.AsyncMeshTransport)


@pytest.mark.parametrize("other", [object(), "http://reviews", None, httpx.HTTPTransport()])
def test_wrap_refuses_anything_but_an_httpx_client(make_mesh: MakeMesh, other: Any) -> None:
    with pytest.raises(TypeError, match=r"httpx\.Client or httpx\.AsyncClient"):
        meshlib.wrap(other, make_mesh(CONFIG))


def test_the_clients_own_transport_becomes_the_meshs_inner_sender(make_mesh: MakeMesh) -> None:
    seen: list[str] = []

    def inner(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200)

    client = meshlib.wrap(httpx.Client(transport=httpx.MockTransport(inner)), make_mesh(CONFIG))
    with client:
        client.get("http://reviews/a")
        client.get("http://example.com/b")
    assert seen == ["http://127.0.0.1:9081/a", "http://example.com/b"]


@pytest.mark.anyio
async def test_mounted_transports_also_go_through_the_mesh(make_mesh: MakeMesh) -> None:
    seen: list[str] = []

    def mounted(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200)

    client = httpx.AsyncClient(mounts={"all://": httpx.MockTransport(mounted)})
    async with meshlib.wrap(client, make_mesh(CONFIG)):
        await client.get("http://reviews/a")
    assert seen == ["http://127.0.0.1:9081/a"]
