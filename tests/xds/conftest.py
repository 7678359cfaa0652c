"""Fixtures of the xDS tests: a running ADS server, and a bootstrap file pointing at it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("envoy.service.discovery.v3.ads_pb2_grpc")

from tests.tls.conftest import pki, serve_tls, workloads  # noqa: F401 - the TLS tests' fixtures, for test_xds_tls.py
from tests.xds.ads_server import AdsServer

NODE_ID = "frontend~127.0.0.1~frontend.default"


@pytest.fixture
def ads() -> Iterator[AdsServer]:
    server = AdsServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def write_bootstrap(path: Path, ads: AdsServer, **extra: object) -> Path:
    """A gRPC bootstrap naming ``ads`` (insecure) and this workload's node."""
    data = {
        "xds_servers": [{"server_uri": ads.address, "channel_creds": [{"type": "insecure"}]}],
        "node": {"id": NODE_ID, "cluster": "frontend", "metadata": {"GENERATOR": "grpc"}},
        **extra,
    }
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def bootstrap(tmp_path: Path, ads: AdsServer) -> Path:
    return write_bootstrap(tmp_path / "bootstrap.json", ads)
