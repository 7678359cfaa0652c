"""``mirror``: a copy of a share of requests goes to a shadow cluster, never delaying or affecting the primary."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
import respx

import meshlib
from meshlib._engine.context import CallContext, context_of
from meshlib._policies.mirror import MirrorPolicy, shadow_host
from tests.conftest import Caller, MakeMesh, echo_response, eventually

pytestmark = pytest.mark.anyio

PRIMARY = "http://127.0.0.1:9081"
SHADOW = "http://127.0.0.1:9091"
Handler = Callable[[httpx.Request], Any]


def _config(percent: float = 100, **shadow: Any) -> dict[str, Any]:
    return {
        "clusters": {"reviews": {"endpoints": [PRIMARY]}, "reviews-v2": {"endpoints": [SHADOW], **shadow}},
        "routes": [
            {
                "match": {"host": "reviews"},
                "cluster": "reviews",
                "mirror": {"cluster": "reviews-v2", "percent": percent},
            }
        ],
    }


def _counters(mesh: meshlib.Mesh, cluster: str = "reviews-v2") -> dict[str, int]:
    counters: dict[str, int] = mesh.stats()["clusters"][cluster]["counters"]
    return counters


def _shadow_endpoint(mesh: meshlib.Mesh) -> dict[str, Any]:
    stats: dict[str, Any] = mesh.stats()["clusters"]["reviews-v2"]["endpoints"][SHADOW]
    return stats


def _slow(mode: str, seconds: float) -> Handler:
    """A respx side effect that answers 200 after ``seconds`` (blocking its thread in sync mode)."""

    def slow(request: httpx.Request) -> httpx.Response:
        time.sleep(seconds)
        return httpx.Response(200)

    async def slow_async(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(seconds)
        return httpx.Response(200)

    return slow if mode == "sync" else slow_async


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("reviews", "reviews-shadow"),
        ("reviews:8080", "reviews-shadow:8080"),
        ("10.0.0.1:80", "10.0.0.1-shadow:80"),
        ("[::1]:8080", "[::1]-shadow:8080"),
        ("[::1]", "[::1]-shadow"),
    ],
)
def test_shadow_host_is_suffixed_before_the_port(host: str, expected: str) -> None:
    assert shadow_host(host) == expected


async def test_the_shadow_gets_the_same_request_with_a_shadow_host(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    primary = respx_mock.post(f"{PRIMARY}/api/reviews/1").mock(side_effect=echo_response)
    shadow = respx_mock.post(f"{SHADOW}/api/reviews/1").mock(return_value=httpx.Response(500))
    mesh = make_mesh(_config())
    async with caller(mesh) as client:
        response = await client.request(
            "POST", "http://reviews/api/reviews/1?q=1", content=b"hello", headers={"x-user": "ann"}
        )
        await eventually(lambda: shadow.call_count == 1 and _shadow_endpoint(mesh)["in_flight"] == 0)
    assert response.status_code == 200
    assert primary.call_count == 1
    assert primary.calls.last.request.headers["host"] == "reviews"
    copy = shadow.calls.last.request
    assert copy.method == "POST"
    assert copy.url.raw_path == b"/api/reviews/1?q=1"
    assert copy.headers["host"] == "reviews-shadow"
    assert copy.headers["x-user"] == "ann"
    assert copy.content == b"hello"
    # A 5xx from the shadow is its own business: the copy was sent, the mirror did not fail.
    assert _counters(mesh) == {"mirrored": 1}


async def test_a_slow_shadow_does_not_delay_the_primary(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    respx_mock.get(f"{PRIMARY}/x").mock(return_value=httpx.Response(200, text="primary"))
    shadow = respx_mock.get(f"{SHADOW}/x").mock(side_effect=_slow(mode, 0.2))
    mesh = make_mesh(_config())
    async with caller(mesh) as client:
        started = time.monotonic()
        response = await client.get("http://reviews/x")
        elapsed = time.monotonic() - started
        assert response.text == "primary"
        assert elapsed < 0.1
        await eventually(lambda: shadow.call_count == 1 and _shadow_endpoint(mesh)["in_flight"] == 0)
    assert _shadow_endpoint(mesh)["requests"] == 1
    assert _counters(mesh) == {"mirrored": 1}


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("refused"), httpx.ReadError("reset"), RuntimeError("shadow bug")],
    ids=["connect", "reset", "crash"],
)
async def test_a_failing_shadow_does_not_affect_the_primary(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, failure: Exception
) -> None:
    respx_mock.get(f"{PRIMARY}/x").mock(return_value=httpx.Response(200, text="primary"))
    shadow = respx_mock.get(f"{SHADOW}/x").mock(side_effect=failure)
    mesh = make_mesh(_config())
    async with caller(mesh) as client:
        for _ in range(3):
            assert (await client.get("http://reviews/x")).text == "primary"
        await eventually(lambda: _counters(mesh).get("mirror_failed") == 3)
    assert shadow.call_count == 3
    assert _counters(mesh) == {"mirrored": 3, "mirror_failed": 3}
    assert _counters(mesh, "reviews") == {}


async def test_a_streaming_body_is_not_mirrored(
    make_mesh: MakeMesh, caller: Caller, mode: str, respx_mock: respx.MockRouter
) -> None:
    primary = respx_mock.put(f"{PRIMARY}/x").mock(side_effect=echo_response)
    shadow = respx_mock.put(f"{SHADOW}/x")
    mesh = make_mesh(_config())

    def chunks() -> Iterator[bytes]:
        yield b"he"
        yield b"llo"

    async def achunks() -> AsyncIterator[bytes]:
        yield b"he"
        yield b"llo"

    body: Any = chunks() if mode == "sync" else achunks()
    async with caller(mesh) as client:
        response = await client.request("PUT", "http://reviews/x", content=body)
        # Nothing is sent in the background: the next (in-memory) request's copy is the only one.
        await client.request("PUT", "http://reviews/x", content=b"again")
        await eventually(lambda: shadow.call_count == 1)
    assert response.json()["body"] == "hello"
    assert primary.call_count == 2
    assert shadow.calls.last.request.content == b"again"
    assert _counters(mesh) == {"mirror_skipped": 1, "mirrored": 1}


def test_the_copy_has_a_context_of_its_own(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(_config())
    route = mesh.snapshot.routes.routes[0]
    endpoint = mesh.snapshot.clusters["reviews"].endpoints[0]
    request = httpx.Request("GET", "http://reviews/x", extensions={"timeout": {"read": 1.0}})
    ctx = CallContext(original=request, route=route, clock=mesh.snapshot.clock, attempt=3, deadline=12.5)
    ctx.tried.append(endpoint)
    request.extensions["meshlib"] = ctx
    copy = MirrorPolicy.shadow_request(request)
    forked = context_of(copy)
    assert forked is not ctx
    assert (forked.tried, forked.attempt, forked.deadline) == ([], 1, None)
    assert (ctx.tried, ctx.attempt, ctx.deadline) == ([endpoint], 3, 12.5)  # the caller's is untouched
    assert copy.extensions["timeout"] == {"read": 1.0}
    assert request.headers["host"] == "reviews"


def test_mirror_percent_draws_independently() -> None:
    policy = MirrorPolicy(25, random.Random(0))
    n = 20_000
    assert abs(sum(policy.sample() for _ in range(n)) / n - 0.25) < 0.02
    assert all(MirrorPolicy(100, random.Random(0)).sample() for _ in range(100))
    assert not any(MirrorPolicy(0, random.Random(0)).sample() for _ in range(100))


async def test_percent_of_requests_are_mirrored(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{PRIMARY}/x").mock(return_value=httpx.Response(200))
    shadow = respx_mock.get(f"{SHADOW}/x").mock(return_value=httpx.Response(200))
    mesh = make_mesh(_config(percent=30))
    n = 2000
    async with caller(mesh) as client:
        for _ in range(n):
            await client.get("http://reviews/x")
        mirrored = _counters(mesh)["mirrored"]
        await eventually(lambda: shadow.call_count == mirrored)
    assert abs(mirrored / n - 0.30) < 0.02


async def test_after_the_mesh_closes_clients_work_without_mirroring(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    primary = respx_mock.get(f"{PRIMARY}/x").mock(return_value=httpx.Response(200))
    mesh = make_mesh(_config())
    async with caller(mesh) as client:
        mesh.close()
        assert (await client.get("http://reviews/x")).status_code == 200
    assert primary.call_count == 1
    assert _counters(mesh) == {"mirror_skipped": 1}
