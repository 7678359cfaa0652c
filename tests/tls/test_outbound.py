"""Outbound TLS in process: the mesh's own transports for TLS clusters, respx under them, health checks, reloads, stats.

The behaviour shared with the sidecar (success, identity and handshake
errors, rotation) is in tests/parity/test_parity_mtls.py; this file covers
what only the in-process mode has.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

import meshlib
from meshlib._upstream.health import HealthChecker
from tests.conftest import Caller, MakeMesh
from tests.tls.conftest import ServeTls
from tests.tls.pki import Pki, Workload, spiffe
from tests.tls.tls_server import TlsServer

pytestmark = pytest.mark.anyio


def _cluster(url: str, tls: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"clusters": {"reviews": {"endpoints": [url], "tls": tls, **more}}}


async def test_respx_still_mocks_a_tls_cluster(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, workloads: dict[str, Workload]
) -> None:
    route = respx_mock.get("https://127.0.0.1:9443/x").respond(200, text="mocked")
    mesh = make_mesh(_cluster("https://127.0.0.1:9443", workloads["frontend"].client_tls("reviews")))
    async with caller(mesh) as client:
        assert (await client.get("http://reviews/x")).text == "mocked"
    assert route.call_count == 1


async def test_a_mock_transport_answers_for_tls_clusters_too(
    make_mesh: MakeMesh, caller: Caller, workloads: dict[str, Workload]
) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(204)

    mesh = make_mesh(_cluster("https://127.0.0.1:9443", workloads["frontend"].client_tls("reviews")))
    async with caller(mesh, transport=httpx.MockTransport(handler)) as client:
        assert (await client.get("http://reviews/x")).status_code == 204
    assert seen == ["https://127.0.0.1:9443/x"]


async def test_simple_tls_trusts_the_system_store_without_a_ca_file(
    make_mesh: MakeMesh,
    caller: Caller,
    serve_tls: ServeTls,
    pki: Pki,
    workloads: dict[str, Workload],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # OpenSSL's default verify paths read SSL_CERT_FILE: here the system's store is the test's CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    with serve_tls(workloads["reviews"], require_client_cert=False) as reviews:
        mesh = make_mesh(_cluster(reviews.url, {"mode": "simple", "server_name": "reviews"}))
        async with caller(mesh) as client:
            answer = (await client.get("http://reviews/x")).json()
    assert answer["peer"] is None  # simple: no client certificate


async def test_an_https_cluster_without_tls_keeps_the_client_s_own_transport(
    make_mesh: MakeMesh, caller: Caller, serve_tls: ServeTls, pki: Pki, workloads: dict[str, Workload]
) -> None:
    context = ssl.create_default_context(cafile=pki.ca_file)
    context.check_hostname = False
    with serve_tls(workloads["reviews"], require_client_cert=False) as reviews:
        mesh = make_mesh({"clusters": {"reviews": {"endpoints": [reviews.url]}}})
        async with caller(mesh, verify=context) as client:
            assert (await client.get("http://reviews/x")).status_code == 200
        async with caller(mesh) as client:  # the default transport does not trust the test's CA
            with pytest.raises(meshlib.UpstreamConnectError, match="certificate verify failed"):
                await client.get("http://reviews/x")


async def test_a_reload_that_changes_the_certificate_applies_to_new_requests(
    make_mesh: MakeMesh, caller: Caller, reviews_server: TlsServer, workloads: dict[str, Workload]
) -> None:
    mesh = make_mesh(_cluster(reviews_server.url, workloads["frontend"].client_tls("reviews")))
    async with caller(mesh) as client:
        assert (await client.get("http://reviews/x")).json()["peer"] == spiffe("frontend")
        mesh.reload(_cluster(reviews_server.url, workloads["details"].client_tls("reviews")))
        assert (await client.get("http://reviews/x")).json()["peer"] == spiffe("details")
        assert (await client.get("http://reviews/x")).json()["peer"] == spiffe("details")
    assert [c.peer_id for c in reviews_server.connections] == [spiffe("frontend"), spiffe("details")]


def test_stats_show_every_certificate_and_its_time_left(
    make_mesh: MakeMesh, workloads: dict[str, Workload], pki: Pki
) -> None:
    frontend = workloads["frontend"]
    mesh = make_mesh(_cluster("https://127.0.0.1:9443", frontend.client_tls("reviews")))
    certificates = mesh.stats()["certificates"]
    assert set(certificates) == {"clusters.reviews.tls.cert_file", "clusters.reviews.tls.ca_file"}
    own = certificates["clusters.reviews.tls.cert_file"]
    assert own["file"] == str(frontend.cert)
    assert own["spiffe_id"] == spiffe("frontend")
    assert own["serial"] == f"{frontend.serial():x}"
    assert own["subject"] == "CN=frontend,O=meshlib"
    assert 3500 < own["expires_in_seconds"] <= 3600  # the fixture's certificates live an hour
    assert certificates["clusters.reviews.tls.ca_file"]["spiffe_id"] == "spiffe://example.org"


async def test_health_checks_use_the_cluster_s_tls(
    make_mesh: MakeMesh, serve_tls: ServeTls, workloads: dict[str, Workload]
) -> None:
    check = {"interval": "1h", "unhealthy_threshold": 1, "path": "/healthz"}
    frontend = workloads["frontend"]
    with serve_tls(workloads["reviews"]) as reviews, serve_tls(workloads["details"]) as impostor:
        config = {
            "clusters": {
                "reviews": {"endpoints": [reviews.url], "tls": frontend.client_tls("reviews"), "health_check": check},
                "other": {"endpoints": [impostor.url], "tls": frontend.client_tls("reviews"), "health_check": check},
            }
        }
        mesh = make_mesh(config)
        for name in ("reviews", "other"):
            checker = mesh._runtime.registry.get("health_check", name)
            assert isinstance(checker, HealthChecker)
            checker.check_once()
        healthy = {name: [e.state.healthy for e in c.endpoints] for name, c in mesh.snapshot.clusters.items()}
    assert healthy == {"reviews": [True], "other": [False]}  # the impostor fails its probe: wrong identity
    assert [(c.peer_id, c.requests) for c in reviews.connections] == [(spiffe("frontend"), 1)]
    assert sum(c.received for c in impostor.connections) == 0


def test_closing_the_client_closes_the_tls_connections(
    make_mesh: MakeMesh, reviews_server: TlsServer, workloads: dict[str, Workload], tmp_path: Path
) -> None:
    mesh = make_mesh(_cluster(reviews_server.url, workloads["frontend"].client_tls("reviews")))
    client = mesh.client()
    assert client.get("http://reviews/x").status_code == 200
    client.close()  # filterwarnings=error: an unclosed socket would fail the test when collected
    with pytest.raises(RuntimeError, match="closed"):
        client.get("http://reviews/x")


def test_rotations_are_counted_per_cluster(make_mesh: MakeMesh, pki: Pki, tmp_path: Path) -> None:
    own = pki.issue("frontend", out=tmp_path)
    mesh = make_mesh(_cluster("https://127.0.0.1:9443", own.client_tls("reviews")))
    tls = mesh.snapshot.clusters["reviews"].tls
    assert tls is not None
    renewed = pki.issue("frontend", out=tmp_path)
    assert tls.source.check() is True
    own_stats = mesh.stats()["certificates"]["clusters.reviews.tls.cert_file"]
    assert own_stats["serial"] == f"{renewed.serial():x}"
    assert mesh.stats()["clusters"]["reviews"]["counters"] == {"certificate_reloads": 1}
