"""The ADS test server against a real Envoy: what it serves is applied, ACKed, NACKed and served again after a restart.

Envoy gets its own view (node "envoy-peer": a socket listener) over the default
one (gRPC's API listener, which Envoy must never see); the route, cluster and
endpoints come from the default view, so the per-type fallback is exercised too.
The upstreams answer with the address they serve on (127.0.0.1 or 127.0.0.2).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("envoy.service.discovery.v3.ads_pb2_grpc")

from tests.discovery.upstreams import upstreams
from tests.envoy_process import envoy_binary
from tests.xds import resources as xr
from tests.xds.ads_server import CLUSTER, ENDPOINT, LISTENER, ROUTE, AdsServer
from tests.xds.envoy_xds import EnvoyOnAds, envoy_on_ads

ALL_TYPES = (LISTENER, ROUTE, CLUSTER, ENDPOINT)
NODE = "envoy-peer"


@pytest.fixture
def upstream_port() -> Iterator[int]:
    """HTTP upstreams on 127.0.0.1 and 127.0.0.2, one port: each answers its own address."""
    with upstreams(["127.0.0.1", "127.0.0.2"]) as port:
        yield port


@pytest.fixture
def ads() -> Iterator[AdsServer]:
    with AdsServer() as server:
        yield server


@pytest.fixture
def envoy(ads: AdsServer, upstream_port: int, tmp_path: Path) -> Iterator[EnvoyOnAds]:
    """An Envoy on ``ads``, which serves version "1" (to 127.0.0.1) before it starts."""
    try:
        envoy_binary()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    serve(ads, "1", "127.0.0.1", upstream_port)
    with envoy_on_ads(ads, tmp_path, node_id=NODE) as running:
        yield running


def serve(ads: AdsServer, version: str, host: str, port: int, *, connect_timeout: float = 1.0) -> None:
    """The snapshot: for gRPC an API listener, for Envoy a socket listener; both → route "rc" → cluster "svc"."""
    routes = [xr.virtual_host("vh", ["*"], [xr.route(prefix="/", cluster="svc")])]
    ads.set_snapshot(
        version,
        {
            LISTENER: [xr.api_listener("svc.test", "rc")],
            ROUTE: [xr.route_configuration("rc", routes)],
            CLUSTER: [xr.eds_cluster("svc", connect_timeout=connect_timeout)],
            ENDPOINT: [xr.load_assignment("svc", [(host, port)])],
        },
    )
    ads.set_snapshot(version, {LISTENER: [xr.socket_listener("web", "rc")]}, node=NODE)


def answering(envoy: EnvoyOnAds) -> str:
    """Which upstream answered a request through Envoy's listener "web"."""
    response = httpx.get(f"http://127.0.0.1:{envoy.listener_port('web')}/", timeout=2)
    assert response.status_code == 200, (response.status_code, response.text)
    return response.text


def test_envoy_applies_the_snapshot_and_acks_every_type(ads: AdsServer, envoy: EnvoyOnAds) -> None:
    assert answering(envoy) == "127.0.0.1"
    for type_url in ALL_TYPES:
        ack = ads.wait_ack(type_url, "1", node=NODE)
        assert not ack.HasField("error_detail")
    # Envoy asks for every listener and cluster (wildcard), and for the route and endpoints it needs by name.
    assert all(not r.resource_names for r in ads.requests(LISTENER) + ads.requests(CLUSTER))
    assert {name for r in ads.requests(ROUTE) for name in r.resource_names} == {"rc"}
    assert {name for r in ads.requests(ENDPOINT) for name in r.resource_names} == {"svc"}
    assert ads.requests(node=NODE) == ads.requests()
    assert ads.streams_opened == 1
    assert ads.nacks() == []  # the API listener of the default view never reached Envoy


def test_an_endpoint_update_moves_envoy_at_once(ads: AdsServer, envoy: EnvoyOnAds, upstream_port: int) -> None:
    assert answering(envoy) == "127.0.0.1"
    serve(ads, "2", "127.0.0.2", upstream_port)
    envoy.wait_cluster_endpoints("svc", [("127.0.0.2", upstream_port)], timeout=1.0)
    assert answering(envoy) == "127.0.0.2"
    ads.wait_ack(ENDPOINT, "2", node=NODE)
    ads.wait_ack(LISTENER, "2", node=NODE)  # the node view's new version, same listener: ACKed as well


def test_an_invalid_cluster_is_nacked_and_envoy_keeps_the_last_good_one(
    ads: AdsServer, envoy: EnvoyOnAds, upstream_port: int
) -> None:
    assert answering(envoy) == "127.0.0.1"
    ads.wait_ack(CLUSTER, "1")

    serve(ads, "2", "127.0.0.1", upstream_port, connect_timeout=-1.0)
    nonce = ads.last_nonce(CLUSTER)
    nack = ads.wait_nack(CLUSTER, node=NODE)
    assert (nack.version_info, nack.response_nonce) == ("1", nonce)
    # A negative Duration fails protobuf's own check, whose text names the value but not the field.
    assert "positive duration" in nack.error_detail.message
    assert "seconds: -1" in nack.error_detail.message
    assert answering(envoy) == "127.0.0.1"

    # A zero one passes that check and fails the field's constraint, which is named.
    serve(ads, "3", "127.0.0.1", upstream_port, connect_timeout=0.0)
    nonce = ads.last_nonce(CLUSTER)
    nack = ads.wait_for(lambda r: r.HasField("error_detail") and r.response_nonce == nonce, type_url=CLUSTER)
    assert nack.version_info == "1"
    assert "ConnectTimeout: value must be greater than 0s" in nack.error_detail.message
    assert len(ads.nacks(CLUSTER)) == 2
    assert answering(envoy) == "127.0.0.1"

    serve(ads, "4", "127.0.0.1", upstream_port)
    ack = ads.wait_ack(CLUSTER, "4", node=NODE)
    assert ack.response_nonce == ads.last_nonce(CLUSTER)
    assert answering(envoy) == "127.0.0.1"


def test_envoy_reconnects_to_a_restarted_server(ads: AdsServer, envoy: EnvoyOnAds) -> None:
    assert answering(envoy) == "127.0.0.1"
    ads.wait_ack(ENDPOINT, "1")
    port, opened = ads.port, ads.streams_opened

    ads.stop()
    assert answering(envoy) == "127.0.0.1"  # what Envoy has stays while the server is away
    ads.restart()
    assert ads.port == port

    for type_url in ALL_TYPES:
        ads.wait_ack(type_url, "1", node=NODE, min_stream=opened + 1)
    # A stream opened while the server was stopping may die at once: the last one is the one that serves.
    last = ads.streams_opened
    assert last > opened
    first, *later = requests = ads.stream_requests(last)
    assert first.node.id == NODE  # set_node_on_first_message_only: the node again on the new stream's first request
    assert not any(r.HasField("node") for r in later)
    # Envoy resubscribes to every type with the version it had and no nonce (nonces belong to a stream).
    initial = [r for r in requests if not r.response_nonce]
    assert sorted(r.type_url for r in initial) == sorted(ALL_TYPES)
    assert {r.version_info for r in initial} == {"1"}
    assert answering(envoy) == "127.0.0.1"
