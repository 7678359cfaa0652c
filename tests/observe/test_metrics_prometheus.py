"""A real Prometheus server scrapes meshlib: an in-process app's mounted metrics and a ``meshlib proxy``'s admin.

Prometheus (Debian's ``prometheus`` package) runs on a free loopback port
with a generated config scraping every 200 ms and its data in a temporary
directory; the test then asks its HTTP API (``/api/v1/query``) for meshlib
series and checks their values against the traffic it sent.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import respx

import meshlib
from tests.conftest import MakeMesh, start_server
from tests.observe.metrics_helpers import prometheus
from tests.sidecar.proxy_process import running

A = "http://127.0.0.1:9081"


def test_prometheus_scrapes_the_in_process_app_and_the_sidecar_admin(
    make_mesh: MakeMesh, tmp_path: Path, upstreams: dict[str, str]
) -> None:
    mesh = make_mesh(
        {
            "clusters": {"ratings": {"endpoints": [A], "circuit_breaker": {"failure_threshold": 2}}},
            "routes": [{"name": "ratings", "match": {"host": "ratings"}, "cluster": "ratings"}],
            "metrics": {"enabled": True},
        }
    )
    with respx.mock:
        respx.get(f"{A}/r").mock(side_effect=[httpx.Response(200)] * 3 + [httpx.Response(503)] * 2)
        with mesh.client() as client:
            assert [client.get("http://ratings/r").status_code for _ in range(5)] == [200, 200, 200, 503, 503]
            with pytest.raises(meshlib.CircuitOpenError):
                client.get("http://ratings/r")
    app = start_server(mesh.metrics_asgi_app(), "metrics")
    sidecar_config = {"clusters": {"reviews": {"endpoints": [upstreams["reviews-v2"]]}}, "metrics": {"enabled": True}}
    try:
        with running(tmp_path / "sidecar", sidecar_config) as proxy:
            with proxy.client() as client:
                for _ in range(7):
                    assert client.get("http://reviews/x").status_code == 200
            targets = [(app.url.removeprefix("http://"), "/metrics"), (f"127.0.0.1:{proxy.admin}", "/metrics")]
            with prometheus(targets) as server:
                in_process, sidecar = '{job="meshlib-0"', '{job="meshlib-1"'
                server.wait_for(f'meshlib_outbound_requests_total{in_process},route="ratings",status_class="2xx"}}', 3)
                server.wait_for(f'meshlib_outbound_requests_total{in_process},status_class="5xx",error=""}}', 2)
                server.wait_for(f'meshlib_outbound_requests_total{in_process},error="circuit_open"}}', 1)
                server.wait_for(f'meshlib_cluster_breaker_state{in_process},cluster="ratings",state="open"}}', 1)
                server.wait_for(f"sum(meshlib_outbound_request_duration_seconds_count{in_process}}})", 6)
                server.wait_for(f'sum(meshlib_outbound_requests_total{sidecar},route="cluster:reviews"}})', 7)
                server.wait_for(f'meshlib_endpoint_requests_total{sidecar},cluster="reviews"}}', 7)
                server.wait_for(f"up{sidecar}}}", 1)
    finally:
        app.stop()
