"""Mesh.client(), async_client(), transport(): keyword arguments, the inner sender, and the mesh's lifecycle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

import meshlib
from tests.conftest import MakeMesh

CONFIG = {"clusters": {"reviews": {"endpoints": ["http://127.0.0.1:9081"]}}}


def test_client_keyword_arguments_pass_through_to_httpx(make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    upstream = respx_mock.get("http://127.0.0.1:9081/api/x", params={"v": "1"}).respond(200)
    mesh = make_mesh(CONFIG)
    with mesh.client(headers={"x-app": "1"}, base_url="http://reviews/api", params={"v": "1"}, timeout=2) as client:
        assert isinstance(client, httpx.Client)
        assert client.get("/x").status_code == 200
        assert client.timeout == httpx.Timeout(2)
    assert upstream.calls.last.request.headers["x-app"] == "1"


@pytest.mark.anyio
async def test_async_client_keyword_arguments_pass_through_to_httpx(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter
) -> None:
    upstream = respx_mock.get("http://127.0.0.1:9081/api/x").respond(200)
    async with make_mesh(CONFIG).async_client(headers={"x-app": "1"}, base_url="http://reviews/api") as client:
        assert isinstance(client, httpx.AsyncClient)
        assert (await client.get("/x")).status_code == 200
    assert upstream.calls.last.request.headers["x-app"] == "1"


@pytest.mark.anyio
async def test_custom_transport_is_the_meshs_inner_sender(make_mesh: MakeMesh) -> None:
    seen: list[str] = []

    def inner(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200)

    mesh = make_mesh(CONFIG)
    with mesh.client(transport=httpx.MockTransport(inner)) as client:
        client.get("http://reviews/sync")
        assert isinstance(client._transport, meshlib.MeshTransport)
    async with mesh.async_client(transport=httpx.MockTransport(inner)) as aclient:
        await aclient.get("http://reviews/async")
        assert isinstance(aclient._transport, meshlib.AsyncMeshTransport)
    assert seen == ["http://127.0.0.1:9081/sync", "http://127.0.0.1:9081/async"]


@pytest.mark.anyio
async def test_mounted_transports_of_a_mesh_client_also_go_through_the_mesh(make_mesh: MakeMesh) -> None:
    seen: list[str] = []

    def mounted(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200)

    mesh = make_mesh(CONFIG)
    with mesh.client(mounts={"all://": httpx.MockTransport(mounted)}) as client:
        client.get("http://reviews/sync")
    async with mesh.async_client(mounts={"all://": httpx.MockTransport(mounted)}) as aclient:
        await aclient.get("http://reviews/async")
    assert seen == ["http://127.0.0.1:9081/sync", "http://127.0.0.1:9081/async"]


def test_transport_options_configure_the_default_inner_transport(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(CONFIG)
    with mesh.client(verify=False, trust_env=False, limits=httpx.Limits(max_connections=1)) as client:
        assert client.trust_env is False
        transport = client._transport
        assert isinstance(transport, meshlib.MeshTransport)
        assert isinstance(transport.inner, httpx.HTTPTransport)
        assert transport.inner._pool._max_connections == 1


def test_transport_and_async_transport_use_the_given_inner(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(CONFIG)
    inner = httpx.MockTransport(lambda request: httpx.Response(200, text=str(request.url)))
    transport = mesh.transport(inner=inner)
    assert isinstance(transport, httpx.BaseTransport)
    assert transport.inner is inner
    response = transport.handle_request(httpx.Request("GET", "http://reviews/x"))
    response.read()
    assert response.text == "http://127.0.0.1:9081/x"
    async_transport = mesh.async_transport(inner=inner)
    assert isinstance(async_transport, httpx.AsyncBaseTransport)
    assert async_transport.inner is inner
    assert isinstance(mesh.transport().inner, httpx.HTTPTransport)
    assert isinstance(mesh.async_transport().inner, httpx.AsyncHTTPTransport)


def test_closing_a_client_closes_the_inner_transport(make_mesh: MakeMesh) -> None:
    closed: list[str] = []

    class Inner(httpx.MockTransport):
        def close(self) -> None:
            closed.append("sync")

        async def aclose(self) -> None:
            closed.append("async")

    with make_mesh(CONFIG).client(transport=Inner(lambda r: httpx.Response(200))):
        pass
    assert closed == ["sync"]


def test_a_closed_mesh_refuses_new_clients_but_old_ones_keep_working(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get("http://127.0.0.1:9081/").respond(200)
    with make_mesh(CONFIG) as mesh:
        client = mesh.client()
    with pytest.raises(RuntimeError, match="closed"):
        mesh.client()
    with pytest.raises(RuntimeError, match="closed"):
        mesh.async_transport()
    with client:
        assert client.get("http://reviews/").status_code == 200


@pytest.mark.anyio
async def test_mesh_is_an_async_context_manager(make_mesh: MakeMesh) -> None:
    async with make_mesh(CONFIG) as mesh:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        mesh.async_client()


def test_an_empty_mesh_passes_everything_through(respx_mock: respx.MockRouter) -> None:
    outside = respx_mock.get("http://example.com/").respond(200)
    with meshlib.Mesh() as mesh, mesh.client() as client:
        assert client.get("http://example.com/").status_code == 200
    assert outside.call_count == 1
    assert mesh.stats() == {
        "version": 1,
        "clusters": {},
        "reloads": {"accepted": 0, "refused": 0, "last_error": None},
        "certificates": {},
        "observability": {},
    }


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_mesh_from_file_routes_like_from_dict(tmp_path: Path, suffix: str, respx_mock: respx.MockRouter) -> None:
    upstream = respx_mock.get("http://127.0.0.1:9081/").respond(200)
    path = tmp_path / f"mesh{suffix}"
    path.write_text(json.dumps(CONFIG))  # JSON is also YAML
    with meshlib.Mesh.from_file(path) as mesh, mesh.client() as client:
        client.get("http://reviews/")
    assert upstream.call_count == 1
    assert isinstance(mesh.config, meshlib.MeshConfig)


@pytest.mark.parametrize("option", ["verify", "http2", "proxy"])
def test_a_custom_transport_with_transport_options_is_refused(make_mesh: MakeMesh, option: str) -> None:
    """httpx would silently ignore verify= etc. next to transport=; the mesh says so instead."""
    mesh = make_mesh({"allow_empty": True})
    value: Any = "http://127.0.0.1:3128" if option == "proxy" else False
    with pytest.raises(TypeError, match=f"transport= or {option}="):
        mesh.client(transport=httpx.HTTPTransport(), **{option: value})
    with pytest.raises(TypeError, match=f"transport= or {option}="):
        mesh.async_client(transport=httpx.AsyncHTTPTransport(), **{option: value})
