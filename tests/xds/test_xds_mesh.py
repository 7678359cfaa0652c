"""A mesh driven by an xDS control plane, in process: subscribe, ACK, NACK, follow updates, survive the server.

The server is the test suite's ADS server (``ads_server.py``) on loopback; the
upstreams are real HTTP servers that say who answered.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshlib
from meshlib import MeshConfig
from tests.xds.ads_server import CLUSTER, ENDPOINT, LISTENER, ROUTE, AdsServer
from tests.xds.apps import Upstream, upstreams
from tests.xds.conftest import NODE_ID
from tests.xds.resources import (
    api_listener,
    eds_cluster,
    load_assignment,
    route,
    route_configuration,
    virtual_host,
)

AUTHORITY = "reviews.default.svc.cluster.local:9080"
URL = f"http://{AUTHORITY}"


def snapshot(
    endpoints: list[Upstream], *, authority: str = AUTHORITY, routes: list[Any] | None = None, **cluster: Any
) -> dict[str, list[Any]]:
    """One listener → one route configuration → one EDS cluster → ``endpoints``."""
    return {
        LISTENER: [api_listener(authority, "reviews-routes")],
        ROUTE: [
            route_configuration(
                "reviews-routes",
                [virtual_host("reviews", [authority], routes or [route(prefix="/", cluster="reviews")])],
            )
        ],
        CLUSTER: [eds_cluster("reviews", **cluster)],
        ENDPOINT: [load_assignment("reviews", [("127.0.0.1", u.port) for u in endpoints])],
    }


def mesh_for(bootstrap: Path, *, targets: list[str] | None = None, **xds: Any) -> meshlib.Mesh:
    config: dict[str, Any] = {"xds": {"bootstrap": str(bootstrap), "targets": targets or [], **xds}}
    return meshlib.Mesh(MeshConfig.from_dict(config))


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_a_target_is_subscribed_at_start_routed_and_every_type_acked(ads: AdsServer, bootstrap: Path) -> None:
    with upstreams("v1") as up:
        ads.set_snapshot("1", snapshot([up["v1"]]))
        with mesh_for(bootstrap, targets=[AUTHORITY]) as mesh, mesh.client() as client:
            for type_url in (LISTENER, ROUTE, CLUSTER, ENDPOINT):
                ads.wait_ack(type_url, "1")
            response = client.get(f"{URL}/api/reviews/1")
            assert response.status_code == 200
            assert response.headers["x-upstream"] == "v1"
            stats = mesh.stats()["xds"]
            assert stats["connected"]
            assert stats["types"]["Cluster"]["version"] == "1"
        first, *rest = ads.requests()
        assert first.node.id == NODE_ID
        assert first.type_url == LISTENER
        assert list(first.resource_names) == [AUTHORITY]
        assert first.node.metadata.fields["GENERATOR"].string_value == "grpc"
        assert all(not r.HasField("node") for r in rest), "the node goes on a stream's first request only"
        # gRPC's order: each type is asked for once what it needs is known
        order = [r.type_url for r in ads.requests() if not r.response_nonce]
        assert order == [LISTENER, ROUTE, CLUSTER, ENDPOINT]
        assert list(ads.requests(ENDPOINT)[0].resource_names) == ["reviews"]


def test_an_authority_is_subscribed_on_first_use_and_that_request_waits_for_it(ads: AdsServer, bootstrap: Path) -> None:
    with upstreams("v1") as up:
        ads.set_snapshot("1", snapshot([up["v1"]]))
        with mesh_for(bootstrap) as mesh, mesh.client() as client:
            time.sleep(0.2)
            assert not any(r.resource_names for r in ads.requests(LISTENER)), "nothing is subscribed before use"
            response = client.get(f"{URL}/x")
            assert response.headers["x-upstream"] == "v1"
            assert next(list(r.resource_names) for r in ads.requests(LISTENER) if r.resource_names) == [AUTHORITY]


def test_async_first_use_waits_without_blocking_the_loop(ads: AdsServer, bootstrap: Path) -> None:
    async def main(up: Upstream) -> None:
        with mesh_for(bootstrap) as mesh:
            async with mesh.async_client() as client:
                ticks = 0

                async def tick() -> None:
                    nonlocal ticks
                    while True:
                        ticks += 1
                        await asyncio.sleep(0.005)

                ticker = asyncio.create_task(tick())
                responses = await asyncio.gather(*(client.get(f"{URL}/{i}") for i in range(5)))
                ticker.cancel()
                assert {r.headers["x-upstream"] for r in responses} == {"v1"}
                assert ticks >= 1

    with upstreams("v1") as up:
        ads.set_snapshot("1", snapshot([up["v1"]]))
        asyncio.run(main(up["v1"]))


def test_an_authority_the_server_does_not_have_is_not_waited_for(ads: AdsServer, bootstrap: Path) -> None:
    with upstreams("v1") as up:
        ads.set_snapshot("1", snapshot([up["v1"]]))
        config = {
            "outbound_policy": "registry_only",
            "xds": {"bootstrap": str(bootstrap), "initial_fetch_timeout": "5s"},
        }
        with meshlib.Mesh(MeshConfig.from_dict(config)) as mesh, mesh.client() as client:
            started = time.monotonic()
            with pytest.raises(meshlib.RouteNotFoundError):
                client.get("http://unknown.default:8080/")
            assert time.monotonic() - started < 2, "the server said the listener doesn't exist: no need to wait"


def test_with_the_server_down_a_first_request_waits_initial_fetch_timeout_then_goes_on(tmp_path: Path) -> None:
    ads = AdsServer()
    ads.start()
    ads.stop()  # a port nobody serves
    from tests.xds.conftest import write_bootstrap

    bootstrap = write_bootstrap(tmp_path / "b.json", ads)
    xds = {"bootstrap": str(bootstrap), "initial_fetch_timeout": "300ms"}
    config = {"outbound_policy": "registry_only", "xds": xds}
    with meshlib.Mesh(MeshConfig.from_dict(config)) as mesh, mesh.client() as client:
        started = time.monotonic()
        with pytest.raises(meshlib.RouteNotFoundError):
            client.get(f"{URL}/")
        waited = time.monotonic() - started
        assert 0.25 < waited < 2
        started = time.monotonic()
        with pytest.raises(meshlib.RouteNotFoundError):
            client.get(f"{URL}/")
        assert time.monotonic() - started < 0.1, "only the first requests wait"


def test_a_bad_resource_is_nacked_with_the_field_and_changes_nothing(ads: AdsServer, bootstrap: Path) -> None:
    with upstreams("v1", "v2") as up:
        ads.set_snapshot("1", snapshot([up["v1"]]))
        with mesh_for(bootstrap, targets=[AUTHORITY]) as mesh, mesh.client() as client:
            ads.wait_ack(ENDPOINT, "1")
            bad = snapshot([up["v2"]], connect_timeout=-1.0)
            ads.set_snapshot("2", bad)
            nack = ads.wait_nack(CLUSTER)
            assert nack.version_info == "1", "a NACK carries the last accepted version"
            assert nack.response_nonce == ads.last_nonce(CLUSTER)
            assert "Cluster 'reviews': connect_timeout: must be greater than 0s" in nack.error_detail.message
            assert nack.error_detail.code == 3  # INVALID_ARGUMENT
            # The CLA of version 2 is valid and was accepted, but the cluster of version 1 still routes.
            assert client.get(f"{URL}/").status_code == 200
            assert mesh.stats()["xds"]["types"]["Cluster"]["version"] == "1"
            dump = mesh.xds_config_dump()
            assert dump is not None
            clusters = next(c for c in dump["configs"] if c["@type"].endswith("ClustersConfigDump"))
            assert clusters["version_info"] == "1"
            assert clusters["dynamic_active_clusters"][0]["cluster"]["connect_timeout"] == "1s"
            assert "connect_timeout" in clusters["error_state"]["details"]
            assert clusters["error_state"]["version_info"] == "2"
            ads.set_snapshot("3", snapshot([up["v2"]]))
            ads.wait_ack(CLUSTER, "3")
            ads.wait_ack(ENDPOINT, "3")
            wait_until(lambda: client.get(f"{URL}/").headers["x-upstream"] == "v2")


def test_a_regex_that_does_not_compile_is_nacked_naming_the_route(ads: AdsServer, bootstrap: Path) -> None:
    with upstreams("v1") as up:
        ads.set_snapshot("1", snapshot([up["v1"]]))
        with mesh_for(bootstrap, targets=[AUTHORITY]) as mesh, mesh.client() as client:
            ads.wait_ack(ENDPOINT, "1")
            ads.set_snapshot("2", snapshot([up["v1"]], routes=[route(regex="/api/(unclosed", cluster="reviews")]))
            nack = ads.wait_nack(ROUTE)
            assert "RouteConfiguration 'reviews-routes'" in nack.error_detail.message
            assert "virtual_hosts[0].routes[0].match.safe_regex.regex" in nack.error_detail.message
            assert nack.version_info == "1"
            assert client.get(f"{URL}/anything").status_code == 200


def test_an_eds_update_moves_traffic_within_a_second(ads: AdsServer, bootstrap: Path) -> None:
    with upstreams("v1", "v2") as up:
        ads.set_snapshot("1", snapshot([up["v1"]]))
        with mesh_for(bootstrap, targets=[AUTHORITY]) as mesh, mesh.client() as client:
            assert client.get(f"{URL}/").headers["x-upstream"] == "v1"
            changed = time.monotonic()
            ads.set_snapshot("2", snapshot([up["v2"]]))
            wait_until(lambda: client.get(f"{URL}/").headers["x-upstream"] == "v2", timeout=1.0)
            assert time.monotonic() - changed < 1.0


def test_the_control_plane_goes_away_and_comes_back_without_a_failed_request(ads: AdsServer, bootstrap: Path) -> None:
    with upstreams("v1") as up:
        ads.set_snapshot("1", snapshot([up["v1"]]))
        with mesh_for(bootstrap, targets=[AUTHORITY]) as mesh, mesh.client() as client:
            ads.wait_ack(ENDPOINT, "1")
            streams = ads.streams_opened
            ads.stop()
            wait_until(lambda: not mesh.stats()["xds"]["connected"])
            for _ in range(20):  # served from the last accepted resources meanwhile
                assert client.get(f"{URL}/").status_code == 200
            ads.restart()
            wait_until(lambda: ads.streams_opened > streams, timeout=5)
            stream = ads.streams_opened
            for type_url in (LISTENER, ROUTE, CLUSTER, ENDPOINT):  # each type ACKed again on the new stream
                ads.wait_for(_acked, type_url=type_url, min_stream=stream)
            first = ads.stream_requests(stream)[0]
            assert first.node.id == NODE_ID, "the new stream's first request carries the node again"
            assert first.version_info == "1", "and asks from the version it has"
            assert client.get(f"{URL}/").status_code == 200
            assert mesh.stats()["xds"]["streams"] >= 2


def _acked(request: Any) -> bool:
    return request.response_nonce != "" and not request.HasField("error_detail")


def test_weighted_clusters_split_traffic(ads: AdsServer, bootstrap: Path) -> None:
    with upstreams("v1", "v2") as up:
        resources = snapshot([up["v1"]], routes=[route(prefix="/", weighted=[("reviews", 80), ("reviews-v2", 20)])])
        resources[CLUSTER].append(eds_cluster("reviews-v2"))
        resources[ENDPOINT].append(load_assignment("reviews-v2", [("127.0.0.1", up["v2"].port)]))
        ads.set_snapshot("1", resources)
        with mesh_for(bootstrap, targets=[AUTHORITY]) as mesh, mesh.client() as client:
            seen = [client.get(f"{URL}/").headers["x-upstream"] for _ in range(400)]
        share = seen.count("v1") / len(seen)
        assert 0.74 < share < 0.86  # 80% ± about 3 standard deviations of 400 draws


def test_a_missing_bootstrap_or_extra_is_a_config_error_at_start(tmp_path: Path) -> None:
    config = MeshConfig.from_dict({"xds": {"bootstrap": str(tmp_path / "none.json")}})
    with pytest.raises(meshlib.ConfigError) as info:
        meshlib.Mesh(config)
    assert info.value.errors[0][0] == "xds.bootstrap"
    assert "No such file or directory" in info.value.errors[0][1]


def test_the_sidecar_admin_config_dump_shows_each_resource_and_its_version(ads: AdsServer, bootstrap: Path) -> None:
    with upstreams("v1") as up:
        ads.set_snapshot("7", snapshot([up["v1"]]))
        with mesh_for(bootstrap, targets=[AUTHORITY]) as mesh:
            ads.wait_ack(ENDPOINT, "7")
            from meshlib._sidecar.admin import config_dump

            dump = config_dump(mesh)["xds"]
            by_type = {c["@type"].rsplit(".", 1)[1]: c for c in dump["configs"]}
            listener = by_type["ListenersConfigDump"]["dynamic_listeners"][0]
            assert listener["name"] == AUTHORITY
            assert listener["active_state"]["version_info"] == "7"
            assert by_type["RoutesConfigDump"]["dynamic_route_configs"][0]["route_config"]["name"] == "reviews-routes"
            cla = by_type["EndpointsConfigDump"]["dynamic_endpoint_configs"][0]
            assert cla["endpoint_config"]["cluster_name"] == "reviews"
            assert cla["version_info"] == "7"
            assert "error_state" not in by_type["ClustersConfigDump"]


def test_a_request_through_httpx_gets_a_clear_error_for_a_listener_without_routes(
    ads: AdsServer, bootstrap: Path
) -> None:
    """A listener whose route configuration has no virtual host for it answers 404, as Envoy's NR."""
    with upstreams("v1") as up:
        resources = snapshot([up["v1"]])
        resources[ROUTE] = [route_configuration("reviews-routes", [virtual_host("other", ["other:1"], [])])]
        ads.set_snapshot("1", resources)
        with mesh_for(bootstrap, targets=[AUTHORITY]) as mesh, mesh.client() as client:
            response = client.get(f"{URL}/")
            assert response.status_code == 404
            assert up["v1"].total == 0
    assert isinstance(response, httpx.Response)


def test_without_the_extra_a_mesh_with_xds_says_what_to_install(
    bootstrap: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from meshlib._xds import protos

    protos.protos.cache_clear()
    monkeypatch.setitem(sys.modules, "grpc", None)  # what `import grpc` meets where grpcio is not installed
    try:
        with pytest.raises(meshlib.ConfigError) as info:
            mesh_for(bootstrap)
    finally:
        protos.protos.cache_clear()
    assert info.value.errors == [
        (
            "xds",
            "xDS needs grpcio and xds-protos (grpc is missing):"
            " install the xds extra (from a clone: pip install '.[xds]')",
        )
    ]


def test_two_listeners_share_one_route_configuration_and_istio_style_cluster_names_work(
    ads: AdsServer, bootstrap: Path
) -> None:
    """istiod names clusters outbound|PORT||HOST; meshlib's cluster names are host names, so it maps them."""
    istio = "outbound|9080||reviews.default.svc.cluster.local"
    other = "reviews.default:9080"
    with upstreams("v1") as up:
        resources = {
            LISTENER: [api_listener(AUTHORITY, "shared"), api_listener(other, "shared")],
            ROUTE: [
                route_configuration(
                    "shared", [virtual_host("reviews", [AUTHORITY, other], [route(prefix="/", cluster=istio)])]
                )
            ],
            CLUSTER: [eds_cluster(istio)],
            ENDPOINT: [load_assignment(istio, [("127.0.0.1", up["v1"].port)])],
        }
        ads.set_snapshot("1", resources)
        with mesh_for(bootstrap, targets=[AUTHORITY, other]) as mesh, mesh.client() as client:
            assert client.get(f"{URL}/").headers["x-upstream"] == "v1"
            assert client.get(f"http://{other}/").headers["x-upstream"] == "v1"
            assert list(ads.requests(ROUTE)[0].resource_names) == ["shared"]
            names = list(mesh.stats()["clusters"])
            assert len(names) == 1
            assert names[0].startswith("outbound_9080__reviews.default.svc.cluster.local")


def test_a_file_reload_keeps_the_xds_routes_beside_the_file_s_own(
    ads: AdsServer, bootstrap: Path, tmp_path: Path
) -> None:
    import yaml

    with upstreams("v1", "local") as up:
        ads.set_snapshot("1", snapshot([up["v1"]]))
        path = tmp_path / "mesh.yaml"

        def write(local_path: str) -> None:
            path.write_text(
                yaml.safe_dump(
                    {
                        "xds": {"bootstrap": str(bootstrap), "targets": [AUTHORITY]},
                        "clusters": {"local": {"endpoints": [f"http://127.0.0.1:{up['local'].port}"]}},
                        "routes": [{"match": {"host": "app", "path_prefix": local_path}, "cluster": "local"}],
                    }
                )
            )

        write("/a")
        with meshlib.Mesh.from_file(path) as mesh, mesh.client() as client:
            ads.wait_ack(ENDPOINT, "1")
            assert client.get(f"{URL}/").headers["x-upstream"] == "v1"
            assert client.get("http://app/a").headers["x-upstream"] == "local"
            write("/b")
            mesh.reload(path)
            assert client.get("http://app/b").headers["x-upstream"] == "local"
            assert client.get(f"{URL}/").headers["x-upstream"] == "v1", "the reload kept what xDS said"
            ads.set_snapshot("2", snapshot([up["local"]]))
            wait_until(lambda: client.get(f"{URL}/").headers["x-upstream"] == "local")
            assert client.get("http://app/b").headers["x-upstream"] == "local", "and xDS kept what the file said"


def test_a_file_cluster_with_the_name_of_an_xds_cluster_is_nacked(ads: AdsServer, bootstrap: Path) -> None:
    with upstreams("v1") as up:
        ads.set_snapshot("1", snapshot([up["v1"]]))
        config = {
            "xds": {"bootstrap": str(bootstrap), "targets": [AUTHORITY]},
            "clusters": {"reviews": {"endpoints": [f"http://127.0.0.1:{up['v1'].port}"]}},
        }
        with meshlib.Mesh(MeshConfig.from_dict(config)):
            # The route configuration is the first resource to name the cluster: it is the one refused.
            nack = ads.wait_for(lambda r: r.HasField("error_detail"))
        assert nack.type_url == ROUTE
        assert "clusters.reviews: defined by the file and by xDS" in nack.error_detail.message
