"""``direct_response``: the mesh answers itself, with no upstream, and the answer is a normal response."""

from __future__ import annotations

from typing import Any

import pytest
import respx

from tests.conftest import Caller, MakeMesh

pytestmark = pytest.mark.anyio


def _config(direct: dict[str, Any], **route: Any) -> dict[str, Any]:
    return {
        "clusters": {"reviews": {"endpoints": ["http://127.0.0.1:9081"]}},
        "routes": [
            {
                "name": "maintenance",
                "match": {"host": "reviews", "path_prefix": "/admin"},
                "direct_response": direct,
                **route,
            },
            {"name": "reviews", "match": {"host": "reviews"}, "cluster": "reviews"},
        ],
    }


async def test_direct_response_status_body_and_headers(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    """respx_mock refuses any request it has no route for, so reaching an upstream would fail the test."""
    mesh = make_mesh(_config({"status": 503, "body": "down for maintenance", "headers": {"retry-after": "120"}}))
    async with caller(mesh) as client:
        response = await client.get("http://reviews/admin/users")
    assert response.status_code == 503
    assert response.text == "down for maintenance"
    assert response.headers["retry-after"] == "120"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["content-length"] == str(len("down for maintenance"))
    assert response.request.url == "http://reviews/admin/users"
    assert not respx_mock.calls


async def test_direct_response_keeps_a_configured_content_type(make_mesh: MakeMesh, caller: Caller) -> None:
    mesh = make_mesh(_config({"status": 200, "body": '{"ok": true}', "headers": {"content-type": "application/json"}}))
    async with caller(mesh) as client:
        response = await client.get("http://reviews/admin")
    assert response.headers.get_list("content-type") == ["application/json"]
    assert response.json() == {"ok": True}


async def test_empty_direct_response_has_no_body_or_content_type(make_mesh: MakeMesh, caller: Caller) -> None:
    mesh = make_mesh(_config({"status": 204}))
    async with caller(mesh) as client:
        response = await client.request("DELETE", "http://reviews/admin")
    assert response.status_code == 204
    assert response.content == b""
    assert "content-type" not in response.headers


async def test_response_header_edits_apply_to_a_direct_response(make_mesh: MakeMesh, caller: Caller) -> None:
    mesh = make_mesh(
        _config(
            {"status": 503, "body": "down", "headers": {"x-drop": "1"}},
            headers={"response": {"set": {"x-served-by": "mesh"}, "add": {"x-tag": "a"}, "remove": ["x-drop"]}},
        )
    )
    async with caller(mesh) as client:
        response = await client.get("http://reviews/admin")
    assert response.headers["x-served-by"] == "mesh"
    assert response.headers["x-tag"] == "a"
    assert "x-drop" not in response.headers


async def test_requests_the_direct_response_route_does_not_match_still_go_upstream(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    upstream = respx_mock.get("http://127.0.0.1:9081/api").respond(200)
    mesh = make_mesh(_config({"status": 503}))
    async with caller(mesh) as client:
        assert (await client.get("http://reviews/api")).status_code == 200
        assert (await client.get("http://reviews/admin")).status_code == 503
    assert upstream.call_count == 1


async def test_direct_response_is_not_an_error_and_not_in_flight(make_mesh: MakeMesh, caller: Caller) -> None:
    mesh = make_mesh(_config({"status": 500, "body": "boom"}))
    async with caller(mesh) as client:
        response = await client.get("http://reviews/admin")
    assert response.is_server_error
    assert {"in_flight": 0, "requests": 0}.items() <= mesh.stats()["clusters"]["reviews"]["endpoints"][
        "http://127.0.0.1:9081"
    ].items()


async def test_head_to_a_direct_response_has_its_headers_but_no_body(make_mesh: MakeMesh, caller: Caller) -> None:
    mesh = make_mesh(_config({"status": 503, "body": "down for maintenance"}))
    async with caller(mesh) as client:
        response = await client.request("HEAD", "http://reviews/admin/users")
    assert response.status_code == 503
    assert response.content == b""
    assert response.headers["content-length"] == str(len("down for maintenance"))
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
