"""Active health checks against real uvicorn servers: a health endpoint that flips, and one that stalls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

import meshlib
from tests.conftest import ASGIApp, Caller, MakeMesh, MeshCaller, Receive, Scope, Send, start_server, wait_for

pytestmark = pytest.mark.anyio


class Upstream:
    """A server whose ``/healthz`` answers ``health_status``, whose ``/slow-healthz`` stalls, and whose other paths
    answer its name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health_status = 200
        self.url = ""

    @property
    def app(self) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            assert scope["type"] == "http"
            if scope["path"] == "/slow-healthz":
                await asyncio.sleep(0.15)
            status = self.health_status if scope["path"] == "/healthz" else 200
            body = json.dumps({"name": self.name}).encode()
            await send(
                {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})

        return app


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Upstream]]:
    upstreams = {name: Upstream(name) for name in ("a", "b")}
    running = []
    try:
        for upstream in upstreams.values():
            server = start_server(upstream.app, f"health-{upstream.name}")
            upstream.url = server.url
            running.append(server)
        yield upstreams
    finally:
        for server in running:
            server.server.should_exit = True
        for server in running:
            server.stop()


@pytest.fixture
def upstream(servers: dict[str, Upstream]) -> dict[str, Upstream]:
    for server in servers.values():
        server.health_status = 200
    return servers


def _config(servers: dict[str, Upstream], **health: Any) -> dict[str, Any]:
    check = {"interval": "1h", "timeout": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1, **health}
    return {"clusters": {"reviews": {"endpoints": [s.url for s in servers.values()], "health_check": check}}}


def _healthy(mesh: meshlib.Mesh, url: str) -> bool:
    (state,) = (e.state for e in mesh.snapshot.clusters["reviews"].endpoints if e.url == url)
    return state.healthy


async def _names(client: MeshCaller, n: int) -> list[str]:
    return [(await client.get("http://reviews/")).json()["name"] for _ in range(n)]


async def test_a_flipping_health_endpoint_takes_its_server_out_and_back(
    make_mesh: MakeMesh, caller: Caller, upstream: dict[str, Upstream]
) -> None:
    a = upstream["a"]
    mesh = make_mesh(_config(upstream, interval="20ms"))
    async with caller(mesh) as client:
        assert sorted(await _names(client, 2)) == ["a", "b"]
        a.health_status = 503
        wait_for(lambda: not _healthy(mesh, a.url))
        assert await _names(client, 4) == ["b"] * 4
        a.health_status = 200
        wait_for(lambda: _healthy(mesh, a.url))
        assert sorted(await _names(client, 2)) == ["a", "b"]
    counters = mesh.stats()["clusters"]["reviews"]["counters"]
    assert counters["endpoints_marked_unhealthy"] == counters["endpoints_marked_healthy"] == 1


async def test_a_probe_that_outlasts_the_timeout_fails(make_mesh: MakeMesh, upstream: dict[str, Upstream]) -> None:
    mesh = make_mesh(_config(upstream, path="/slow-healthz", timeout="50ms"))
    checker = mesh._runtime.registry.get("health_check", "reviews")
    checker.check_once()
    assert not any(_healthy(mesh, s.url) for s in upstream.values())
    assert mesh.stats()["clusters"]["reviews"]["counters"]["health_check_failures"] == 2


async def test_a_probe_within_the_timeout_passes(make_mesh: MakeMesh, upstream: dict[str, Upstream]) -> None:
    mesh = make_mesh(_config(upstream, path="/slow-healthz", timeout="1s"))
    mesh._runtime.registry.get("health_check", "reviews").check_once()
    assert all(_healthy(mesh, s.url) for s in upstream.values())
    assert "health_check_failures" not in mesh.stats()["clusters"]["reviews"]["counters"]
