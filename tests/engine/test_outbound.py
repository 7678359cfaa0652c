"""Outbound entry: passthrough and registry_only, the engine's own copy of the request, bodies, sync/async parity."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx

import meshlib
from tests.conftest import Caller, MakeMesh

pytestmark = pytest.mark.anyio

REVIEWS = {"reviews": {"endpoints": ["http://127.0.0.1:9081"]}}


async def test_unclaimed_host_passes_through_untouched_under_allow_any(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    outside = respx_mock.post("http://example.com/submit", params={"q": "1"}).respond(201, text="created")
    mesh = make_mesh({"outbound_policy": "allow_any", "clusters": REVIEWS})
    async with caller(mesh) as client:
        response = await client.request(
            "POST", "http://example.com/submit?q=1", content=b"payload", headers={"x-trace": "t1"}
        )
    assert (response.status_code, response.text) == (201, "created")
    sent = outside.calls.last.request
    assert sent.method == "POST"
    assert sent.headers["host"] == "example.com"
    assert sent.headers["x-trace"] == "t1"
    assert sent.content == b"payload"
    assert mesh.stats()["clusters"]["reviews"]["endpoints"]["http://127.0.0.1:9081"]["requests"] == 0


async def test_passthrough_hands_the_callers_own_request_object_to_the_inner_transport(make_mesh: MakeMesh) -> None:
    seen: list[httpx.Request] = []

    def inner(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    mesh = make_mesh({"allow_empty": True})
    with mesh.client(transport=httpx.MockTransport(inner)) as client:
        request = client.build_request("GET", "http://example.com/")
        client.send(request)
    assert seen == [request]


async def test_unclaimed_host_fails_with_route_not_found_under_registry_only(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    outside = respx_mock.get("http://example.com/")
    mesh = make_mesh({"outbound_policy": "registry_only", "clusters": REVIEWS})
    async with caller(mesh) as client:
        with pytest.raises(meshlib.RouteNotFoundError) as raised:
            await client.get("http://example.com/")
    error = raised.value
    assert isinstance(error, httpx.TransportError)
    assert isinstance(error, meshlib.MeshError)
    assert error.code == "route_not_found"
    assert "example.com" in str(error)
    assert error.request.url == "http://example.com/"
    assert not outside.called


async def test_registry_only_still_routes_claimed_hosts(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    upstream = respx_mock.get("http://127.0.0.1:9081/x").respond(200)
    mesh = make_mesh({"outbound_policy": "registry_only", "clusters": REVIEWS})
    async with caller(mesh) as client:
        assert (await client.get("http://reviews/x")).status_code == 200
    assert upstream.call_count == 1


async def test_route_not_found_is_caught_by_existing_httpx_error_handlers(make_mesh: MakeMesh) -> None:
    mesh = make_mesh({"outbound_policy": "registry_only", "allow_empty": True})
    with mesh.client() as client, pytest.raises(httpx.HTTPError):
        client.get("http://example.com/")


async def test_upstream_sees_the_original_host_header_and_the_endpoint_url(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh({"clusters": REVIEWS})
    async with caller(mesh) as client:
        echo = (await client.get("http://reviews/api/reviews/1?x=1&y=2")).json()
    assert echo["url"] == "http://127.0.0.1:9081/api/reviews/1?x=1&y=2"
    assert dict(echo["headers"])["host"] == "reviews"


async def test_callers_request_is_not_mutated_by_the_engine(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(
        {
            "clusters": REVIEWS,
            "routes": [
                {
                    "match": {"host": "reviews", "path_prefix": "/api/"},
                    "cluster": "reviews",
                    "rewrite": {"path_prefix": "/", "host": "reviews.internal"},
                    "headers": {"request": {"set": {"x-canary": "true"}, "remove": ["x-debug"]}},
                }
            ],
        }
    )
    async with caller(mesh) as client:
        if client.sync_client is not None:
            request = client.sync_client.build_request("GET", "http://reviews/api/r/1?q=1", headers={"x-debug": "1"})
            before = (request.url, request.headers.multi_items(), dict(request.extensions))
            response = client.sync_client.send(request)
        else:
            assert client.async_client is not None
            request = client.async_client.build_request("GET", "http://reviews/api/r/1?q=1", headers={"x-debug": "1"})
            before = (request.url, request.headers.multi_items(), dict(request.extensions))
            response = await client.async_client.send(request)
    assert response.json()["url"] == "http://127.0.0.1:9081/r/1?q=1"
    assert (request.url, request.headers.multi_items(), dict(request.extensions)) == before
    assert response.request is request


async def test_post_body_reaches_the_upstream_intact(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    body = bytes(range(256)) * 64
    mesh = make_mesh({"clusters": REVIEWS})
    async with caller(mesh) as client:
        await client.request("POST", "http://reviews/upload", content=body, headers={"content-type": "x/y"})
    sent = loopback.calls.last.request
    assert sent.method == "POST"
    assert sent.content == body
    assert sent.headers["content-length"] == str(len(body))
    assert sent.headers["content-type"] == "x/y"


async def test_streaming_request_body_reaches_the_upstream_intact(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    chunks = [b"first,", b"second,", b"third"]

    def sync_body() -> Iterator[bytes]:
        yield from chunks

    async def async_body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    mesh = make_mesh({"clusters": REVIEWS})
    async with caller(mesh) as client:
        content: Any = sync_body() if client.mode == "sync" else async_body()
        response = await client.request("PUT", "http://reviews/stream", content=content)
    assert response.json()["body"] == "first,second,third"
    assert loopback.calls.last.request.headers["transfer-encoding"] == "chunked"


async def test_upstream_errors_propagate_as_httpx_errors(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get("http://127.0.0.1:9081/").mock(side_effect=httpx.ConnectError("refused"))
    mesh = make_mesh({"clusters": REVIEWS})
    async with caller(mesh) as client:
        with pytest.raises(httpx.ConnectError, match="refused"):
            await client.get("http://reviews/")


async def test_sync_and_async_clients_make_the_same_choices(make_mesh: MakeMesh, loopback: respx.Route) -> None:
    """Same config, same seed: both modes reach the same endpoints in the same order."""
    config = {
        "clusters": {
            "v1": {"endpoints": ["http://127.0.0.1:9081", "http://127.0.0.1:9082"]},
            "v2": {
                "endpoints": [{"url": "http://127.0.0.1:9083", "weight": 2}, "http://127.0.0.1:9084"],
                "lb": "random",
            },
        },
        "routes": [
            {"match": {"host": "reviews", "headers": {"x-user": "tester"}}, "cluster": "v2"},
            {"match": {"host": "reviews"}, "split": [{"cluster": "v1", "weight": 70}, {"cluster": "v2", "weight": 30}]},
        ],
    }
    requests = [("http://reviews/", {"x-user": "tester"} if i % 5 == 0 else {}) for i in range(200)]

    sync_mesh = make_mesh(config, seed=7)
    with sync_mesh.client() as client:
        sync_ports = [client.get(url, headers=h).json()["port"] for url, h in requests]
    async_mesh = make_mesh(config, seed=7)
    async with async_mesh.async_client() as aclient:
        async_ports = [(await aclient.get(url, headers=h)).json()["port"] for url, h in requests]
    assert sync_ports == async_ports
    assert set(sync_ports) == {9081, 9082, 9083, 9084}
