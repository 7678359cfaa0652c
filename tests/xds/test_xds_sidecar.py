"""``meshlib proxy`` driven by xDS: any client pointing at the sidecar gets the control plane's routes, and the
admin's ``/config_dump`` and ``/stats`` show the resources, their versions and the last NACK."""

from __future__ import annotations

import time
from pathlib import Path

from tests.sidecar import proxy_process
from tests.xds.ads_server import CLUSTER, ENDPOINT, AdsServer
from tests.xds.apps import upstreams
from tests.xds.test_xds_mesh import AUTHORITY, URL, snapshot


def test_the_sidecar_routes_by_xds_and_its_admin_shows_each_resource(
    ads: AdsServer, bootstrap: Path, tmp_path: Path
) -> None:
    with upstreams("v1", "v2") as up:
        ads.set_snapshot("1", snapshot([up["v1"]]))
        config = {"xds": {"bootstrap": str(bootstrap), "targets": [AUTHORITY]}}
        with proxy_process.running(tmp_path, config) as proxy, proxy.client() as client:
            assert client.get(f"{URL}/api").headers["x-upstream"] == "v1"
            # xDS resources become config models as they arrive: the proxy started again, same pid, with pydantic.
            assert proxy_process.loads_pydantic(proxy.proc.pid)
            ads.set_snapshot("2", snapshot([up["v2"]], connect_timeout=0.0))  # NACKed: the cluster's rule
            nack = ads.wait_nack(CLUSTER)
            assert "connect_timeout: must be greater than 0s" in nack.error_detail.message
            ads.wait_ack(ENDPOINT, "2")
            dump = client.get(f"{proxy.admin_url}/config_dump").json()["xds"]
            by_type = {c["@type"].rsplit(".", 1)[1]: c for c in dump["configs"]}
            clusters = by_type["ClustersConfigDump"]
            assert clusters["version_info"] == "1"
            assert clusters["error_state"]["version_info"] == "2"
            assert "connect_timeout" in clusters["error_state"]["details"]
            assert by_type["EndpointsConfigDump"]["dynamic_endpoint_configs"][0]["version_info"] == "2"
            assert by_type["ListenersConfigDump"]["dynamic_listeners"][0]["name"] == AUTHORITY
            stats = client.get(f"{proxy.admin_url}/stats").json()
            assert stats["xds"]["types"]["Cluster"]["nacks"] == 1
            # The CLA of version 2 was valid: the cluster of version 1 now routes to its new endpoint.
            deadline = time.monotonic() + 5
            while client.get(f"{URL}/api").headers["x-upstream"] != "v2":
                assert time.monotonic() < deadline, "the sidecar did not move to the new endpoint"
                time.sleep(0.02)
