"""``headers``: request edits on the way upstream, response edits on the way back (remove, then set, then add)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx

from tests.conftest import Caller, MakeMesh

pytestmark = pytest.mark.anyio


def _config(headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "clusters": {"reviews": {"endpoints": ["http://127.0.0.1:9081"]}},
        "routes": [{"match": {"host": "reviews"}, "cluster": "reviews", "headers": headers}],
    }


def _values(echo: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k == name]


async def test_request_header_set_add_and_remove(make_mesh: MakeMesh, caller: Caller, loopback: respx.Route) -> None:
    mesh = make_mesh(
        _config({"request": {"set": {"x-canary": "true"}, "add": {"x-tag": "mesh"}, "remove": ["x-debug"]}})
    )
    sent = [("x-canary", "false"), ("x-tag", "app"), ("x-debug", "1"), ("x-debug", "2"), ("x-keep", "k")]
    async with caller(mesh) as client:
        echo = (await client.get("http://reviews/", headers=sent)).json()
    assert _values(echo, "x-canary") == ["true"]
    assert _values(echo, "x-tag") == ["app", "mesh"]
    assert _values(echo, "x-debug") == []
    assert _values(echo, "x-keep") == ["k"]


async def test_request_set_adds_a_header_the_caller_did_not_send(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(_config({"request": {"set": {"x-canary": "true"}}}))
    async with caller(mesh) as client:
        echo = (await client.get("http://reviews/")).json()
    assert _values(echo, "x-canary") == ["true"]


async def test_header_edits_run_remove_then_set_then_add(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(_config({"request": {"remove": ["x-a", "x-b"], "set": {"x-a": "set"}, "add": {"x-b": "added"}}}))
    async with caller(mesh) as client:
        echo = (await client.get("http://reviews/", headers={"x-a": "old", "x-b": "old"})).json()
    assert _values(echo, "x-a") == ["set"]
    assert _values(echo, "x-b") == ["added"]


async def test_response_header_set_add_and_remove(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get("http://127.0.0.1:9081/").respond(
        200, headers=[("server", "upstream"), ("x-internal", "secret"), ("x-tag", "app")], text="body"
    )
    mesh = make_mesh(
        _config(
            {
                "response": {
                    "set": {"server": "mesh", "x-served-by": "mesh"},
                    "add": {"x-tag": "mesh"},
                    "remove": ["x-internal"],
                }
            }
        )
    )
    async with caller(mesh) as client:
        response = await client.get("http://reviews/")
    assert response.headers["server"] == "mesh"
    assert response.headers["x-served-by"] == "mesh"
    assert response.headers.get_list("x-tag") == ["app", "mesh"]
    assert "x-internal" not in response.headers
    assert response.text == "body"


async def test_response_edits_do_not_touch_the_request_headers(
    make_mesh: MakeMesh, caller: Caller, loopback: respx.Route
) -> None:
    mesh = make_mesh(_config({"response": {"set": {"x-served-by": "mesh"}}}))
    async with caller(mesh) as client:
        response = await client.get("http://reviews/")
    assert _values(response.json(), "x-served-by") == []
    assert response.headers["x-served-by"] == "mesh"


async def test_response_edits_apply_to_streamed_responses(make_mesh: MakeMesh, caller: Caller) -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"x-internal": "1"}, stream=httpx.ByteStream(b"streamed"))

    mesh = make_mesh(_config({"response": {"set": {"x-served-by": "mesh"}, "remove": ["x-internal"]}}))
    async with caller(mesh, transport=httpx.MockTransport(upstream)) as client:
        response = await client.open_stream("GET", "http://reviews/")
        assert response.headers["x-served-by"] == "mesh"
        assert "x-internal" not in response.headers
        await client.close_response(response)
