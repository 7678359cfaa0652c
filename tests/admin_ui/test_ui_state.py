"""What the admin page is fed: the recent-errors ring (failures only), the ``ui/state`` document, the admin
listener's page and assets, the merge of several workers, and ``Mesh.admin_asgi_app()`` mounted in an app."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.routing import Mount

import meshlib
from meshlib._admin_ui.state import add_error_stats, ui_state
from meshlib._sidecar.admin import ReloadAnswer, admin_handler
from meshlib._upstream.recent_errors import RECENT_ERRORS
from tests.conftest import MakeMesh

pytestmark = pytest.mark.anyio

GOOD, BAD = "http://127.0.0.1:9081", "http://127.0.0.1:9082"
FAST = {"base": "1ms", "max": "2ms"}


def state_of(mesh: meshlib.Mesh) -> dict[str, Any]:
    return ui_state(mesh, add_error_stats(mesh.stats(), mesh))


def test_successes_record_nothing(make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    respx_mock.get(f"{GOOD}/r").respond(200)
    mesh = make_mesh({"clusters": {"reviews": {"endpoints": [GOOD]}}})
    with mesh.client() as client:
        for _ in range(20):
            client.get("http://reviews/r")
    state = state_of(mesh)
    assert state["recent_errors"] == []
    assert {k: state["clusters"]["reviews"][k] for k in ("requests", "errors", "refused")} == {
        "requests": 20,
        "errors": 0,
        "refused": 0,
    }


def test_failed_tries_5xx_and_refusals_are_recorded_once_each(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{BAD}/r").mock(side_effect=httpx.ConnectError("refused"))
    respx_mock.get(f"{GOOD}/r").respond(503)
    respx_mock.get("http://127.0.0.1:9083/r").mock(side_effect=httpx.ConnectError("refused"))
    retry = {"attempts": 2, "retry_on": ["connect-failure"], "backoff": FAST}
    mesh = make_mesh(
        {
            "clusters": {
                "reviews": {"endpoints": [BAD], "retry": retry},
                "details": {"endpoints": [GOOD]},
                "ratings": {
                    "endpoints": ["http://127.0.0.1:9083"],
                    "circuit_breaker": {"failure_threshold": 1, "recovery_timeout": "1m"},
                    "retry": retry,
                },
            }
        }
    )
    with mesh.client() as client:
        # Two refused tries; the retry loop re-raises the second, which is not recorded again.
        with pytest.raises(meshlib.UpstreamConnectError):
            client.get("http://reviews/r")
        assert client.get("http://details/r").status_code == 503
        # One refused try opens the breaker; the retry is refused by it, and so is the next request.
        for _ in range(2):
            with pytest.raises(meshlib.MeshError):
                client.get("http://ratings/r")
    state = state_of(mesh)
    seen = [(e["cluster"], e["endpoint"], e["code"], e["status"]) for e in reversed(state["recent_errors"])]
    assert seen == [
        ("reviews", BAD, "upstream_connect_failure", None),
        ("reviews", BAD, "upstream_connect_failure", None),
        ("details", GOOD, "upstream_5xx", 503),
        ("ratings", "http://127.0.0.1:9083", "upstream_connect_failure", None),
        ("ratings", None, "circuit_open", None),
        ("ratings", None, "circuit_open", None),
    ]
    newest = state["recent_errors"][0]
    assert newest["route"] == "cluster:ratings"
    assert "circuit breaker of cluster 'ratings' is open" in newest["message"]
    assert state["recent_errors"][-1]["message"].startswith("refused during try 1 of route 'cluster:reviews'")
    assert state["recent_errors"][3]["message"] == "upstream answered 503 Service Unavailable"
    counts = {name: (c["requests"], c["errors"], c["refused"]) for name, c in state["clusters"].items()}
    assert counts == {"reviews": (2, 2, 0), "details": (1, 1, 0), "ratings": (1, 3, 2)}
    assert state["clusters"]["ratings"]["breaker"] == "open"


def test_the_ring_keeps_the_newest(make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    respx_mock.get(url__regex=rf"{GOOD}/\d+").respond(500)
    mesh = make_mesh({"clusters": {"reviews": {"endpoints": [GOOD]}}})
    with mesh.client() as client:
        for i in range(RECENT_ERRORS + 7):
            client.get(f"http://reviews/{i}")
    state = state_of(mesh)
    assert len(state["recent_errors"]) == RECENT_ERRORS
    assert state["clusters"]["reviews"]["errors"] == RECENT_ERRORS + 7
    assert all(e["code"] == "upstream_5xx" and e["status"] == 500 for e in state["recent_errors"])
    times = [e["time"] for e in state["recent_errors"]]
    assert times == sorted(times, reverse=True)  # newest first


def test_routes_show_their_split_and_match(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(
        {
            "clusters": {"v1": {"endpoints": [GOOD]}, "v2": {"endpoints": [BAD]}},
            "routes": [
                {
                    "name": "canary",
                    "match": {"host": "reviews", "path_prefix": "/api", "headers": {"x-user": {"exact": "s3cret"}}},
                    "split": [{"cluster": "v1", "weight": 90}, {"cluster": "v2", "weight": 10}],
                },
                {"match": {"host": "teapot"}, "direct_response": {"status": 418}},
            ],
        }
    )
    state = state_of(mesh)
    routes = {r["name"]: r for r in state["routes"]}
    assert routes["canary"]["split"] == [
        {"cluster": "v1", "weight": 90, "percent": 90.0},
        {"cluster": "v2", "weight": 10, "percent": 10.0},
    ]
    assert routes["canary"]["match"] == ["host reviews", "path_prefix /api", "header x-user"]
    assert routes["route-1"]["direct_response"] == 418
    assert routes["route-1"]["split"] == []
    assert routes["cluster:v1"]["implicit"] is True
    assert routes["cluster:v1"]["split"] == [{"cluster": "v1", "weight": 1, "percent": 100.0}]
    assert "s3cret" not in json.dumps(state)


class Target:
    """A stand-in for the running proxy, with other workers' /stats as worker 0 would fetch them."""

    def __init__(self, mesh: meshlib.Mesh, peers: list[tuple[int, dict[str, Any]]]) -> None:
        self.mesh = mesh
        self.ready = True
        self.peers = peers

    def listener_stats(self) -> dict[str, Any]:
        return {}

    async def reload(self) -> ReloadAnswer:
        raise AssertionError("not reloaded here")

    def drain(self) -> str:
        raise AssertionError("not drained here")

    async def peer_stats(self) -> tuple[list[tuple[int, dict[str, Any]]], list[int]]:
        return self.peers, []

    async def peer_metrics(self) -> tuple[list[str], list[int]]:
        return [], []


async def call(target: Target, path: str) -> httpx.Response:
    response = await admin_handler(target)(httpx.Request("GET", f"http://127.0.0.1:15000{path}"))
    response.read()
    return response


async def test_the_admin_listener_serves_the_page_offline(make_mesh: MakeMesh) -> None:
    target = Target(make_mesh({"clusters": {"reviews": {"endpoints": [GOOD]}}}), [])
    page = await call(target, "/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert 'src="ui/app.js"' in page.text
    assert 'href="ui/style.css"' in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing loaded from elsewhere: no CDN
    script = await call(target, "/ui/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert 'fetch("ui/state"' in script.text
    assert (await call(target, "/ui/style.css")).headers["content-type"].startswith("text/css")
    state = (await call(target, "/ui/state")).json()
    assert state["clusters"]["reviews"]["endpoints"][0]["url"] == GOOD
    assert state["workers"] == 1


async def test_with_workers_the_page_shows_the_whole_proxy(make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    respx_mock.get(f"{GOOD}/r").respond(502)
    mesh = make_mesh({"clusters": {"reviews": {"endpoints": [GOOD], "circuit_breaker": {"failure_threshold": 50}}}})
    with mesh.client() as client:
        client.get("http://reviews/r")
    peer_error = {
        "time": 2e9,  # newer than worker 0's
        "cluster": "reviews",
        "route": "cluster:reviews",
        "endpoint": GOOD,
        "code": "upstream_connect_failure",
        "status": None,
        "message": "connection refused during try 1",
    }
    peer = {
        "version": 1,
        "clusters": {
            "reviews": {
                "endpoints": {
                    GOOD: {"in_flight": 0, "requests": 4, "healthy": True, "ejected": True, "times_ejected": 1}
                },
                "counters": {},
                "circuit_breaker": {"state": "open", "in_flight": 0},
                "errors": 3,
                "refused": 1,
            }
        },
        "recent_errors": [peer_error],
    }
    target = Target(mesh, [(1, peer)])
    state = (await call(target, "/ui/state")).json()
    reviews = state["clusters"]["reviews"]
    assert state["workers"] == 2
    assert reviews["breaker"] == "open"  # the most severe state of any worker
    assert reviews["endpoints"][0]["ejected"] is True
    assert reviews["endpoints"][0]["requests"] == 5
    assert (reviews["requests"], reviews["errors"], reviews["refused"]) == (5, 4, 1)
    assert [(e["worker"], e["code"]) for e in state["recent_errors"]] == [
        (1, "upstream_connect_failure"),
        (0, "upstream_5xx"),
    ]
    stats = (await call(target, "/stats")).json()
    assert [e["worker"] for e in stats["recent_errors"]] == [0, 1]  # /stats carries them too, oldest first


async def test_mesh_admin_asgi_app_mounted_under_a_prefix(make_mesh: MakeMesh) -> None:
    mesh = make_mesh({"clusters": {"reviews": {"endpoints": [GOOD]}}})
    app = Starlette(routes=[Mount("/mesh", app=mesh.admin_asgi_app())])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        bare = await client.get("/mesh")
        page = await client.get("/mesh/")
        state = await client.get("/mesh/ui/state")
        script = await client.get("/mesh/ui/app.js")
        head = await client.head("/mesh/")
        post = await client.post("/mesh/ui/state")
        missing = await client.get("/mesh/nothing")
    assert bare.status_code == 307
    assert bare.headers["location"].endswith("/mesh/")
    assert page.status_code == 200
    assert "<title>meshlib admin</title>" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert state.json()["clusters"]["reviews"]["endpoints"][0]["url"] == GOOD
    assert state.headers["cache-control"] == "no-store"
    assert script.status_code == 200
    assert (head.status_code, head.content) == (200, b"")
    assert (post.status_code, missing.status_code) == (405, 404)


async def test_mesh_admin_asgi_app_served_at_a_root_path(make_mesh: MakeMesh) -> None:
    """Behind a server's --root-path (or a router that keeps the mount point in path): relative URLs still work."""
    mesh = make_mesh({"clusters": {"reviews": {"endpoints": [GOOD]}}})
    transport = httpx.ASGITransport(app=mesh.admin_asgi_app(), root_path="/mesh")
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        bare = await client.get("/mesh")
        state = await client.get("/mesh/ui/state")
    assert (bare.status_code, bare.headers["location"]) == (307, "/mesh/")
    assert state.status_code == 200
    assert "reviews" in state.json()["clusters"]


def test_the_assets_ship_in_the_package() -> None:
    from importlib import resources

    static = resources.files("meshlib._admin_ui").joinpath("static")
    assert sorted(p.name for p in static.iterdir()) == ["app.js", "index.html", "style.css"]
