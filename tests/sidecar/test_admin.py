"""The admin endpoints, called through their handler (the listener itself is tested with the proxy process)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

import meshlib
from meshlib._sidecar.admin import admin_handler, redact

pytestmark = pytest.mark.anyio

CONFIG: dict[str, Any] = {
    "clusters": {
        "reviews": {
            "endpoints": [{"url": "http://127.0.0.1:9081", "weight": 3}, "http://127.0.0.1:9082"],
            "circuit_breaker": {"failure_threshold": 5},
            "rate_limit": {"rate": "10/second", "storage": "redis://:s3cret@127.0.0.1:6379/0"},
        }
    },
    "routes": [
        {
            "name": "reviews",
            "match": {"host": "reviews"},
            "cluster": "reviews",
            "headers": {"request": {"set": {"authorization": "Bearer abc", "x-team": "books"}}},
        }
    ],
}


class Target:
    """A stand-in for the running proxy."""

    def __init__(self, mesh: meshlib.Mesh) -> None:
        self.mesh = mesh
        self.ready = True
        self.reloads: list[str] = []
        self.drains = 0
        self.refuse = False

    def listener_stats(self) -> dict[str, Any]:
        return {"outbound": {"connections": 2, "in_flight": 1, "address": "127.0.0.1:15001"}}

    def reload(self) -> tuple[bool, str]:
        self.reloads.append("reload")
        return (False, "invalid mesh config: bad") if self.refuse else (True, "config version 2")

    def drain(self) -> str:
        self.drains += 1
        self.ready = False
        return "draining"


@pytest.fixture
def target(make_mesh: Any) -> Target:
    return Target(make_mesh(CONFIG))


async def call(target: Target, method: str, path: str) -> httpx.Response:
    response = await admin_handler(target)(httpx.Request(method, f"http://127.0.0.1:15000{path}"))
    response.read()
    return response


async def test_ready_follows_the_proxy(target: Target) -> None:
    assert (await call(target, "GET", "/ready")).status_code == 200
    target.ready = False
    assert (await call(target, "GET", "/ready")).status_code == 503
    assert (await call(target, "GET", "/healthz")).status_code == 200  # alive while draining


async def test_config_dump_shows_the_config_and_filters_with_secrets_redacted(target: Target) -> None:
    response = await call(target, "GET", "/config_dump")
    assert response.headers["content-type"] == "application/json"
    dump = response.json()
    assert dump["version"] == 1
    text = response.text
    for secret in ("s3cret", "Bearer abc"):
        assert secret not in text
    cluster = dump["config"]["clusters"]["reviews"]
    assert cluster["rate_limit"]["storage"] == "redis://[redacted]@127.0.0.1:6379/0"
    assert dump["config"]["routes"][0]["headers"]["request"]["set"] == {
        "authorization": "[redacted]",
        "x-team": "books",
    }
    route = next(r for r in dump["routes"] if r["name"] == "reviews")
    assert route["filters"] == ["headers"]
    assert route["legs"]["reviews"] == ["rate_limit", "circuit_breaker"]


async def test_clusters_show_weights_health_and_breaker(target: Target) -> None:
    clusters = (await call(target, "GET", "/clusters")).json()
    endpoints = clusters["reviews"]["endpoints"]
    first = endpoints["http://127.0.0.1:9081"]
    assert first["weight"] == 3
    assert {"healthy", "ejected", "in_flight"} <= set(first)
    assert endpoints["http://127.0.0.1:9082"]["weight"] == 1
    assert clusters["reviews"]["circuit_breaker"]["state"] == "closed"


async def test_stats_include_clusters_and_listeners(target: Target) -> None:
    stats = (await call(target, "GET", "/stats")).json()
    assert "reviews" in stats["clusters"]
    assert stats["listeners"]["outbound"]["in_flight"] == 1


async def test_reload_and_drain(target: Target) -> None:
    response = await call(target, "POST", "/reload")
    assert (response.status_code, response.json()["reloaded"]) == (200, True)
    target.refuse = True
    response = await call(target, "POST", "/reload")
    assert (response.status_code, response.json()) == (400, {"reloaded": False, "message": "invalid mesh config: bad"})
    assert (await call(target, "POST", "/drain")).status_code == 202
    assert target.drains == 1
    assert (await call(target, "GET", "/ready")).status_code == 503


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/reload", 405), ("POST", "/stats", 405), ("GET", "/nope", 404), ("DELETE", "/drain", 405)],
)
async def test_wrong_method_or_path(target: Target, method: str, path: str, status: int) -> None:
    response = await call(target, method, path)
    assert response.status_code == status
    if status == 405:
        assert response.headers["allow"]
    assert target.reloads == []
    assert target.drains == 0


def test_redact_leaves_plain_values_alone() -> None:
    data = {"url": "http://127.0.0.1:1", "headers": {"x-team": "a", "cookie": "s=1"}, "n": 3}
    assert redact(data) == {"url": "http://127.0.0.1:1", "headers": {"x-team": "a", "cookie": "[redacted]"}, "n": 3}
    assert json.dumps(redact(data))
