"""Through the mesh to real uvicorn servers on 127.0.0.1: balancing, splits, header routes, rewrites, errors."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx
import pytest

import meshlib
from tests.conftest import Caller, MakeMesh

pytestmark = pytest.mark.anyio


@pytest.fixture
def mesh(make_mesh: MakeMesh, upstreams: dict[str, str]) -> meshlib.Mesh:
    return make_mesh(
        {
            "service": "frontend",
            "clusters": {
                "reviews-v1": {"endpoints": [upstreams["reviews-v1-a"], upstreams["reviews-v1-b"]]},
                "reviews-v2": {"endpoints": [upstreams["reviews-v2"]]},
                "ratings": {"endpoints": [upstreams["ratings"]]},
            },
            "routes": [
                {
                    "name": "testers",
                    "match": {"host": "reviews", "headers": {"x-user": {"exact": "tester"}}},
                    "cluster": "reviews-v2",
                },
                {
                    "name": "api",
                    "match": {"host": "reviews", "path_prefix": "/api/"},
                    "cluster": "reviews-v1",
                    "rewrite": {"path_prefix": "/", "host": "reviews.internal"},
                    "headers": {"request": {"set": {"x-canary": "true"}}, "response": {"set": {"x-served-by": "mesh"}}},
                },
                {
                    "name": "canary",
                    "match": {"host": "reviews"},
                    "split": [{"cluster": "reviews-v1", "weight": 80}, {"cluster": "reviews-v2", "weight": 20}],
                },
            ],
        },
        seed=42,
    )


def _header(echo: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k == name]


async def test_round_robin_alternates_between_the_two_v1_servers(mesh: meshlib.Mesh, caller: Caller) -> None:
    async with caller(mesh, timeout=5) as client:
        names = [(await client.get("http://reviews-v1/")).json()["name"] for _ in range(6)]
    assert names in (["reviews-v1-a", "reviews-v1-b"] * 3, ["reviews-v1-b", "reviews-v1-a"] * 3)


async def test_split_sends_roughly_its_share_to_each_version(mesh: meshlib.Mesh, caller: Caller) -> None:
    async with caller(mesh, timeout=5) as client:
        names = Counter([(await client.get("http://reviews/r")).json()["name"] for _ in range(200)])
    v2_share = names["reviews-v2"] / 200
    assert 0.10 <= v2_share <= 0.30, names
    assert names["reviews-v1-a"] > 0
    assert names["reviews-v1-b"] > 0


async def test_header_route_lands_on_v2(mesh: meshlib.Mesh, caller: Caller) -> None:
    async with caller(mesh, timeout=5) as client:
        names = {(await client.get("http://reviews/r", headers={"x-user": "tester"})).json()["name"] for _ in range(20)}
    assert names == {"reviews-v2"}


async def test_real_server_sees_the_rewritten_path_and_host(mesh: meshlib.Mesh, caller: Caller) -> None:
    async with caller(mesh, timeout=5) as client:
        response = await client.get("http://reviews/api/reviews/1?page=2&q=a%20b")
    echo = response.json()
    assert echo["name"].startswith("reviews-v1-")
    assert echo["path"] == "/reviews/1"
    assert echo["query"] == "page=2&q=a%20b"
    assert _header(echo, "host") == ["reviews.internal"]
    assert _header(echo, "x-canary") == ["true"]
    assert response.headers["x-served-by"] == "mesh"
    assert response.request.url == "http://reviews/api/reviews/1?page=2&q=a%20b"


async def test_real_server_sees_the_original_host_without_a_rewrite(mesh: meshlib.Mesh, caller: Caller) -> None:
    async with caller(mesh, timeout=5) as client:
        echo = (await client.get("http://ratings:8080/api/ratings/1")).json()
    assert echo["name"] == "ratings"
    assert echo["path"] == "/api/ratings/1"
    assert _header(echo, "host") == ["ratings:8080"]


async def test_post_body_reaches_the_real_server(mesh: meshlib.Mesh, caller: Caller) -> None:
    body = "x" * 100_000
    async with caller(mesh, timeout=5) as client:
        echo = (await client.request("POST", "http://ratings/submit", content=body.encode())).json()
    assert (echo["method"], echo["body"]) == ("POST", body)


async def test_unclaimed_host_passes_through_to_the_real_server(
    mesh: meshlib.Mesh, caller: Caller, upstreams: dict[str, str]
) -> None:
    async with caller(mesh, timeout=5) as client:
        echo = (await client.get(f"{upstreams['ratings']}/direct")).json()
    assert echo["name"] == "ratings"
    assert _header(echo, "host") == [upstreams["ratings"].removeprefix("http://")]
    assert all(e["requests"] == 0 for e in mesh.stats()["clusters"]["ratings"]["endpoints"].values())


async def test_a_streamed_response_is_in_flight_until_closed(
    mesh: meshlib.Mesh, caller: Caller, upstreams: dict[str, str]
) -> None:
    async with caller(mesh, timeout=5) as client:
        response = await client.open_stream("GET", "http://ratings/")
        endpoint = mesh.stats()["clusters"]["ratings"]["endpoints"][upstreams["ratings"]]
        assert endpoint["in_flight"] == 1
        await client.close_response(response)
    assert mesh.stats()["clusters"]["ratings"]["endpoints"][upstreams["ratings"]]["in_flight"] == 0


async def test_closed_port_gives_a_connect_error_through_the_mesh(
    make_mesh: MakeMesh, caller: Caller, free_port: int
) -> None:
    url = f"http://127.0.0.1:{free_port}"
    mesh = make_mesh({"clusters": {"gone": {"endpoints": [url]}}})
    async with caller(mesh, timeout=5) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://gone/")
    assert {"in_flight": 0, "requests": 1}.items() <= mesh.stats()["clusters"]["gone"]["endpoints"][url].items()


async def test_concurrent_async_requests_share_round_robin_exactly(mesh: meshlib.Mesh) -> None:
    names: list[str] = []

    async def one(client: httpx.AsyncClient) -> None:
        names.append((await client.get("http://reviews-v1/")).json()["name"])

    async with mesh.async_client(timeout=5) as client, anyio.create_task_group() as tasks:
        for _ in range(40):
            tasks.start_soon(one, client)
    assert Counter(names) == {"reviews-v1-a": 20, "reviews-v1-b": 20}
    assert all(e["in_flight"] == 0 for e in mesh.stats()["clusters"]["reviews-v1"]["endpoints"].values())


def test_threads_sharing_one_sync_client_share_round_robin_exactly(mesh: meshlib.Mesh) -> None:
    with mesh.client(timeout=5) as client, ThreadPoolExecutor(max_workers=4) as pool:
        names = list(pool.map(lambda _: client.get("http://reviews-v1/").json()["name"], range(40)))
    assert Counter(names) == {"reviews-v1-a": 20, "reviews-v1-b": 20}
    assert all(e["in_flight"] == 0 for e in mesh.stats()["clusters"]["reviews-v1"]["endpoints"].values())


async def test_a_streamed_response_from_a_real_server_reads_through_the_mesh(
    mesh: meshlib.Mesh, caller: Caller
) -> None:
    async with caller(mesh, timeout=5) as client:
        response = await client.open_stream("GET", "http://ratings/s")
        body = await client.read_response(response)
    assert b'"name": "ratings"' in body
    assert mesh.stats()["clusters"]["ratings"]["endpoints"]
    assert all(e["in_flight"] == 0 for e in mesh.stats()["clusters"]["ratings"]["endpoints"].values())
