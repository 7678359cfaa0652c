"""The sidecar's admin ``/metrics``: its handler (worker 0 adding the other workers' pages), and a real proxy.

A real ``meshlib proxy --workers 2`` shows that the page covers both
workers, as ``/stats`` does, and ``promtool check metrics`` accepts it.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib._observe import metrics
from meshlib._observe.exchange import Exchange
from meshlib._sidecar.admin import admin_handler
from tests.observe.metrics_helpers import promtool_check, series, value
from tests.sidecar import proxy_process
from tests.sidecar.proxy_process import free_port
from tests.sidecar.test_admin import Target

ENDPOINT = "http://127.0.0.1:9081"
CONFIG: dict[str, Any] = {
    "clusters": {"reviews": {"endpoints": [ENDPOINT], "circuit_breaker": {"failure_threshold": 5}}},
    "metrics": {"enabled": True},
}


async def _get(target: Target, path: str = "/metrics") -> httpx.Response:
    response = await admin_handler(target)(httpx.Request("GET", f"http://127.0.0.1:15000{path}"))
    response.read()
    return response


def _peer_page(requests: int) -> str:
    """Another worker's own /metrics page after ``requests`` requests that got 200."""
    observer = metrics.MetricsObserver()
    for _ in range(requests):
        exchange = Exchange("outbound", "sidecar", "GET", "http", "reviews", "/", route="cluster:reviews")
        observer.started(exchange)
        exchange.cluster, exchange.endpoint, exchange.status = "reviews", ENDPOINT, 200
        exchange.end = exchange.start + 0.001
        observer.finished(exchange)
    # Its live state is in the page too; worker 0 takes that from the merged /stats instead.
    stats = {"clusters": {"reviews": {"counters": {"retries": 100}, "endpoints": {}}}}
    return metrics.exposition(observer, stats).decode()


@pytest.mark.anyio
async def test_metrics_404_when_the_config_does_not_enable_them(make_mesh: Any) -> None:
    response = await _get(Target(make_mesh({"clusters": CONFIG["clusters"]})))
    assert response.status_code == 404
    assert response.text == metrics.NOT_ENABLED + "\n"


@pytest.mark.anyio
async def test_metrics_add_the_other_workers_requests_to_worker_zeros(make_mesh: Any) -> None:
    target = Target(make_mesh(CONFIG))
    target.pages = [_peer_page(3), _peer_page(2)]
    target.peers = [(1, {"clusters": {"reviews": {"counters": {"retries": 4}}}})]
    response = await _get(target)
    assert response.status_code == 200
    assert response.headers["content-type"] == metrics.CONTENT_TYPE
    text = response.text
    assert value(text, "meshlib_outbound_requests_total", route="cluster:reviews", status_class="2xx") == 5
    assert value(text, "meshlib_outbound_request_duration_seconds_count") == 5
    assert value(text, "meshlib_cluster_retries_total", cluster="reviews") == 4  # the merged /stats', not the pages'
    assert value(text, "meshlib_cluster_breaker_state", cluster="reviews", state="closed") == 1
    # The target's listeners (Target.listener_stats), as the sidecar reports them.
    assert value(text, "meshlib_listener_connections_active", listener="outbound") == 2
    assert value(text, "meshlib_listener_requests_active", listener="outbound") == 1
    assert "x-meshlib-workers-missing" not in response.headers
    promtool_check(text)


@pytest.mark.anyio
async def test_metrics_name_the_workers_that_did_not_answer(make_mesh: Any) -> None:
    target = Target(make_mesh(CONFIG))
    target.pages = [_peer_page(1)]
    target.missing = [2]
    response = await _get(target)
    assert response.status_code == 200
    assert response.headers["x-meshlib-workers-missing"] == "2"
    assert value(response.text, "meshlib_outbound_requests_total") == 1


@pytest.mark.anyio
async def test_the_admin_404_lists_metrics(make_mesh: Any) -> None:
    assert "/metrics" in (await _get(Target(make_mesh(CONFIG)), "/nothing")).text


def test_workers_metrics_cover_both_workers(tmp_path: Path, upstreams: dict[str, str]) -> None:
    port = free_port()
    config = {"clusters": {"reviews": {"endpoints": [upstreams["ratings"]]}}, "metrics": {"enabled": True}}
    proxy = proxy_process.start(tmp_path, config, "--workers", "2", "--outbound", f"127.0.0.1:{port}")
    proxy.outbound = port
    try:
        proxy.wait_ready()  # only once both workers listen
        n = 40
        for _ in range(n):  # a connection each: the kernel spreads them over both workers
            with proxy.client() as client:
                assert client.get("http://reviews/x").status_code == 200
        with httpx.Client(trust_env=False, timeout=10) as admin:
            stats = admin.get(proxy.admin_url + "/stats").json()
            response = admin.get(proxy.admin_url + "/metrics")
        per_worker = [
            sum(e["requests"] for e in w["clusters"]["reviews"]["endpoints"].values()) for w in stats["workers"]
        ]
        assert min(per_worker) > 0, per_worker  # each worker served some (all 40 on one: a 1 in 2^39 chance)
        assert response.status_code == 200, response.text
        text = response.text
        assert value(text, "meshlib_outbound_requests_total", route="cluster:reviews", status_class="2xx") == n
        assert value(text, "meshlib_outbound_request_duration_seconds_count") == n
        assert value(text, "meshlib_outbound_requests_active") == 0
        assert value(text, "meshlib_endpoint_requests_total", cluster="reviews") == n
        assert {s["listener"] for s in series(text, "meshlib_listener_connections_active")} == {"outbound", "admin"}
        assert "x-meshlib-workers-missing" not in response.headers
        promtool_check(text)
        proxy.signal(signal.SIGTERM)
        assert proxy.wait() == 0
    finally:
        proxy.stop()


def test_the_inbound_listener_counts_requests_and_denials_by_policy(tmp_path: Path, upstreams: dict[str, str]) -> None:
    inbound = free_port()
    config = {
        "inbound": {
            "authorization": [{"name": "no-admin", "action": "deny", "rules": [{"to": {"paths": ["/admin/*"]}}]}]
        },
        "sidecar": {"inbound": {"listen": f"127.0.0.1:{inbound}", "app": upstreams["ratings"]}},
        "metrics": {"enabled": True},
        "allow_empty": True,
    }
    with proxy_process.running(tmp_path, config) as proxy, httpx.Client(trust_env=False, timeout=10) as client:
        app = f"http://127.0.0.1:{inbound}"
        assert [client.get(app + path).status_code for path in ("/a", "/b", "/admin/x")] == [200, 200, 403]
        text = client.get(proxy.admin_url + "/metrics").text
    assert value(text, "meshlib_inbound_requests_total", status_class="2xx", error="") == 2
    assert value(text, "meshlib_inbound_requests_total", status_class="4xx", error="forbidden") == 1
    assert value(text, "meshlib_inbound_denied_total", policy="no-admin", error="forbidden") == 1
    assert value(text, "meshlib_inbound_request_duration_seconds_count") == 3
    assert value(text, "meshlib_inbound_requests_active") == 0
    assert value(text, "meshlib_outbound_requests_total") == 0


def test_a_proxy_without_metrics_answers_404(tmp_path: Path, upstreams: dict[str, str]) -> None:
    config = {"clusters": {"reviews": {"endpoints": [upstreams["ratings"]]}}}
    with proxy_process.running(tmp_path, config) as proxy, httpx.Client(trust_env=False, timeout=10) as admin:
        response = admin.get(proxy.admin_url + "/metrics")
    assert response.status_code == 404
    assert "metrics: {enabled: true}" in response.text
