"""Upstream mTLS from xDS: the CDS transport socket's files or the bootstrap's certificate providers, SPIFFE checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import meshlib
from meshlib import MeshConfig
from tests.tls.conftest import ServeTls
from tests.tls.pki import Pki, Workload, custom, spiffe
from tests.xds.ads_server import CLUSTER, ENDPOINT, LISTENER, ROUTE, AdsServer
from tests.xds.conftest import write_bootstrap
from tests.xds.resources import api_listener, eds_cluster, load_assignment, route, route_configuration, virtual_host

AUTHORITY = "reviews.default.svc.cluster.local:9443"


def _snapshot(port: int, tls: dict[str, Any]) -> dict[str, list[Any]]:
    return {
        LISTENER: [api_listener(AUTHORITY, "rc")],
        ROUTE: [
            route_configuration("rc", [virtual_host("reviews", [AUTHORITY], [route(prefix="/", cluster="reviews")])])
        ],
        CLUSTER: [eds_cluster("reviews", tls=tls)],
        ENDPOINT: [load_assignment("reviews", [("127.0.0.1", port)])],
    }


def _san(service: str) -> list[dict[str, Any]]:
    return [{"san_type": "URI", "matcher": {"exact": spiffe(service)}}]


def _files(client: Workload, expect: str) -> dict[str, Any]:
    return {
        "sni": "reviews",
        "common_tls_context": {
            "tls_certificates": [
                {"certificate_chain": {"filename": str(client.cert)}, "private_key": {"filename": str(client.key)}}
            ],
            "validation_context": {
                "trusted_ca": {"filename": str(client.ca)},
                "match_typed_subject_alt_names": _san(expect),
            },
        },
    }


def _mesh(bootstrap: Path) -> meshlib.Mesh:
    return meshlib.Mesh(MeshConfig.from_dict({"xds": {"bootstrap": str(bootstrap), "targets": [AUTHORITY]}}))


def test_mutual_tls_from_the_cluster_s_certificate_files(
    ads: AdsServer, bootstrap: Path, serve_tls: ServeTls, workloads: dict[str, Workload]
) -> None:
    with serve_tls(workloads["reviews"]) as server:
        port = int(server.url.rsplit(":", 1)[1])
        ads.set_snapshot("1", _snapshot(port, _files(workloads["frontend"], "reviews")))
        with _mesh(bootstrap) as mesh, mesh.client() as client:
            assert client.get(f"http://{AUTHORITY}/api").status_code == 200
        assert server.connections[0].peer_id == spiffe("frontend"), "the upstream saw the workload's identity"
        assert server.sni == ["reviews"]


def test_an_upstream_with_another_identity_is_refused_naming_both(
    ads: AdsServer, bootstrap: Path, serve_tls: ServeTls, workloads: dict[str, Workload]
) -> None:
    with serve_tls(workloads["details"]) as server:
        port = int(server.url.rsplit(":", 1)[1])
        ads.set_snapshot("1", _snapshot(port, _files(workloads["frontend"], "reviews")))
        with _mesh(bootstrap) as mesh, mesh.client() as client, pytest.raises(meshlib.PeerIdentityError) as info:
            client.get(f"http://{AUTHORITY}/api")
        assert spiffe("details") in str(info.value)
        assert spiffe("reviews") in str(info.value)


def test_mutual_tls_from_the_bootstrap_s_certificate_providers(
    ads: AdsServer, tmp_path: Path, serve_tls: ServeTls, workloads: dict[str, Workload]
) -> None:
    frontend = workloads["frontend"]
    providers = {
        "default": {
            "plugin_name": "file_watcher",
            "config": {
                "certificate_file": str(frontend.cert),
                "private_key_file": str(frontend.key),
                "ca_certificate_file": str(frontend.ca),
                "refresh_interval": "600s",
            },
        }
    }
    bootstrap = write_bootstrap(tmp_path / "b.json", ads, certificate_providers=providers)
    tls = {
        "sni": "reviews",
        "common_tls_context": {
            "tls_certificate_provider_instance": {"instance_name": "default"},
            "validation_context": {
                "ca_certificate_provider_instance": {"instance_name": "default"},
                "match_typed_subject_alt_names": _san("reviews"),
            },
        },
    }
    with serve_tls(workloads["reviews"]) as server:
        port = int(server.url.rsplit(":", 1)[1])
        ads.set_snapshot("1", _snapshot(port, tls))
        with _mesh(bootstrap) as mesh, mesh.client() as client:
            assert client.get(f"http://{AUTHORITY}/api").status_code == 200
        assert server.connections[0].peer_id == spiffe("frontend")


def test_a_provider_the_bootstrap_does_not_have_is_nacked(
    ads: AdsServer, bootstrap: Path, workloads: dict[str, Workload]
) -> None:
    tls = {
        "sni": "reviews",
        "common_tls_context": {
            "tls_certificate_provider_instance": {"instance_name": "missing"},
            "validation_context": {"trusted_ca": {"filename": str(workloads["frontend"].ca)}},
        },
    }
    ads.set_snapshot("1", _snapshot(1, tls))
    with _mesh(bootstrap):
        nack = ads.wait_nack(CLUSTER)
    assert "Cluster 'reviews'" in nack.error_detail.message
    assert "tls_certificate_provider_instance" in nack.error_detail.message
    assert "missing" in nack.error_detail.message


def test_the_xds_server_over_mutual_tls_from_the_bootstrap_s_channel_creds(
    tmp_path: Path, pki: Pki, workloads: dict[str, Workload]
) -> None:
    """channel_creds ``tls`` with gRPC's file names: the stream is mutually authenticated TLS."""
    import grpc

    # gRPC checks the server's name: istiod's certificate names its DNS name, here localhost.
    control = custom(pki.ca_dir, "localhost", tmp_path / "istiod")
    frontend = workloads["frontend"]
    credentials = grpc.ssl_server_credentials(
        [(control.key.read_bytes(), control.cert.read_bytes())],
        root_certificates=control.ca.read_bytes(),
        require_client_auth=True,
    )
    ads = AdsServer(tls=credentials)
    ads.start()
    try:
        creds = {
            "type": "tls",
            "config": {
                "ca_certificate_file": str(frontend.ca),
                "certificate_file": str(frontend.cert),
                "private_key_file": str(frontend.key),
            },
        }
        path = tmp_path / "bootstrap.json"
        path.write_text(
            json.dumps(
                {
                    "xds_servers": [{"server_uri": f"localhost:{ads.port}", "channel_creds": [creds]}],
                    "node": {"id": "tls-node"},
                }
            )
        )
        ads.set_snapshot("1", _snapshot(1, _files(frontend, "reviews")))
        with _mesh(path):
            ads.wait_ack(ENDPOINT, "1")
        assert ads.requests()[0].node.id == "tls-node"
    finally:
        ads.stop()
