"""The admin endpoints, called through their handler (the listener itself is tested with the proxy process)."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

import meshlib
from meshlib._sidecar.admin import ReloadAnswer, admin_handler

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
        self.crash: Exception | None = None  # what reload() raises, as a bug would
        self.peers: list[tuple[int, dict[str, Any]]] = []  # other workers' /stats, as worker 0 would fetch them
        self.missing: list[int] = []
        self.pages: list[str] = []  # other workers' /metrics pages, as worker 0 would fetch them

    def listener_stats(self) -> dict[str, Any]:
        return {"outbound": {"connections": 2, "in_flight": 1, "address": "127.0.0.1:15001"}}

    async def reload(self) -> ReloadAnswer:
        self.reloads.append("reload")
        if self.crash is not None:
            raise self.crash
        if self.refuse:
            return ReloadAnswer(400, {"reloaded": False, "message": "invalid mesh config: bad"})
        return ReloadAnswer(200, {"reloaded": True, "message": "config version 2"})

    def drain(self) -> str:
        self.drains += 1
        self.ready = False
        return "draining"

    async def peer_stats(self) -> tuple[list[tuple[int, dict[str, Any]]], list[int]]:
        return self.peers, self.missing

    async def peer_metrics(self) -> tuple[list[str], list[int]]:
        return self.pages, self.missing


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


async def test_a_reload_that_raises_is_a_one_line_500_logged_once_and_counted(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshlib")
    target.crash = RuntimeError("disk on fire\nsecond line")
    response = await call(target, "POST", "/reload")
    assert response.status_code == 500
    assert response.json() == {
        "reloaded": False,
        "message": "internal error: RuntimeError: disk on fire second line",
        "version": 1,  # what serves on
        "digest": target.mesh.snapshot.digest,
    }
    assert target.mesh.stats()["reloads"]["refused"] == 1
    [line] = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert (line.levelname, line.exc_info) == ("ERROR", None)  # no traceback but at DEBUG
    assert "\n" not in line.getMessage()
    assert [r.levelname for r in caplog.records if r.exc_info] == ["DEBUG"]


# /config_dump redacts by what a value means (tests/config/test_redact.py has the rules one by one)

SECRETS_CONFIG: dict[str, Any] = {
    "clusters": {
        "reviews": {
            "endpoints": ["http://127.0.0.1:9081"],
            "rate_limit": {"rate": "10/second", "storage": "redis://:rl-pass-01@127.0.0.1:6379/0"},
            "circuit_breaker": {"storage": "redis://cb-user-02:cb-pass-03@127.0.0.1:6379/1?password=cb-query-04"},
        },
        "ratings": {
            "endpoints": ["http://127.0.0.1:9090"],
            "rate_limit": {
                "rate": "5/second",
                "storage": "rediss://127.0.0.1:6380/0?password=rl-query-05&username=u-06",
            },
        },
    },
    "routes": [
        {
            "name": "secret-matches",
            "match": {
                "host": "reviews",
                "path_prefix": "/api/",
                "headers": {
                    "authorization": {"exact": "Bearer match-07"},
                    "proxy-authorization": {"prefix": "Basic match-08"},
                    "cookie": {"regex": "session=match-09.*"},
                    "x-api-key": "match-10",
                    "apikey": "match-11",
                    "x-user": "tester",
                },
                "query": {"token": {"exact": "query-12"}, "page": "query-13", "sig": {"regex": "query-14.*"}},
            },
            "cluster": "reviews",
            "headers": {
                "request": {
                    "set": {"x-auth": "set-15", "x-upstream-credential": "set-16", "x-team": "books"},
                    "add": {"cookie": "add-17", "x-csrf-token": "add-18", "x-client-secret": "add-19"},
                },
                "response": {"set": {"set-cookie": "resp-20", "x-served-by": "mesh"}},
            },
        },
        {
            "name": "direct",
            "match": {"host": "direct"},
            "direct_response": {"status": 200, "headers": {"x-session-id": "direct-21", "x-kind": "plain"}},
        },
    ],
    "sidecar": {"inbound": {"listen": "127.0.0.1:15006", "app": "http://app-user-22:app-pass-23@127.0.0.1:8000"}},
}
SECRETS = [
    "rl-pass-01",  # storage URL password
    "cb-user-02",  # storage URL user
    "cb-pass-03",
    "cb-query-04",  # ?password=
    "rl-query-05",
    "u-06",  # any query value of a storage URL
    "match-07",  # header match on authorization (exact)
    "match-08",  # proxy-authorization (prefix)
    "match-09",  # cookie (regex)
    "match-10",  # x-api-key (shorthand exact)
    "match-11",  # apikey
    "query-12",  # query match on a secret-looking name
    "query-13",  # any query match value, whatever its name
    "query-14",  # a query regex
    "set-15",  # header edits: x-auth
    "set-16",  # x-upstream-credential
    "add-17",  # cookie
    "add-18",  # x-csrf-token
    "add-19",  # x-client-secret
    "resp-20",  # set-cookie on the response
    "direct-21",  # direct_response headers
    "app-user-22",  # the inbound app URL's user info
    "app-pass-23",
]


@pytest.fixture
async def dump_text(make_mesh: Any) -> str:
    return (await call(Target(make_mesh(SECRETS_CONFIG)), "GET", "/config_dump")).text


@pytest.mark.parametrize("secret", SECRETS)
async def test_config_dump_never_shows_a_credential(dump_text: str, secret: str) -> None:
    assert secret not in dump_text


@pytest.mark.parametrize(
    "shown",
    ['"x-user"', '"tester"', '"books"', '"mesh"', '"plain"', '"/api/"', '"reviews"', '"ratings"', "127.0.0.1:9081"],
)
async def test_config_dump_still_shows_what_is_no_secret(dump_text: str, shown: str) -> None:
    assert shown in dump_text
