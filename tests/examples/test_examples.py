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
from examples.ratings_app.app import create_app as create_ratings_app, ratings_of

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
        v1 = respx.get(url__regex=r"http://127\.0\.0\.1:908[12]/reviews/.*").mock(side_effect=_echo("v1"))
        v2 = respx.get(url__regex=r"http://127\.0\.0\.1:9083/reviews/.*").mock(side_effect=_echo("v2"))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://frontend") as client,
        ):
            tester = await client.get("/products/1", headers={"x-user": "tester"})
            assert tester.json() == {"product": 1, "reviews": {"from": "v2", "path": "/reviews/1", "x-caller": None}}
            v2_before = v2.call_count
            froms = [(await client.get("/products/2")).json()["reviews"]["from"] for _ in range(200)]
    assert froms.count("v1") == v1.call_count
    assert 150 <= froms.count("v1") <= 195  # a 90/10 split over 200 requests
    assert froms.count("v2") == v2.call_count - v2_before


@pytest.mark.anyio
async def test_fastapi_example_retries_a_failed_try_and_says_when_reviews_are_down() -> None:
    mesh = meshlib.Mesh.from_file(EXAMPLES / "fastapi_app" / "mesh.yaml")
    app = create_fastapi_app(mesh)
    with respx.mock:
        v2 = respx.get("http://127.0.0.1:9083/reviews/1").mock(
            side_effect=[httpx.Response(503), httpx.Response(200, json={"version": "v2"})]
        )
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://frontend") as client,
        ):
            retried = await client.get("/products/1", headers={"x-user": "tester"})
            assert retried.json() == {"product": 1, "reviews": {"version": "v2"}}
            assert v2.call_count == 2
            v2.mock(return_value=httpx.Response(503))
            down = await client.get("/products/1", headers={"x-user": "tester"})
    assert down.status_code == 503
    assert down.json()["error"].startswith("reviews unavailable")
    assert v2.call_count == 2 + 3  # mesh.yaml: 3 attempts


RATINGS = {"service": "ratings", "product": 3, "ratings": {"Reviewer1": 4, "Reviewer2": 2}}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_flask_reviews_example_shows_the_ratings_and_v2_the_stars(version: str) -> None:
    mesh = meshlib.Mesh.from_file(EXAMPLES / "flask_app" / "mesh.yaml")
    client = create_flask_app(mesh, version=version).test_client()
    with respx.mock:
        ratings = respx.get("http://127.0.0.1:9090/ratings/3").mock(return_value=httpx.Response(200, json=RATINGS))
        body = client.get("/reviews/3").get_json()
    assert ratings.call_count == 1
    assert body["service"] == "reviews"
    assert body["version"] == version
    assert [review["rating"] for review in body["reviews"]] == [4, 2]
    stars = [review.get("stars") for review in body["reviews"]]
    assert stars == (["★★★★☆", "★★☆☆☆"] if version == "v2" else [None, None])


def test_the_flaky_reviews_serve_the_retry_of_a_request_they_failed() -> None:
    """Every 2nd request fails on purpose, but never a retry of one it failed (same trace): whatever order the
    retries come in, a retried request is answered, as the bookinfo demo's checks rely on."""
    mesh = meshlib.Mesh.from_file(EXAMPLES / "flask_app" / "mesh.yaml")
    client = create_flask_app(mesh, version="v1", fail_every=2).test_client()

    def get(trace: str) -> int:
        traceparent = f"00-{trace * 32}-{'1' * 16}-01"
        return client.get("/reviews/3", headers={"traceparent": traceparent}).status_code

    with respx.mock:
        respx.get("http://127.0.0.1:9090/ratings/3").mock(return_value=httpx.Response(200, json={}))
        answers = [get("a"), get("b"), get("b"), get("c"), get("d"), get("d"), get("d")]
    # b fails (2nd counted); its retry is served, not counted; c is 3rd, d 4th fails; d's retry is served, and
    # a third try of d is a new request to count (5th): served.
    assert answers == [200, 503, 200, 200, 503, 200, 200]


def test_flask_reviews_example_without_ratings_still_shows_the_reviews() -> None:
    mesh = meshlib.Mesh.from_file(EXAMPLES / "flask_app" / "mesh.yaml")
    client = create_flask_app(mesh, version="v2", fail_every=3).test_client()
    with respx.mock:
        respx.get("http://127.0.0.1:9090/ratings/3").mock(return_value=httpx.Response(500))
        answers = [client.get("/reviews/3") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 503]  # fail_every=3: the third fails on purpose
    body = answers[0].get_json()
    assert body["ratings_error"].startswith("ratings unavailable")
    assert [set(review) for review in body["reviews"]] == [{"reviewer", "text"}] * 2


def test_flask_reviews_example_refuses_an_unknown_version() -> None:
    with pytest.raises(ValueError, match="v1"):
        create_flask_app(meshlib.Mesh.from_file(EXAMPLES / "flask_app" / "mesh.yaml"), version="v3")


def test_ratings_example_answers_reads_only() -> None:
    client = create_ratings_app(meshlib.Mesh.from_file(EXAMPLES / "ratings_app" / "mesh.yaml")).test_client()
    body = client.get("/ratings/3").get_json()
    assert body == {"service": "ratings", "product": 3, "ratings": ratings_of(3)}
    assert set(body["ratings"].values()) <= {1, 2, 3, 4, 5}
    assert client.post("/ratings/3").status_code == 403


@pytest.mark.anyio
@pytest.mark.parametrize("folder", ["fastapi_app", "flask_app", "ratings_app"])
async def test_example_apps_serve_their_metrics(folder: str) -> None:
    mesh = meshlib.Mesh.from_file(EXAMPLES / folder / "mesh.yaml")
    if folder == "fastapi_app":
        app = create_fastapi_app(mesh)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://frontend") as client,
        ):
            page = await client.get("/metrics/")  # Starlette serves a mount with a slash (and redirects to it)
        status, text = page.status_code, page.text
    else:
        factory = create_flask_app if folder == "flask_app" else create_ratings_app
        answer = factory(mesh).test_client().get("/metrics")
        status, text = answer.status_code, answer.text
    assert status == 200
    assert "# TYPE meshlib_inbound_requests_total counter" in text


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
