"""The live admin page in a real headless Chromium: after a scripted failure it shows what the mesh's state says.

The page is opened first and polls every 200 ms; then connections are refused, an endpoint is ejected and a
breaker opens while traffic flows, and the page must come to show each of them (and the routes' weights, and
rates from the counters' deltas) without being reloaded. Debian's ``chromium`` must be installed (.ci/run does).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import meshlib
from tests.admin_ui.browser import INSTALL_HINT, Chromium, chromium_path, wait_until
from tests.conftest import MakeMesh, start_server
from tests.sidecar import proxy_process
from tests.sidecar.proxy_process import free_port

FAST = {"base": "1ms", "max": "2ms"}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    binary = chromium_path()
    if binary is None:
        pytest.fail(INSTALL_HINT)
    chromium = Chromium(binary, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield chromium
    finally:
        chromium.close()


def mesh_config(upstreams: dict[str, str], refused: str) -> dict[str, Any]:
    """reviews: a 90/10 split of v1 (one good endpoint, one refusing) and v2; ratings refuses, behind a breaker."""
    return {
        "clusters": {
            "reviews-v1": {
                "endpoints": [upstreams["reviews-v1-a"], refused],
                "retry": {"attempts": 2, "retry_on": ["connect-failure"], "backoff": FAST},
                "outlier_detection": {"consecutive_5xx": 1, "max_ejection_percent": 50, "base_ejection_time": "1m"},
            },
            "reviews-v2": {"endpoints": [upstreams["reviews-v2"]]},
            "ratings": {
                "endpoints": [refused],
                "circuit_breaker": {"failure_threshold": 2, "recovery_timeout": "1m"},
            },
        },
        "routes": [
            {
                "name": "reviews",
                "match": {"host": "reviews"},
                "split": [{"cluster": "reviews-v1", "weight": 90}, {"cluster": "reviews-v2", "weight": 10}],
            }
        ],
    }


class Traffic:
    """Requests in a background thread, every 20 ms, until stopped (at most 20 s): what makes the rates move."""

    def __init__(self, send: Callable[[str], None], urls: list[str]) -> None:
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(send, urls), daemon=True)
        self._thread.start()

    def _run(self, send: Callable[[str], None], urls: list[str]) -> None:
        deadline = time.monotonic() + 20
        while not self._stop.is_set() and time.monotonic() < deadline:
            for url in urls:
                with contextlib.suppress(httpx.HTTPError):  # MeshErrors in process; the sidecar answers them
                    send(url)
                self.sent += 1
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def check_failure_shown(page: dict[str, Any], refused: str, good: str) -> bool:
    """Whether the page shows the scripted failure (see the module docstring), every part of it."""
    clusters = page["clusters"]
    if page["status"] != "live" or set(clusters) != {"reviews-v1", "reviews-v2", "ratings"}:
        return False
    v1 = clusters["reviews-v1"]["endpoints"]
    codes = {(e["code"], e["cluster"], e["endpoint"]) for e in page["errors"]}
    return (
        v1[refused]["ejected"] == "true"
        and "ejected" in v1[refused]["text"]
        and v1[good]["ejected"] == "false"
        and clusters["ratings"]["breaker"] == "open"
        and clusters["ratings"]["breaker_text"] == "breaker open"
        and clusters["reviews-v1"]["breaker"] == "none"
        and ("upstream_connect_failure", "reviews-v1", refused) in codes
        and ("upstream_connect_failure", "ratings", refused) in codes
        and ("circuit_open", "ratings", "") in codes
        # Rates from the deltas between two polls: v2 answers every request, ratings refuses every one.
        and float(clusters["reviews-v2"]["rps"] or 0) > 0
        and float(clusters["reviews-v2"]["error_rate"] or 1) == 0
        and float(clusters["ratings"]["error_rate"] or 0) == 1
    )


def check_healthy(page: dict[str, Any], refused: str) -> bool:
    clusters = page["clusters"]
    return (
        page["status"] == "live"
        and set(clusters) == {"reviews-v1", "reviews-v2", "ratings"}
        and clusters["reviews-v1"]["endpoints"][refused]["ejected"] == "false"
        and clusters["ratings"]["breaker"] == "closed"
        and page["errors"] == []
    )


def check_routes(page: dict[str, Any]) -> None:
    assert page["routes"]["reviews"] == [
        {"cluster": "reviews-v1", "weight": 90, "text": "reviews-v1 90%"},
        {"cluster": "reviews-v2", "weight": 10, "text": "reviews-v2 10%"},
    ]
    assert page["routes"]["cluster:ratings"] == [{"cluster": "ratings", "weight": 1, "text": "ratings 100%"}]


def test_the_sidecars_page_shows_a_failure_as_it_happens(
    browser: Chromium, tmp_path: Path, upstreams: dict[str, str]
) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    good = upstreams["reviews-v1-a"]
    with proxy_process.running(tmp_path, mesh_config(upstreams, refused)) as proxy:
        browser.open(proxy.admin_url + "/?interval=200")
        before = wait_until(browser, lambda page: check_healthy(page, refused))
        check_routes(before)
        assert before["workers"] == "1 process"
        with proxy.client(timeout=5) as client:
            # Round robin sends one of two requests to the refusing endpoint: it is ejected (and the retry
            # lands on the good one); two refused tries open ratings' breaker.
            for _ in range(2):
                assert client.get("http://reviews-v1/x").status_code == 200
            for _ in range(2):
                assert client.get("http://ratings/x").status_code == 503

            def send(url: str) -> None:
                client.get(url)

            traffic = Traffic(send, ["http://reviews-v2/x", "http://ratings/x"])
            try:
                after = wait_until(browser, lambda page: check_failure_shown(page, refused, good))
            finally:
                traffic.stop()
        check_routes(after)
    assert browser.console_errors() == []


def test_the_in_process_page_mounted_in_an_app(
    browser: Chromium, make_mesh: MakeMesh, upstreams: dict[str, str]
) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    good = upstreams["reviews-v1-a"]
    mesh = make_mesh(mesh_config(upstreams, refused))
    app: Any = Starlette(routes=[Mount("/mesh", app=mesh.admin_asgi_app())])
    server = start_server(app, "admin-app")
    try:
        browser.open(server.url + "/mesh/?interval=200")
        check_routes(wait_until(browser, lambda page: check_healthy(page, refused)))
        with mesh.client(timeout=5) as client:
            for _ in range(2):
                assert client.get("http://reviews-v1/x").status_code == 200
            for _ in range(2):
                with pytest.raises(meshlib.UpstreamConnectError):
                    client.get("http://ratings/x")

            def send(url: str) -> None:
                client.get(url)

            traffic = Traffic(send, ["http://reviews-v2/x", "http://ratings/x"])
            try:
                wait_until(browser, lambda page: check_failure_shown(page, refused, good))
            finally:
                traffic.stop()
    finally:
        server.stop()
    assert browser.console_errors() == []


def test_with_workers_the_page_shows_every_worker(browser: Chromium, tmp_path: Path, upstreams: dict[str, str]) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    config = {"clusters": {"ratings": {"endpoints": [refused]}, "reviews": {"endpoints": [upstreams["reviews-v2"]]}}}
    proxy = proxy_process.start(tmp_path, config, "--workers", "2")
    try:
        proxy.wait_ready()  # only once both workers listen
        n = 24
        for _ in range(n):  # a connection each: the kernel spreads them over both workers
            with proxy.client(timeout=5) as client:
                assert client.get("http://ratings/x").status_code == 503
                assert client.get("http://reviews/x").status_code == 200
        with httpx.Client(trust_env=False, timeout=10) as admin:
            state = admin.get(proxy.admin_url + "/ui/state").json()
        assert state["workers"] == 2
        ratings, reviews = state["clusters"]["ratings"], state["clusters"]["reviews"]
        assert (ratings["requests"], ratings["errors"], reviews["requests"], reviews["errors"]) == (n, n, n, 0)
        by_worker = {e["worker"] for e in state["recent_errors"]}
        assert by_worker == {0, 1}, by_worker  # each worker's own errors (all 24 on one: a 1 in 2^23 chance)
        assert len(state["recent_errors"]) == n
        browser.open(proxy.admin_url + "/?interval=200")
        page = wait_until(browser, lambda page: page["status"] == "live" and len(page["errors"]) == n)
        assert page["workers"] == "2 workers"
        assert page["clusters"]["ratings"]["endpoints"][refused]["text"].endswith(f"{n}")  # requests, all workers
    finally:
        proxy.stop()
