"""``meshlib proxy`` as a process: start-up lines and failures, admin, hot reload (also under load), drain, workers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import meshlib
from tests.conftest import RunningServer, echo_app, start_server
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


def test_thousands_of_requests_across_dozens_of_reloads_none_fail(tmp_path: Path, echo: dict[str, str]) -> None:
    """Hot reload under load: 2,000 requests from 8 threads while the config flips 30 times."""
    with running(tmp_path, _to(echo["v1"]), "--watch-interval", "0") as proxy:
        stop = threading.Event()
        outcomes: list[int | str] = []
        lock = threading.Lock()

        def load(n: int) -> None:
            with proxy.client(timeout=10) as client:
                for _ in range(n):
                    try:
                        status: int | str = client.get("http://reviews/x").status_code
                    except httpx.HTTPError as exc:
                        status = repr(exc)
                    with lock:
                        outcomes.append(status)

        def reloads() -> None:
            for i in range(30):
                if stop.is_set():
                    return
                proxy.write_config(_to(echo["v2" if i % 2 == 0 else "v1"]))
                proxy.signal(signal.SIGHUP)
                time.sleep(0.03)

        with ThreadPoolExecutor(9) as pool:
            flipper = pool.submit(reloads)
            loaders = [pool.submit(load, 250) for _ in range(8)]
            for future in loaders:
                future.result(timeout=60)
            stop.set()
            flipper.result(timeout=10)
        assert len(outcomes) == 2000
        assert set(outcomes) == {200}, [o for o in outcomes if o != 200][:5]
        versions = [line for line in proxy.lines if "config version" in line]
        assert len(versions) >= 12, proxy.log  # dozens of reloads happened (some SIGHUPs coalesce)


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


def test_an_upstreams_own_error_header_never_reaches_the_client(tmp_path: Path) -> None:
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
            mesh = meshlib.Mesh.from_dict(_to(upstream.url))
            with mesh, mesh.client(mode="sidecar", sidecar=proxy.proxy_url) as client:
                response = client.get("http://reviews/x")
            assert response.status_code == 429
            assert "x-meshlib-error" not in response.headers
    finally:
        upstream.stop()
