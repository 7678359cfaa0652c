"""Interop: a real Envoy as the mTLS upstream, checking meshlib's client certificate as Istio's sidecars do.

Envoy requires a client certificate of the test's CA whose URI SAN is
frontend's SPIFFE ID (``match_typed_subject_alt_names``), and answers with
the SAN it verified. So the certificates of ``meshlib ca`` are X.509-SVIDs
that Envoy accepts, and meshlib's client (in process and in the sidecar)
speaks mTLS as an Istio workload would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshlib
from tests.conftest import Caller, MakeMesh
from tests.envoy_process import HCM, ROUTER, RunningEnvoy, running_envoy, stats
from tests.sidecar import proxy_process
from tests.tls.pki import Workload, spiffe

pytestmark = pytest.mark.anyio


def _envoy_config(server: Workload, client_id: str) -> dict[str, Any]:
    tls = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificates": [
                {"certificate_chain": {"filename": str(server.cert)}, "private_key": {"filename": str(server.key)}}
            ],
            "validation_context": {
                "trusted_ca": {"filename": str(server.ca)},
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": client_id}}],
            },
        },
    }
    route = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": "from envoy"}},
        "response_headers_to_add": [{"header": {"key": "x-peer", "value": "%DOWNSTREAM_PEER_URI_SAN%"}}],
    }
    hcm = {
        "@type": HCM,
        "stat_prefix": "mtls",
        "codec_type": "HTTP1",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
        "http_filters": [ROUTER],
    }
    listener = {
        "name": "mtls",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
                "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
            }
        ],
    }
    return {"static_resources": {"listeners": [listener]}}


@pytest.fixture
def envoy(workloads: dict[str, Workload], tmp_path: Path) -> Iterator[RunningEnvoy]:
    with running_envoy(_envoy_config(workloads["reviews"], spiffe("frontend")), tmp_path) as running:
        yield running


def _config(envoy: RunningEnvoy, client: Workload) -> dict[str, Any]:
    url = f"https://127.0.0.1:{envoy.ports['mtls']}"
    return {"clusters": {"reviews": {"endpoints": [url], "tls": client.client_tls("reviews")}}}


def _counts(envoy: RunningEnvoy) -> tuple[int, int]:
    """Envoy's TLS handshakes (one per connection) and HTTP requests on the mTLS listener."""
    found = stats(envoy, "")
    return found.get("listener.127.0.0.1_0.ssl.handshake", 0), found.get("http.mtls.downstream_rq_total", 0)


async def test_envoy_accepts_meshlib_s_workload_certificate_in_process(
    caller: Caller, envoy: RunningEnvoy, workloads: dict[str, Workload], make_mesh: MakeMesh
) -> None:
    mesh = make_mesh(_config(envoy, workloads["frontend"]))
    async with caller(mesh) as client:
        answers = [await client.get("http://reviews/x") for _ in range(3)]
    assert [(a.status_code, a.text, a.headers["x-peer"]) for a in answers] == [
        (200, "from envoy", spiffe("frontend"))
    ] * 3
    assert _counts(envoy) == (1, 3)  # one connection, kept alive


def test_envoy_accepts_meshlib_s_workload_certificate_through_the_sidecar(
    envoy: RunningEnvoy, workloads: dict[str, Workload], tmp_path: Path, make_mesh: MakeMesh
) -> None:
    with (
        proxy_process.running(tmp_path / "sidecar", _config(envoy, workloads["frontend"])) as sidecar,
        make_mesh({"allow_empty": True}).client(mode="sidecar", sidecar=sidecar.proxy_url) as client,
    ):
        answers = [client.get("http://reviews/x") for _ in range(3)]
    assert [(a.status_code, a.headers["x-peer"]) for a in answers] == [(200, spiffe("frontend"))] * 3
    assert _counts(envoy) == (1, 3)


async def test_envoy_refuses_a_workload_it_does_not_expect(
    caller: Caller, envoy: RunningEnvoy, workloads: dict[str, Workload], make_mesh: MakeMesh
) -> None:
    mesh = make_mesh(_config(envoy, workloads["details"]))
    async with caller(mesh) as client:
        with pytest.raises(httpx.TransportError) as raised:
            await client.get("http://reviews/x")
    # TLS 1.3: the client's handshake is over before the server has checked the client's certificate, so its
    # refusal (an alert, then a close) reaches the client as it sends: a reset, whose words depend on the timing.
    assert isinstance(raised.value, meshlib.UpstreamResetError | meshlib.UpstreamConnectError)
    assert _counts(envoy)[1] == 0  # Envoy let no request through
