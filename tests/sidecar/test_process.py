"""``meshlib proxy`` as a process: start-up lines and failures, admin, hot reload (also under load), drain, workers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml

from tests.conftest import MakeMesh, RunningServer, echo_app, start_server
from tests.sidecar import proxy_process
from tests.sidecar.proxy_process import free_port, running


@pytest.fixture(scope="module")
def echo() -> Iterator[dict[str, str]]:
    servers = [start_server(echo_app(name), name) for name in ("v1", "v2")]
    try:
        yield {s.name: s.url for s in servers}
    finally:
        for server in servers:
            server.server.should_exit = True
        for server in servers:
            server.stop()


def _to(cluster_url: str) -> dict[str, Any]:
    return {"clusters": {"reviews": {"endpoints": [cluster_url]}}}


def test_ready_lines_and_a_request_through_the_outbound_listener(tmp_path: Path, echo: dict[str, str]) -> None:
    with running(tmp_path, _to(echo["v1"])) as proxy:
        outbound = proxy.wait_for_line("outbound listening on")
        assert outbound.endswith(f"outbound listening on 127.0.0.1:{proxy.outbound}")
        assert proxy.wait_for_line("admin listening on").endswith(f"127.0.0.1:{proxy.admin}")
        with proxy.client() as client:
            response = client.get("http://reviews/x")
        assert response.status_code == 200
        assert response.json()["name"] == "v1"


def test_invalid_config_exits_2_with_the_field_path(tmp_path: Path) -> None:
    proxy = proxy_process.start(tmp_path, {"clusters": {"reviews": {"endpoints": []}}})
    try:
        assert proxy.wait() == 2
        proxy.wait_for_line("clusters.reviews.endpoints")
    finally:
        proxy.stop()


def test_a_taken_port_exits_3_naming_the_listener(tmp_path: Path, echo: dict[str, str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proxy = proxy_process.start(tmp_path, _to(echo["v1"]), outbound=port)
        try:
            assert proxy.wait() == 3
            line = proxy.wait_for_line("address already in use")
            assert f"127.0.0.1:{port}" in line
            assert "outbound" in line
        finally:
            proxy.stop()


def test_sighup_reloads_and_an_invalid_config_keeps_the_old_one(tmp_path: Path, echo: dict[str, str]) -> None:
    with running(tmp_path, _to(echo["v1"]), "--watch-interval", "0") as proxy, proxy.client() as client:
        proxy.write_config(_to(echo["v2"]))
        proxy.signal(signal.SIGHUP)
        proxy.wait_for_line("config version 2")
        assert client.get("http://reviews/x").json()["name"] == "v2"

        proxy.write_config({"clusters": {"reviews": {"endpoints": ["not a url"]}}})
        proxy.signal(signal.SIGHUP)
        line = proxy.wait_for_line("reload refused")
        assert "still serving config version 2" in line
        assert "clusters.reviews.endpoints[0]" in line
        assert client.get("http://reviews/x").json()["name"] == "v2"


def test_a_changed_file_and_post_reload_reload(tmp_path: Path, echo: dict[str, str]) -> None:
    with running(tmp_path, _to(echo["v1"]), "--watch-interval", "0.1") as proxy, proxy.client() as client:
        proxy.write_config(_to(echo["v2"]))
        proxy.wait_for_line("config version 2")
        assert client.get("http://reviews/x").json()["name"] == "v2"

        proxy.write_config(_to(echo["v1"]))
        with httpx.Client(trust_env=False) as admin:
            response = admin.post(proxy.admin_url + "/reload")
        assert response.status_code == 200
        assert client.get("http://reviews/x").json()["name"] == "v1"


def _slow_app(seconds: float) -> Any:
    inner = echo_app("slow")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await anyio.sleep(seconds)
        await inner(scope, receive, send)

    return app


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    slow: RunningServer = start_server(_slow_app(0.5), "slow")
    try:
        with running(tmp_path, _to(slow.url)) as proxy:
            result: list[int] = []

            def call() -> None:
                with proxy.client(timeout=10) as client:
                    result.append(client.get("http://reviews/x").status_code)

            caller = threading.Thread(target=call)
            caller.start()
            time.sleep(0.2)  # the request is in flight at the slow upstream
            proxy.signal(signal.SIGTERM)
            proxy.wait_for_line("draining")
            assert proxy.wait() == 0
            caller.join(timeout=10)
            assert result == [200]
            proxy.wait_for_line("drained")
            with pytest.raises(httpx.ConnectError), proxy.client() as client:
                client.get("http://reviews/x")
    finally:
        slow.stop()


def test_sigterm_drains_and_exits_when_nothing_reads_stderr_any_more(tmp_path: Path, echo: dict[str, str]) -> None:
    """The reader of the proxy's stderr went away (a log shipper that died): its lines are lost, not its exit."""
    outbound, admin = free_port(), free_port()
    path = tmp_path / "mesh.yaml"
    proxy_process.write_config(path, _to(echo["v1"]), outbound, admin)
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshlib", "proxy", "--config", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=write_end,
        env=proxy_process.proxy_env(),
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as stderr:
            lines: list[bytes] = []
            while not any(b"admin listening on" in line for line in lines):
                line = stderr.readline()  # b"" at EOF: the proxy exited
                assert line, b"".join(lines)
                lines.append(line)
        # Nothing reads the pipe now: the proxy's next line on stderr meets a broken pipe.
        with httpx.Client(proxy=f"http://127.0.0.1:{outbound}", trust_env=False, timeout=10) as client:
            assert client.get("http://reviews/x").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_thousands_of_requests_across_dozens_of_reloads_none_fail(tmp_path: Path, echo: dict[str, str]) -> None:
    """Hot reload under load: 8 threads send requests while the config flips 12 times, each flip waiting for its
    reload (a reload's validation runs in a child process: tenths of a second, not milliseconds)."""
    flips = 12
    with running(tmp_path, _to(echo["v1"]), "--watch-interval", "0") as proxy:
        stop = threading.Event()
        outcomes: list[int | str] = []
        lock = threading.Lock()

        def load() -> None:
            with proxy.client(timeout=10) as client:
                for _ in range(5_000):  # bounded: the flips end it long before
                    if stop.is_set():
                        return
                    try:
                        status: int | str = client.get("http://reviews/x").status_code
                    except httpx.HTTPError as exc:
                        status = repr(exc)
                    with lock:
                        outcomes.append(status)

        def reloads() -> None:
            try:
                for i in range(flips):
                    proxy.write_config(_to(echo["v2" if i % 2 == 0 else "v1"]))
                    proxy.signal(signal.SIGHUP)
                    proxy.wait_for_line(f"config version {i + 2}", timeout=20)
            finally:
                stop.set()

        with ThreadPoolExecutor(9) as pool:
            loaders = [pool.submit(load) for _ in range(8)]
            pool.submit(reloads).result(timeout=300)
            for future in loaders:
                future.result(timeout=60)
        assert len(outcomes) >= 400, len(outcomes)
        assert set(outcomes) == {200}, [o for o in outcomes if o != 200][:5]
        versions = [line for line in proxy.lines if "config version" in line]
        assert len(versions) == flips, proxy.log


def test_workers_share_the_port_and_admin_covers_both(tmp_path: Path, echo: dict[str, str]) -> None:
    port = free_port()
    # The flag overrides the config's address (which names another free port).
    proxy = proxy_process.start(tmp_path, _to(echo["v1"]), "--workers", "2", "--outbound", f"127.0.0.1:{port}")
    proxy.outbound = port
    try:
        proxy.wait_ready()  # only once both workers listen
        proxy.wait_for_line("(worker 1)")
        n = 40
        for _ in range(n):  # a connection each: the kernel spreads them over both workers
            with proxy.client() as client:
                assert client.get("http://reviews/x").status_code == 200
        with httpx.Client(trust_env=False, timeout=10) as admin:
            stats = admin.get(proxy.admin_url + "/stats").json()
            clusters = admin.get(proxy.admin_url + "/clusters").json()
        [url] = clusters["reviews"]["endpoints"]
        assert clusters["reviews"]["endpoints"][url]["requests"] == n  # both workers' requests
        per_worker = [w["clusters"]["reviews"]["endpoints"][url]["requests"] for w in stats["workers"]]
        assert [w["worker"] for w in stats["workers"]] == [0, 1]
        assert sum(per_worker) == n
        assert min(per_worker) > 0, per_worker  # each got some (all 40 on one worker: a 1 in 2^39 chance)
        assert stats["clusters"]["reviews"]["endpoints"][url]["requests"] == n
        assert "workers_missing" not in stats
        proxy.signal(signal.SIGTERM)
        assert proxy.wait() == 0
    finally:
        proxy.stop()


@contextlib.contextmanager
def _worker_zero(tmp_path: Path, echo_url: str) -> Iterator[tuple[proxy_process.ProxyProcess, int]]:
    """Worker 0 of two as the supervisor starts it, with the write end of its peers' "listening" pipe.

    A worker writes "INDEX PORT" (its private admin port) there once it listens.
    """
    read_end, write_end = os.pipe()
    args = ("--workers", "2", "--worker-index", "0", "--ready-fd", str(read_end))
    try:
        proxy = proxy_process.start(tmp_path, _to(echo_url), *args, pass_fds=(read_end,))
    finally:
        os.close(read_end)
    try:
        proxy.wait_for_line("admin listening")
        yield proxy, write_end
    finally:
        proxy.stop()
        with contextlib.suppress(OSError):
            os.close(write_end)


def _ready_status(proxy: proxy_process.ProxyProcess) -> int:
    return httpx.get(proxy.admin_url + "/ready", trust_env=False, timeout=5).status_code


def test_with_workers_ready_waits_for_every_worker(tmp_path: Path, echo: dict[str, str]) -> None:
    with _worker_zero(tmp_path, echo["v1"]) as (proxy, write_end):
        assert _ready_status(proxy) == 503  # worker 0 listens; worker 1 has not said so yet
        os.write(write_end, b"1 ")
        time.sleep(0.1)
        assert _ready_status(proxy) == 503  # half a line says nothing yet
        os.write(write_end, f"{free_port()}\n".encode())  # a port where nothing answers: worker 1 "went away"
        proxy.wait_ready(timeout=5)
        with httpx.Client(trust_env=False, timeout=10) as client:
            stats = client.get(proxy.admin_url + "/stats").json()
            assert stats["workers_missing"] == [1]  # admin still answers, with worker 0's part
            assert [w["worker"] for w in stats["workers"]] == [0]
            clusters = client.get(proxy.admin_url + "/clusters")
            assert clusters.headers["x-meshlib-workers-missing"] == "1"
            assert "reviews" in clusters.json()


def test_with_workers_a_worker_gone_before_listening_keeps_ready_at_503(tmp_path: Path, echo: dict[str, str]) -> None:
    with _worker_zero(tmp_path, echo["v1"]) as (proxy, write_end):
        os.close(write_end)  # EOF without the byte: the peer died (the supervisor then stops everyone)
        time.sleep(0.2)
        assert _ready_status(proxy) == 503
        with proxy.client(timeout=5) as client:  # worker 0 still serves what reaches it
            assert client.get("http://reviews/x").status_code == 200


def test_an_upstreams_own_error_header_never_reaches_the_client(tmp_path: Path, make_mesh: MakeMesh) -> None:
    """Only the sidecar names mesh errors: an upstream's 429 with x-meshlib-error stays the upstream's 429."""

    async def impostor(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"x-meshlib-error", b"rate_limited"), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    upstream = start_server(impostor, "impostor")
    try:
        with running(tmp_path, _to(upstream.url)) as proxy:
            mesh = make_mesh(_to(upstream.url))
            with mesh.client(mode="sidecar", sidecar=proxy.proxy_url) as client:
                response = client.get("http://reviews/x")
            assert response.status_code == 429
            assert "x-meshlib-error" not in response.headers
    finally:
        upstream.stop()


# Listener addresses: flags, environment, file and reload all go through the config's validation


def _nothing_listens(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_a_non_loopback_admin_flag_exits_2_naming_the_flag_and_nothing_listens(
    tmp_path: Path, echo: dict[str, str]
) -> None:
    proxy = proxy_process.start(tmp_path, _to(echo["v1"]), "--admin", "0.0.0.0:0")
    try:
        assert proxy.wait() == 2
        line = proxy.wait_for_line("--admin")
        assert line.endswith("--admin: admin listens on loopback only (127.0.0.0/8, ::1 or localhost), not '0.0.0.0'")
        assert _nothing_listens(proxy.outbound)
    finally:
        proxy.stop()


def test_a_listener_from_the_environment_is_validated_and_named(
    tmp_path: Path, echo: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHLIB_SIDECAR_ADMIN_LISTEN", "[::]:0")
    proxy = proxy_process.start(tmp_path, _to(echo["v1"]))
    try:
        assert proxy.wait() == 2
        assert "loopback only" in proxy.wait_for_line("MESHLIB_SIDECAR_ADMIN_LISTEN: ")
        assert _nothing_listens(proxy.outbound)
    finally:
        proxy.stop()


def test_a_listener_from_the_environment_is_used_and_a_flag_wins(
    tmp_path: Path, echo: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from_env, from_flag = free_port(), free_port()
    monkeypatch.setenv("MESHLIB_SIDECAR_OUTBOUND_LISTEN", f"127.0.0.1:{from_env}")
    proxy = proxy_process.start(tmp_path, _to(echo["v1"]))
    try:
        assert proxy.wait_for_line("outbound listening on").endswith(f"127.0.0.1:{from_env}")
    finally:
        proxy.stop()
    proxy = proxy_process.start(tmp_path / "flag", _to(echo["v1"]), "--outbound", f"127.0.0.1:{from_flag}")
    try:
        assert proxy.wait_for_line("outbound listening on").endswith(f"127.0.0.1:{from_flag}")
    finally:
        proxy.stop()


def test_a_non_loopback_admin_in_the_file_exits_2_and_on_reload_is_refused(
    tmp_path: Path, echo: dict[str, str]
) -> None:
    exposed = {**_to(echo["v1"]), "sidecar": {"admin": {"listen": "0.0.0.0:0"}}}
    proxy = proxy_process.start(tmp_path, exposed)
    try:
        assert proxy.wait() == 2
        assert "loopback only" in proxy.wait_for_line("sidecar.admin.listen")
    finally:
        proxy.stop()
    with running(tmp_path / "reload", _to(echo["v1"]), "--watch-interval", "0") as proxy:
        proxy.write_config({**_to(echo["v2"]), "sidecar": {"admin": {"listen": "0.0.0.0:15000"}}})
        proxy.signal(signal.SIGHUP)
        assert "sidecar.admin.listen" in proxy.wait_for_line("reload refused")


# Reloads from the file: settled, validated, counted; logging


def _admin_stats(proxy: proxy_process.ProxyProcess) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(proxy.admin_url + "/stats", trust_env=False, timeout=5).json()
    return stats


def test_a_file_truncated_and_left_empty_is_refused_and_the_old_config_serves(
    tmp_path: Path, echo: dict[str, str]
) -> None:
    with running(tmp_path, _to(echo["v1"]), "--watch-interval", "0.05") as proxy, proxy.client() as client:
        proxy.config_path.write_text("")
        line = proxy.wait_for_line("reload refused")
        assert "still serving config version 1" in line
        assert client.get("http://reviews/x").json()["name"] == "v1"
        reloads = _admin_stats(proxy)["reloads"]
        assert (reloads["accepted"], reloads["refused"]) == (0, 1)
        assert str(proxy.config_path) in reloads["last_error"]


def test_saves_in_place_while_requests_run_never_blank_the_mesh(tmp_path: Path, echo: dict[str, str]) -> None:
    """An editor's save: truncate, then write a little later; the watcher catches the empty file in between."""
    with running(tmp_path, _to(echo["v1"]), "--watch-interval", "0.02") as proxy:
        statuses: list[int | str] = []
        stop = threading.Event()

        def load() -> None:
            with proxy.client(timeout=5) as client:
                while not stop.is_set():
                    try:
                        statuses.append(client.get("http://reviews/x").status_code)
                    except httpx.HTTPError as exc:
                        statuses.append(repr(exc))

        loaders = [threading.Thread(target=load) for _ in range(4)]
        for t in loaders:
            t.start()
        try:
            for version, name in enumerate(("v2", "v1", "v2"), start=2):
                with proxy.config_path.open("w") as f:
                    f.flush()
                    time.sleep(0.08)  # a few polls see the empty file
                    f.write(yaml.safe_dump({**_to(echo[name]), "sidecar": _sidecar_of(proxy)}))
                proxy.wait_for_line(f"config version {version}")
        finally:
            stop.set()
            for t in loaders:
                t.join(timeout=10)
        assert "reload refused" not in proxy.log
        assert statuses
        assert set(statuses) == {200}, [s for s in statuses if s != 200][:5]
        assert _admin_stats(proxy)["reloads"] == {"accepted": 3, "refused": 0, "last_error": None}


def _sidecar_of(proxy: proxy_process.ProxyProcess) -> dict[str, Any]:
    return {
        "outbound": {"listen": f"127.0.0.1:{proxy.outbound}"},
        "admin": {"listen": f"127.0.0.1:{proxy.admin}"},
    }


def test_post_reload_waiting_out_an_empty_file_does_not_stall_the_proxy(tmp_path: Path, echo: dict[str, str]) -> None:
    with running(tmp_path, _to(echo["v1"]), "--watch-interval", "0") as proxy, proxy.client(timeout=5) as client:
        proxy.config_path.write_text("")
        answer: list[httpx.Response] = []
        poster = threading.Thread(
            target=lambda: answer.append(httpx.post(proxy.admin_url + "/reload", trust_env=False, timeout=10))
        )
        poster.start()
        try:
            while poster.is_alive():  # about a second: the reload reads the empty file again meanwhile
                started = time.monotonic()
                assert client.get("http://reviews/x").status_code == 200
                assert time.monotonic() - started < 0.5
        finally:
            poster.join(timeout=10)
        [response] = answer
        assert response.status_code == 400
        assert response.json()["reloaded"] is False


def test_log_level_filters_the_log_but_never_the_readiness_lines(tmp_path: Path, echo: dict[str, str]) -> None:
    with running(tmp_path, _to(echo["v1"]), "--watch-interval", "0", "--log-level", "WARNING") as proxy:
        proxy.wait_for_line("outbound listening on")
        proxy.write_config(_to(echo["v2"]))
        proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _admin_stats(proxy)["reloads"]["accepted"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        proxy.write_config({"clusters": {"reviews": {"endpoints": ["not a url"]}}})
        proxy.signal(signal.SIGHUP)
        assert proxy.wait_for_line("reload refused").startswith("meshlib proxy: WARNING: reload refused")
        assert "reloaded" not in proxy.log  # the INFO line of the accepted reload


def test_state_changes_are_logged_by_default(tmp_path: Path, free_port: int) -> None:
    config = {
        "clusters": {
            "reviews": {
                "endpoints": [f"http://127.0.0.1:{free_port}"],
                "circuit_breaker": {"failure_threshold": 2, "recovery_timeout": "1m"},
            }
        }
    }
    with running(tmp_path, config) as proxy, proxy.client(timeout=5) as client:
        statuses = [client.get("http://reviews/x").status_code for _ in range(4)]
        assert statuses == [503, 503, 503, 503]
        line = proxy.wait_for_line("circuit breaker opened")
        assert line.startswith("meshlib proxy: WARNING: cluster 'reviews': circuit breaker opened after 2 failures")
        assert proxy.log.count("circuit breaker opened") == 1


# The wedge (issue 9): a cluster dropped and added back while requests run


@contextlib.contextmanager
def _slow_dns_proxy(
    tmp_path: Path, config: dict[str, Any], *args: str, env: dict[str, str] | None = None
) -> Iterator[proxy_process.ProxyProcess]:
    """``meshlib proxy`` whose name lookups are slow and few at a time (tests/sidecar/slow_dns_proxy.py)."""
    outbound, admin = free_port(), free_port()
    path = tmp_path / "mesh.yaml"
    proxy_process.write_config(path, config, outbound, admin)
    command = [sys.executable, "-m", "tests.sidecar.slow_dns_proxy", "--config", str(path), *args]
    proc = subprocess.Popen(
        command,
        cwd=Path(__file__).parents[2],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    proxy = proxy_process.ProxyProcess(proc, path, outbound, admin)
    try:
        proxy.wait_ready()
        yield proxy
    finally:
        proxy.stop()


def test_a_cluster_dropped_and_added_back_three_times_under_load_then_every_request_answers(
    tmp_path: Path, echo: dict[str, str]
) -> None:
    """While ``reviews`` is out of the config its requests pass through, each looking the name ``reviews`` up
    (half a second, then no such name); the lookups of ``localhost`` that the cluster needs once it is back
    must not wait behind them. Before the fix every request after the third flip timed out. The upstream closes
    each connection after its response, so that every request needs a new connection, and a lookup."""

    async def closing(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = [(b"connection", b"close"), (b"content-length", b"2")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"ok"})

    upstream = start_server(closing, "closing")
    try:
        _drop_and_add_back(tmp_path, httpx.URL(upstream.url).port, echo["v2"])
    finally:
        upstream.stop()


def _drop_and_add_back(tmp_path: Path, port: int | None, other_url: str) -> None:
    reviews = {
        "clusters": {
            "reviews": {
                "endpoints": [f"http://localhost:{port}"],
                "timeout": "1s",
                "retry": {"attempts": 3, "retry_on": ["5xx", "connect-failure"]},
            }
        }
    }
    other = {"clusters": {"ratings": {"endpoints": [other_url]}}}
    with _slow_dns_proxy(tmp_path, reviews, "--watch-interval", "0") as proxy:
        stop = threading.Event()
        ready = threading.Barrier(17)

        def load() -> None:
            with proxy.client(timeout=2) as client:
                ready.wait(timeout=10)
                while not stop.is_set():
                    with contextlib.suppress(httpx.HTTPError):
                        client.get("http://reviews/x")

        with ThreadPoolExecutor(16) as pool:
            loaders = [pool.submit(load) for _ in range(16)]
            try:
                ready.wait(timeout=10)
                for cycle in range(3):
                    for version, config in ((2 * cycle + 2, other), (2 * cycle + 3, reviews)):
                        proxy.write_config(config)
                        proxy.signal(signal.SIGHUP)
                        proxy.wait_for_line(f"config version {version}")
                        time.sleep(0.2)  # requests run against this config
                # Still under load: the proxy must answer, and at once.
                with proxy.client(timeout=5) as client:
                    statuses = [client.get("http://reviews/x").status_code for _ in range(10)]
            finally:
                stop.set()
                for future in loaders:
                    future.result(timeout=30)
        assert statuses == [200] * 10


def test_a_reload_is_not_held_up_by_lookups_queued_in_the_loops_executor(tmp_path: Path, echo: dict[str, str]) -> None:
    """Under asyncio, name lookups run in the loop's default executor. Reloads ran there too, so a backlog of
    slow lookups (requests to hosts the config lacks, passed through) held up the reload that would route them."""
    without_reviews = {"clusters": {"ratings": {"endpoints": [echo["v2"]]}}}
    env = {"SLOW_LOOKUP_POOL": "default", "SLOW_LOOKUP": "1"}
    with _slow_dns_proxy(tmp_path, without_reviews, "--watch-interval", "0.05", env=env) as proxy:
        stop = threading.Event()
        ready = threading.Barrier(17)

        def load(name: str) -> None:
            with proxy.client(timeout=3) as client:
                ready.wait(timeout=10)
                while not stop.is_set():
                    with contextlib.suppress(httpx.HTTPError):
                        client.get(f"http://{name}/x")

        with ThreadPoolExecutor(16) as pool:
            loaders = [pool.submit(load, f"gone-{i}") for i in range(16)]
            try:
                ready.wait(timeout=10)
                time.sleep(0.3)  # 16 lookups of a second each (16 names) queue up for the executor's few threads
                proxy.write_config(_to(echo["v1"]))
                started = time.monotonic()
                proxy.wait_for_line("config version 2")
                assert time.monotonic() - started < 1.0
            finally:
                stop.set()
                for future in loaders:
                    future.result(timeout=30)
