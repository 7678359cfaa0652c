"""The FastAPI and Flask examples work as documented, with respx standing in for their upstreams."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest
import respx

import meshlib
from examples.fastapi_app.app import create_app as create_fastapi_app
from examples.flask_app.app import create_app as create_flask_app

EXAMPLES = Path(__file__).parents[2] / "examples"


def _echo(name: str) -> respx.types.SideEffectTypes:
    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"from": name, "path": request.url.path, "x-caller": request.headers.get("x-caller")}
        )

    return reply


@pytest.mark.parametrize("config", sorted(EXAMPLES.glob("*/mesh.yaml")), ids=lambda p: p.parent.name)
def test_example_configs_are_valid(config: Path) -> None:
    assert isinstance(meshlib.MeshConfig.from_file(config), meshlib.MeshConfig)


@pytest.mark.anyio
async def test_fastapi_example_routes_testers_to_v2_and_others_by_canary() -> None:
    mesh = meshlib.Mesh.from_file(EXAMPLES / "fastapi_app" / "mesh.yaml", rng=random.Random(7))
    app = create_fastapi_app(mesh)
    with respx.mock:
        v1 = respx.get(url__regex=r"http://127\.0\.0\.1:908[12]/api/reviews/.*").mock(side_effect=_echo("v1"))
        v2 = respx.get(url__regex=r"http://127\.0\.0\.1:9083/api/reviews/.*").mock(side_effect=_echo("v2"))
        respx.get(url__regex=r"http://127\.0\.0\.1:9090/api/ratings/.*").mock(side_effect=_echo("ratings"))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://frontend") as client,
        ):
            tester = await client.get("/products/1", headers={"x-user": "tester"})
            assert tester.json()["reviews"]["from"] == "v2"
            assert tester.json()["ratings"]["from"] == "ratings"
            v2_before = v2.call_count
            froms = [(await client.get("/products/2")).json()["reviews"]["from"] for _ in range(200)]
    assert froms.count("v1") == v1.call_count
    assert 150 <= froms.count("v1") <= 195  # a 90/10 split over 200 requests
    assert froms.count("v2") == v2.call_count - v2_before


def test_flask_example_balances_reviews_and_adds_caller_header() -> None:
    mesh = meshlib.Mesh.from_file(EXAMPLES / "flask_app" / "mesh.yaml", rng=random.Random(3))
    app = create_flask_app(mesh)
    with respx.mock:
        first = respx.get("http://127.0.0.1:9081/api/reviews/3").mock(side_effect=_echo("r1"))
        second = respx.get("http://127.0.0.1:9082/api/reviews/3").mock(side_effect=_echo("r2"))
        respx.get("http://127.0.0.1:9090/api/ratings/3").mock(side_effect=_echo("ratings"))
        client = app.test_client()
        bodies = [client.get("/products/3").get_json() for _ in range(10)]
    assert {b["reviews"]["x-caller"] for b in bodies} == {"storefront"}
    assert first.call_count + second.call_count == 10
    assert first.call_count >= 1
    assert second.call_count >= 1


XFCC = "URI=spiffe://example.org/ns/default/sa/gateway"


@pytest.mark.anyio
async def test_fastapi_example_applies_its_inbound_policy() -> None:
    mesh = meshlib.Mesh.from_file(EXAMPLES / "fastapi_app" / "mesh.yaml")
    app = create_fastapi_app(mesh)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://frontend") as client,
    ):
        for path in ("/admin", "/admin/users", "/api/../admin/users", "/%61dmin"):
            response = await client.get(path)
            assert response.status_code == 403, path
            assert response.headers["x-meshlib-error"] == "forbidden"
        assert (await client.post("/products/1")).status_code == 403  # read-only
        whoami = await client.get("/whoami", headers={"x-forwarded-client-cert": XFCC})
        assert whoami.json() == {"peer": "spiffe://example.org/ns/default/sa/gateway", "mtls": True, "user": None}


def test_flask_example_applies_its_inbound_policy() -> None:
    mesh = meshlib.Mesh.from_file(EXAMPLES / "flask_app" / "mesh.yaml")
    client = create_flask_app(mesh).test_client()
    for path in ("/admin", "/admin/users", "/api/../admin/users", "/%61dmin/users"):
        response = client.get(path)
        assert response.status_code == 403, path
        assert response.headers["x-meshlib-error"] == "forbidden"
    assert client.get("/admin%2fusers").status_code == 400
    whoami = client.get("/whoami", headers={"x-forwarded-client-cert": XFCC}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert whoami.get_json() == {"peer": "spiffe://example.org/ns/default/sa/gateway", "mtls": True, "user": None}
