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
        self.peers: list[tuple[int, dict[str, Any]]] = []  # other workers' /stats, as worker 0 would fetch them
        self.missing: list[int] = []

    def listener_stats(self) -> dict[str, Any]:
        return {"outbound": {"connections": 2, "in_flight": 1, "address": "127.0.0.1:15001"}}

    async def reload(self) -> tuple[bool, str]:
        self.reloads.append("reload")
        return (False, "invalid mesh config: bad") if self.refuse else (True, "config version 2")

    def drain(self) -> str:
        self.drains += 1
        self.ready = False
        return "draining"

    async def peer_stats(self) -> tuple[list[tuple[int, dict[str, Any]]], list[int]]:
        return self.peers, self.missing


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


async def test_stats_count_reloads_accepted_and_refused(target: Target) -> None:
    target.mesh.reload(CONFIG)
    with pytest.raises(meshlib.ConfigError):
        target.mesh.reload({"clusters": {"reviews": {"endpoints": ["not a url"]}}})
    reloads = (await call(target, "GET", "/stats")).json()["reloads"]
    assert (reloads["accepted"], reloads["refused"]) == (1, 1)
    assert "clusters.reviews.endpoints[0]" in reloads["last_error"]
    target.peers = [(1, _peer(1))]  # with workers: worker 0's count (each worker reloads the same file)
    assert (await call(target, "GET", "/stats")).json()["reloads"] == reloads


def _peer(requests: int, *, healthy: bool = True, state: str = "closed") -> dict[str, Any]:
    endpoint = {"in_flight": 1, "requests": requests, "healthy": healthy, "ejected": False, "times_ejected": 0}
    return {
        "version": 1,
        "clusters": {
            "reviews": {
                "endpoints": {"http://127.0.0.1:9081": endpoint},
                "counters": {"retries": 2},
                "circuit_breaker": {"state": state, "in_flight": 1},
            }
        },
        "listeners": {"outbound": {"connections": 3, "in_flight": 1, "address": "127.0.0.1:15001"}},
    }


async def test_with_workers_stats_and_clusters_cover_every_worker(target: Target) -> None:
    target.peers = [(1, _peer(5, healthy=False, state="open"))]
    stats = (await call(target, "GET", "/stats")).json()
    assert [w["worker"] for w in stats["workers"]] == [0, 1]
    assert stats["listeners"]["outbound"] == {"connections": 5, "in_flight": 2, "address": "127.0.0.1:15001"}
    endpoint = stats["clusters"]["reviews"]["endpoints"]["http://127.0.0.1:9081"]
    assert endpoint["requests"] == 5  # worker 0 sent none
    assert endpoint["healthy"] is False  # one worker sees it unhealthy
    assert stats["clusters"]["reviews"]["counters"]["retries"] == 2
    assert "workers_missing" not in stats
    response = await call(target, "GET", "/clusters")
    reviews = response.json()["reviews"]
    assert reviews["circuit_breaker"] == {"state": "open", "in_flight": 1}  # the most severe state, in-flight summed
    assert reviews["endpoints"]["http://127.0.0.1:9081"]["weight"] == 3
    assert "x-meshlib-workers-missing" not in response.headers


async def test_with_workers_a_worker_that_does_not_answer_is_named(target: Target) -> None:
    target.peers = [(2, _peer(4))]
    target.missing = [1]
    stats = (await call(target, "GET", "/stats")).json()
    assert stats["workers_missing"] == [1]
    assert stats["clusters"]["reviews"]["endpoints"]["http://127.0.0.1:9081"]["requests"] == 4
    response = await call(target, "GET", "/clusters")
    assert response.status_code == 200
    assert response.headers["x-meshlib-workers-missing"] == "1"


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
