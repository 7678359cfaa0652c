"""``storage: redis://…``: rate limits and circuit breakers shared by meshes and processes through a real Redis.

Each test gets an empty database of the session's redis-server (tests/policies/conftest.py).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import time_machine

import meshlib
from tests.conftest import MakeMesh

pytestmark = pytest.mark.anyio

ENDPOINT = "http://127.0.0.1:9081"
URL = "http://reviews/"
ROOT = Path(__file__).resolve().parents[2]

# What another process does: build a mesh from the same config and send requests (upstream mocked by respx).
OTHER_PROCESS = """
import json, sys
import respx
import meshlib

config, n, status = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
outcomes = []
with respx.mock:
    upstream = respx.get("http://127.0.0.1:9081/").respond(status)
    with meshlib.Mesh.from_dict(config) as mesh, mesh.client() as client:
        for _ in range(n):
            try:
                outcomes.append(client.get("http://reviews/").status_code)
            except meshlib.MeshError as error:
                outcomes.append(error.code)
print(json.dumps({"outcomes": outcomes, "calls": upstream.call_count}))
"""


def _in_another_process(config: dict[str, Any], n: int, status: int = 200) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, json.dumps(config), str(n), str(status)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _limited(storage: str, rate: str = "5/minute", strategy: str = "moving-window") -> dict[str, Any]:
    limit = {"rate": rate, "storage": storage, "strategy": strategy}
    return {"clusters": {"reviews": {"endpoints": [ENDPOINT], "rate_limit": limit}}}


def _breaker(storage: str, recovery_timeout: str = "30s") -> dict[str, Any]:
    breaker = {"failure_threshold": 3, "recovery_timeout": recovery_timeout, "storage": storage}
    return {"clusters": {"reviews": {"endpoints": [ENDPOINT], "circuit_breaker": breaker}}}


def _counters(mesh: meshlib.Mesh) -> dict[str, int]:
    counters: dict[str, int] = mesh.stats()["clusters"]["reviews"]["counters"]
    return counters


def _sync_outcomes(client: httpx.Client, n: int) -> list[int | str]:
    out: list[int | str] = []
    for _ in range(n):
        try:
            out.append(client.get(URL).status_code)
        except meshlib.MeshError as error:
            out.append(error.code)
    return out


async def _async_outcomes(client: httpx.AsyncClient, n: int) -> list[int | str]:
    out: list[int | str] = []
    for _ in range(n):
        try:
            out.append((await client.get(URL)).status_code)
        except meshlib.MeshError as error:
            out.append(error.code)
    return out


# Rate limits


async def test_two_meshes_and_both_client_kinds_share_one_limit(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, redis_url: str
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/").respond(200)
    first, second = make_mesh(_limited(redis_url)), make_mesh(_limited(redis_url))
    with first.client() as sync_client:
        async with second.async_client() as async_client:
            assert _sync_outcomes(sync_client, 2) == [200, 200]
            assert await _async_outcomes(async_client, 2) == [200, 200]
            assert _sync_outcomes(sync_client, 1) == [200]
            with pytest.raises(meshlib.RateLimitedError):
                await async_client.get(URL)
            with pytest.raises(meshlib.RateLimitedError):
                sync_client.get(URL)
    assert upstream.call_count == 5
    assert (_counters(first)["rate_limited"], _counters(second)["rate_limited"]) == (1, 1)


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
async def test_each_strategy_counts_in_redis(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, redis_url: str, strategy: str
) -> None:
    respx_mock.get(f"{ENDPOINT}/").respond(200)
    first = make_mesh(_limited(redis_url, "3/minute", strategy))
    second = make_mesh(_limited(redis_url, "3/minute", strategy))
    with first.client() as one:
        async with second.async_client() as two:
            assert _sync_outcomes(one, 2) + await _async_outcomes(two, 2) == [200, 200, 200, "rate_limited"]


async def test_two_strategies_on_one_name_count_apart(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, redis_url: str
) -> None:
    respx_mock.get(f"{ENDPOINT}/").respond(200)
    moving = make_mesh(_limited(redis_url, "2/minute", "moving-window"))
    fixed = make_mesh(_limited(redis_url, "2/minute", "fixed-window"))
    with moving.client() as one, fixed.client() as two:
        # Each strategy keeps its own keys: no mixed-up counts, no Redis type errors.
        assert _sync_outcomes(one, 3) == [200, 200, "rate_limited"]
        assert _sync_outcomes(two, 3) == [200, 200, "rate_limited"]
    assert "rate_limit_errors" not in _counters(moving) | _counters(fixed)


def test_another_process_shares_the_limit(make_mesh: MakeMesh, respx_mock: respx.MockRouter, redis_url: str) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/").respond(200)
    config = _limited(redis_url)
    mesh = make_mesh(config)
    with mesh.client() as client:
        assert _sync_outcomes(client, 3) == [200] * 3
        other = _in_another_process(config, 4)
        assert other == {"outcomes": [200, 200, "rate_limited", "rate_limited"], "calls": 2}
        assert _sync_outcomes(client, 1) == ["rate_limited"]
    assert upstream.call_count == 3


async def test_redis_down_fails_open_counts_and_warns_once(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, free_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/").respond(200)
    # Nothing listens there; the password must not reach the logs.
    mesh = make_mesh(_limited(f"redis://:secret@127.0.0.1:{free_port}/0", "1/minute"))
    with caplog.at_level(logging.WARNING, logger="meshlib"):
        with mesh.client() as sync_client:
            assert _sync_outcomes(sync_client, 3) == [200] * 3
        async with mesh.async_client() as async_client:
            assert await _async_outcomes(async_client, 3) == [200] * 3
    assert upstream.call_count == 6
    assert _counters(mesh)["rate_limit_errors"] == 6
    assert "rate_limited" not in _counters(mesh)
    warnings = [r for r in caplog.records if r.name == "meshlib" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert f"127.0.0.1:{free_port}" in message
    assert "cluster:reviews" in message
    assert "secret" not in message


# Shared circuit breaker


async def test_breaker_opened_by_one_mesh_is_open_for_another(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, redis_url: str
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/").respond(503)
    first, second = make_mesh(_breaker(redis_url)), make_mesh(_breaker(redis_url))
    with first.client() as one:
        assert _sync_outcomes(one, 3) == [503] * 3
    assert upstream.call_count == 3
    async with second.async_client() as two:
        with pytest.raises(meshlib.CircuitOpenError) as refused:
            await two.get(URL)
        assert await _async_outcomes(two, 2) == ["circuit_open"] * 2
    assert refused.value.cluster == "reviews"
    assert upstream.call_count == 3
    assert _counters(second)["breaker_rejected"] == 3
    assert second.stats()["clusters"]["reviews"]["circuit_breaker"]["state"] == "open"


async def test_shared_breaker_recovers_after_a_sub_second_recovery_timeout(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, redis_url: str
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/").mock(side_effect=[httpx.Response(503)] * 3 + [httpx.Response(200)] * 3)
    first, second = make_mesh(_breaker(redis_url, "200ms")), make_mesh(_breaker(redis_url, "200ms"))
    # The wall clock (which Redis-stored breakers go by) frozen 0.9 s into a second: whole-second
    # timestamps would make the breaker recover at once.
    start = datetime(2030, 1, 1, 0, 0, 0, 900_000, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as traveller, first.client() as one:
        async with second.async_client() as two:
            assert _sync_outcomes(one, 3) == [503] * 3
            traveller.shift(0.15)
            assert await _async_outcomes(two, 1) == ["circuit_open"]
            assert _sync_outcomes(one, 1) == ["circuit_open"]
            traveller.shift(0.06)
            # The second mesh's trial succeeds and closes the breaker for both.
            assert await _async_outcomes(two, 1) == [200]
            assert _sync_outcomes(one, 2) == [200, 200]
    assert upstream.call_count == 6
    assert first.stats()["clusters"]["reviews"]["circuit_breaker"]["state"] == "closed"


def test_shared_breaker_recovers_in_real_time(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, redis_url: str
) -> None:
    respx_mock.get(f"{ENDPOINT}/").mock(side_effect=[httpx.Response(503)] * 3 + [httpx.Response(200)])
    first, second = make_mesh(_breaker(redis_url, "100ms")), make_mesh(_breaker(redis_url, "100ms"))
    with first.client() as one, second.client() as two:
        assert _sync_outcomes(one, 3) == [503] * 3
        opened = time.monotonic()
        assert _sync_outcomes(two, 1) == ["circuit_open"]
        time.sleep(max(0.0, opened + 0.12 - time.monotonic()))
        assert _sync_outcomes(two, 1) == [200]


def test_breaker_opened_by_another_process(make_mesh: MakeMesh, respx_mock: respx.MockRouter, redis_url: str) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/").respond(200)
    config = _breaker(redis_url)
    other = _in_another_process(config, 4, status=503)
    assert other == {"outcomes": [503, 503, 503, "circuit_open"], "calls": 3}
    mesh = make_mesh(config)
    with mesh.client() as client:
        assert _sync_outcomes(client, 2) == ["circuit_open"] * 2
    assert upstream.call_count == 0


async def test_breaker_with_redis_down_fails_open(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, free_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/").respond(503)
    with caplog.at_level(logging.WARNING):
        # Creating the mesh does not need Redis; while it is down the breaker reads as closed.
        mesh = make_mesh(_breaker(f"redis://127.0.0.1:{free_port}/0"))
        with mesh.client() as client:
            assert _sync_outcomes(client, 5) == [503] * 5
        async with mesh.async_client() as async_client:
            assert await _async_outcomes(async_client, 2) == [503] * 2
    assert upstream.call_count == 7
    assert mesh.stats()["clusters"]["reviews"]["circuit_breaker"]["state"] == "closed"
    assert _counters(mesh)["breaker_storage_errors"] >= 7
    # One warning, not a traceback per Redis command.
    logged = [(r.name, r.levelname) for r in caplog.records]
    assert logged == [("meshlib.circuit_breaker", "WARNING")]
    assert f"127.0.0.1:{free_port}" in caplog.records[0].getMessage()


# Without the redis package


@pytest.mark.parametrize(
    ("config", "where"),
    [
        (_limited("redis://127.0.0.1:6379"), "clusters.reviews.rate_limit.storage"),
        (_breaker("redis://127.0.0.1:6379"), "clusters.reviews.circuit_breaker.storage"),
    ],
    ids=["rate_limit", "circuit_breaker"],
)
def test_redis_storage_without_the_redis_package_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, config: dict[str, Any], where: str
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis → ImportError
    with pytest.raises(meshlib.ConfigError) as raised:
        meshlib.Mesh.from_dict(config)
    assert raised.value.errors == [(where, "a redis:// storage needs the redis package: pip install redis")]
