"""``access_log:`` in process: one JSON line per request with Envoy's fields, response flags per failure, written by a
background thread to a file or standard output, never holding a request up; a file that can't be opened is refused."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

import meshlib
from meshlib._config.observability import AccessLogConfig
from meshlib._observe import access_log
from meshlib._observe.access_log import AccessLog, response_flags
from tests.conftest import Caller, MakeMesh

pytestmark = pytest.mark.anyio

ENDPOINT = "http://127.0.0.1:9090"
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FAST_BACKOFF = {"base": "1ms", "max": "2ms"}


def config(log: Path | str, **cluster: Any) -> dict[str, Any]:
    return {
        "clusters": {"ratings": {"endpoints": [ENDPOINT], **cluster}},
        "routes": [{"name": "ratings", "match": {"host": "ratings"}, "cluster": "ratings"}],
        "access_log": {"path": str(log)},
    }


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def observer(mesh: meshlib.Mesh) -> AccessLog:
    found = mesh._runtime.observers.get("access_log")
    assert isinstance(found, AccessLog)
    return found


async def test_one_line_per_request_with_envoys_fields(
    tmp_path: Path, make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    respx_mock.get(f"{ENDPOINT}/r").respond(200, content=b"five stars")
    log = tmp_path / "access.log"
    mesh = make_mesh(config(log))
    before = time.time()
    async with caller(mesh) as client:
        response = await client.get(
            "http://ratings/r?x=1",
            headers={"user-agent": "tests/1", "x-request-id": "req-1", "x-forwarded-for": "10.0.0.7"},
        )
    assert response.content == b"five stars"
    written = observer(mesh)
    mesh.close()  # drains the queue: every line is in the file when close returns
    [line] = lines(log)
    assert RFC3339_MS.match(line["start_time"])
    started = time.mktime(time.strptime(line["start_time"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert before - 1 <= started <= time.time()
    assert 0 <= line["duration_ms"] < 5000
    del line["start_time"], line["duration_ms"]
    assert line == {
        "direction": "outbound",
        "door": "client",
        "method": "GET",
        "authority": "ratings",
        "path": "/r?x=1",
        "protocol": "HTTP/1.1",  # what the upstream answered with (respx: httpx's default)
        "status": 200,
        "response_flags": "-",
        "error": None,
        "route": "ratings",
        "upstream_cluster": "ratings",
        "upstream_host": "127.0.0.1:9090",
        "tries": 1,
        "retry_reasons": [],
        "bytes_received": 0,
        "bytes_sent": 10,
        "x_forwarded_for": "10.0.0.7",
        "user_agent": "tests/1",
        "request_id": "req-1",
        "trace_id": None,
        "peer": None,
        "denied_by": None,
    }
    assert written.stats() == {"path": str(log), "written": 1, "dropped": 0, "pending": 0}


async def test_a_streamed_body_is_logged_when_it_ends(
    tmp_path: Path, make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{ENDPOINT}/big").respond(200, content=b"x" * 100_000)
    log = tmp_path / "access.log"
    mesh = make_mesh(config(log))
    async with caller(mesh) as client:
        response = await client.open_stream("GET", "http://ratings/big")
        assert observer(mesh).stats()["written"] + observer(mesh).stats()["pending"] == 0  # not before the body ends
        assert len(await client.read_response(response)) == 100_000
        await client.close_response(response)
    mesh.close()
    [line] = lines(log)
    assert (line["status"], line["bytes_sent"]) == (200, 100_000)


# (cluster settings, route settings, what the upstream does per call) → (status, flags, error, tries)
FAILURES = [
    pytest.param({}, {}, [httpx.ConnectError("refused")], (503, "UF", "upstream_connect_failure", 1), id="connect"),
    pytest.param(
        {},
        {"retry": {"attempts": 2, "retry_on": ["connect-failure"], "backoff": FAST_BACKOFF}},
        [httpx.ConnectError("refused")] * 2,
        (503, "UF,URX", "upstream_connect_failure", 2),
        id="connect-retries-exhausted",
    ),
    pytest.param({}, {}, [httpx.ReadTimeout("slow")], (504, "UT", "timeout", 1), id="timeout"),
    pytest.param({}, {}, [httpx.ReadError("reset")], (502, "UR", "upstream_reset", 1), id="reset"),
    pytest.param(
        {},
        {"retry": {"attempts": 3, "retry_on": ["5xx"], "backoff": FAST_BACKOFF}},
        [httpx.Response(503)] * 3,
        (503, "URX", None, 3),
        id="503-retries-exhausted",
    ),
    pytest.param(
        {},
        {"retry": {"attempts": 3, "retry_on": ["5xx"], "backoff": FAST_BACKOFF}},
        [httpx.Response(503), httpx.Response(200)],
        (200, "-", None, 2),
        id="retried-then-ok",
    ),
    pytest.param({}, {}, [httpx.Response(503)], (503, "-", None, 1), id="upstream-503-no-retry"),
]


@pytest.mark.parametrize(("cluster", "route", "effects", "expected"), FAILURES)
async def test_response_flags_of_failed_tries(
    tmp_path: Path,
    make_mesh: MakeMesh,
    caller: Caller,
    respx_mock: respx.MockRouter,
    cluster: dict[str, Any],
    route: dict[str, Any],
    effects: list[Any],
    expected: tuple[int, str, str | None, int],
) -> None:
    respx_mock.get(f"{ENDPOINT}/r").mock(side_effect=effects)
    log = tmp_path / "access.log"
    cfg = config(log, **cluster)
    cfg["routes"][0].update(route)
    mesh = make_mesh(cfg)
    async with caller(mesh) as client:
        with contextlib.suppress(meshlib.MeshError):
            await client.get("http://ratings/r")
    mesh.close()
    [line] = lines(log)
    assert (line["status"], line["response_flags"], line["error"], line["tries"]) == expected
    assert line["retry_reasons"] == [
        str(e.status_code) if isinstance(e, httpx.Response) else line["error"] for e in effects[: expected[3] - 1]
    ]


async def outcomes_of(client: Any, n: int, url: str = "http://ratings/r") -> None:
    for _ in range(n):
        with contextlib.suppress(meshlib.MeshError):
            await client.get(url)


async def test_an_open_breaker_is_uo_and_sends_no_try(
    tmp_path: Path, make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{ENDPOINT}/r").mock(side_effect=httpx.ConnectError("refused"))
    log = tmp_path / "access.log"
    mesh = make_mesh(config(log, circuit_breaker={"failure_threshold": 1, "recovery_timeout": "1m"}))
    async with caller(mesh) as client:
        await outcomes_of(client, 2)
    mesh.close()
    first, second = lines(log)
    assert (first["response_flags"], first["tries"]) == ("UF", 1)
    assert (second["status"], second["response_flags"], second["error"], second["tries"]) == (
        503,
        "UO",
        "circuit_open",
        0,
    )
    assert second["upstream_cluster"] == "ratings"
    assert second["upstream_host"] is None


async def test_rate_limited_is_rl_and_no_healthy_upstream_is_uh(
    tmp_path: Path, make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{ENDPOINT}/r").respond(200)
    log = tmp_path / "access.log"
    mesh = make_mesh(config(log, rate_limit={"rate": "1/minute"}))
    async with caller(mesh) as client:
        await outcomes_of(client, 2)
    respx_mock.get(f"{ENDPOINT}/down").respond(500)
    ejecting = config(log, outlier_detection={"consecutive_5xx": 1, "max_ejection_percent": 100})
    mesh.reload(ejecting)
    async with caller(mesh) as client:
        await outcomes_of(client, 2, "http://ratings/down")
    mesh.close()
    ok, limited, five_hundred, no_upstream = lines(log)
    assert (ok["status"], ok["response_flags"]) == (200, "-")
    assert (limited["status"], limited["response_flags"], limited["error"]) == (429, "RL", "rate_limited")
    assert (five_hundred["status"], five_hundred["response_flags"]) == (500, "-")
    assert (no_upstream["status"], no_upstream["response_flags"], no_upstream["error"]) == (
        503,
        "UH",
        "no_healthy_upstream",
    )


async def test_no_route_is_nr(tmp_path: Path, make_mesh: MakeMesh, caller: Caller) -> None:
    log = tmp_path / "access.log"
    mesh = make_mesh({**config(log), "outbound_policy": "registry_only"})
    async with caller(mesh) as client:
        with pytest.raises(meshlib.RouteNotFoundError):
            await client.get("http://elsewhere/r")
    mesh.close()
    [line] = lines(log)
    assert (line["status"], line["response_flags"], line["error"], line["route"]) == (
        404,
        "NR",
        "route_not_found",
        None,
    )
    assert line["authority"] == "elsewhere"


@pytest.mark.parametrize(
    ("fault", "flags"),
    [
        ({"abort": {"status": 503, "percent": 100}}, "FI"),
        ({"delay": {"duration": "1ms", "percent": 100}, "abort": {"status": 418, "percent": 100}}, "DI,FI"),
        ({"delay": {"duration": "1ms", "percent": 100}}, "DI"),
    ],
)
async def test_injected_faults_are_di_and_fi(
    tmp_path: Path,
    make_mesh: MakeMesh,
    caller: Caller,
    respx_mock: respx.MockRouter,
    fault: dict[str, Any],
    flags: str,
) -> None:
    respx_mock.get(f"{ENDPOINT}/r").respond(200)
    log = tmp_path / "access.log"
    cfg = config(log)
    cfg["routes"][0]["fault"] = fault
    mesh = make_mesh(cfg)
    async with caller(mesh) as client:
        response = await client.get("http://ratings/r")
    mesh.close()
    [line] = lines(log)
    assert (line["status"], line["response_flags"]) == (response.status_code, flags)
    assert line["tries"] == (0 if "FI" in flags else 1)


def test_the_flag_table_covers_every_mesh_error() -> None:
    from meshlib._wire import _CLASSES

    assert set(_CLASSES) <= set(access_log.RESPONSE_FLAGS)
    assert response_flags(None) == "-"
    assert response_flags("forbidden") == "RBAC"
    # Envoy's order, whatever order they are found in.
    tries = (("upstream_connect_failure", None, None), ("upstream_connect_failure", None, "upstream_connect_failure"))
    assert response_flags("upstream_connect_failure", tries, extra=("FI",)) == "UF,FI,URX"
    # A hedge's second try was not made because the first failed: no URX.
    assert response_flags(None, ((None, 503, None), (None, 503, "hedge"))) == "-"


def test_stdout_is_the_default_target(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    respx_mock.get(f"{ENDPOINT}/r").respond(204)
    mesh = make_mesh({**config("-"), "access_log": {}})
    with mesh.client() as client:
        client.get("http://ratings/r")
        client.get("http://ratings/r")
    mesh.close()
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["status"] for line in out] == [204, 204]


def test_a_file_is_appended_to(tmp_path: Path, make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    respx_mock.get(f"{ENDPOINT}/r").respond(200)
    log = tmp_path / "access.log"
    log.write_text('{"earlier": true}\n')
    for _ in range(2):
        mesh = make_mesh(config(log))
        with mesh.client() as client:
            client.get("http://ratings/r")
        mesh.close()
    assert [line.get("status") for line in lines(log)] == [None, 200, 200]


def test_a_reload_to_another_file_drains_the_old_one(
    tmp_path: Path, make_mesh: MakeMesh, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{ENDPOINT}/r").respond(200)
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    mesh = make_mesh(config(first))
    with mesh.client() as client:
        client.get("http://ratings/r")
        mesh.reload(config(second))
        assert len(lines(first)) == 1  # the replaced log was closed, so drained, by the reload
        client.get("http://ratings/r")
        client.get("http://ratings/r")
    mesh.close()
    assert len(lines(second)) == 2


@pytest.mark.parametrize("where", ["missing-dir", "directory"])
def test_a_file_that_cannot_be_opened_is_a_config_error(tmp_path: Path, make_mesh: MakeMesh, where: str) -> None:
    path = tmp_path / "nowhere" / "access.log" if where == "missing-dir" else tmp_path
    with pytest.raises(meshlib.ConfigError) as caught:
        make_mesh(config(path))
    [(field, message)] = caught.value.errors
    assert field == "access_log.path"
    assert str(path) in message
    assert "cannot open" in message


def test_a_reload_to_a_bad_file_is_refused_and_the_old_log_goes_on(
    tmp_path: Path, make_mesh: MakeMesh, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{ENDPOINT}/r").respond(200)
    log = tmp_path / "access.log"
    mesh = make_mesh(config(log))
    with pytest.raises(meshlib.ConfigError, match=r"access_log\.path"):
        mesh.reload(config(tmp_path / "nowhere" / "x.log"))
    with mesh.client() as client:
        client.get("http://ratings/r")
    mesh.close()
    assert len(lines(log)) == 1


def test_a_blocked_writer_never_holds_a_request_up_and_counts_what_it_drops(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Standard output is a pipe nobody reads: once it is full the writer blocks, the queue fills, lines drop."""
    respx_mock.get(f"{ENDPOINT}/r").respond(200)
    read_end, write_end = os.pipe()
    stdout = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(access_log, "MAX_PENDING", 20)
    monkeypatch.setattr(access_log, "CLOSE_TIMEOUT", 0.2)
    mesh = make_mesh(config("-"))
    log = observer(mesh)
    total, slowest = 400, 0.0
    try:
        with mesh.client() as client:
            for _ in range(total):
                started = time.perf_counter()
                assert client.get("http://ratings/r").status_code == 200
                slowest = max(slowest, time.perf_counter() - started)
        stats = log.stats()
        assert stats["dropped"] > 0  # a 64 KiB pipe holds far fewer than 400 lines, the queue 20 more
        assert stats["pending"] <= 20
        assert slowest < 0.5, f"a request waited {slowest:.3f}s for the log"
        started = time.perf_counter()
        mesh.close()  # the writer is stuck in a write: close gives up after CLOSE_TIMEOUT
        assert time.perf_counter() - started < 2.0
    finally:
        os.close(read_end)  # the stuck write fails (EPIPE): the writer counts that batch dropped and ends
        log._thread.join(5)
        stdout.close()
    assert not log._thread.is_alive()
    stats = log.stats()
    assert stats["written"] + stats["dropped"] == total
    assert stats["pending"] == 0


def test_observing_costs_the_request_path_one_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """finished() never writes: with the writer thread held, lines wait in the queue until it runs."""
    log = access_log.build(AccessLogConfig(path=str(tmp_path / "a.log")), None, None)  # type: ignore[arg-type]
    gate = threading.Event()
    real_write = log._write
    monkeypatch.setattr(log, "_write", lambda batch: (gate.wait(5), real_write(batch)))
    from meshlib._observe.exchange import Exchange

    for i in range(5):
        exchange = Exchange("inbound", "asgi", "GET", "http", "svc", f"/{i}", status=200)
        exchange.end = exchange.start
        log.finished(exchange)
    assert log.stats()["written"] == 0
    gate.set()
    log.close()
    assert [json.loads(line)["path"] for line in (tmp_path / "a.log").read_text().splitlines()] == [
        f"/{i}" for i in range(5)
    ]
