"""A real Envoy configured only by an :class:`~tests.xds.ads_server.AdsServer` (LDS and CDS over ADS).

Its bootstrap holds the node, the ADS config and one static cluster, ``xds``
(HTTP/2 to the ADS server); everything else comes from the server's snapshot.
The ADS stream reconnects after 50 ms (up to 500 ms) instead of Envoy's default
500 ms (up to 30 s), so a server restart is seen at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.envoy_process import RunningEnvoy, running_envoy
from tests.xds.ads_server import AdsServer

__all__ = ["EnvoyOnAds", "bootstrap", "envoy_on_ads"]

_ADS = {"ads": {}, "resource_api_version": "V3"}


def bootstrap(ads: AdsServer, node_id: str) -> dict[str, Any]:
    """The v3 bootstrap of an Envoy taking its listeners and clusters from ``ads`` (no admin: added on start)."""
    return {
        "node": {"id": node_id, "cluster": "test"},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": "xds",
                            "retry_policy": {"retry_back_off": {"base_interval": "0.05s", "max_interval": "0.5s"}},
                        }
                    }
                ],
                "set_node_on_first_message_only": True,
            },
            "lds_config": _ADS,
            "cds_config": _ADS,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {"address": "127.0.0.1", "port_value": ads.port}
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                }
            ]
        },
    }


@dataclass
class EnvoyOnAds:
    """A running Envoy fed by ADS: its admin URL, log and node id, and waits on what it has applied."""

    envoy: RunningEnvoy
    node_id: str

    @property
    def admin(self) -> str:
        return self.envoy.admin

    @property
    def log(self) -> Path:
        return self.envoy.log

    def listener_port(self, name: str, timeout: float = 10) -> int:
        """The port of the LDS listener ``name`` once it is active (bound; warm: its routes have come)."""
        deadline = time.monotonic() + timeout
        seen: Any = None
        while True:
            seen = self._admin_json("/listeners?format=json")
            for entry in seen.get("listener_statuses", []) if seen else []:
                if entry.get("name") == name:
                    port = int(entry.get("local_address", {}).get("socket_address", {}).get("port_value", 0))
                    if port:
                        return port
            if time.monotonic() > deadline:
                raise AssertionError(f"listener {name!r} not up within {timeout} s; listeners: {seen}\n{self._tail()}")
            time.sleep(0.02)

    def cluster_endpoints(self, cluster: str) -> set[str] | None:
        """The ``host:port`` of each host Envoy has in ``cluster`` now (None: no such cluster)."""
        data = self._admin_json("/clusters?format=json")
        for status in data.get("cluster_statuses", []) if data else []:
            if status.get("name") == cluster:
                return {
                    f"{h['address']['socket_address']['address']}:{h['address']['socket_address']['port_value']}"
                    for h in status.get("host_statuses", [])
                }
        return None

    def wait_cluster_endpoints(
        self, cluster: str, addresses: Iterable[str | tuple[str, int]], timeout: float = 5.0
    ) -> None:
        """Wait until Envoy's hosts of ``cluster`` are ``addresses`` (``"host:port"`` or ``(host, port)``)."""
        want = {a if isinstance(a, str) else f"{a[0]}:{a[1]}" for a in addresses}
        deadline = time.monotonic() + timeout
        while True:
            have = self.cluster_endpoints(cluster)
            if have == want:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"cluster {cluster!r} has {have}, not {sorted(want)}, after {timeout} s\n{self._tail()}"
                )
            time.sleep(0.02)

    def _admin_json(self, path: str) -> Any:
        try:
            return httpx.get(f"{self.admin}{path}", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None

    def _tail(self) -> str:
        return "envoy log (end):\n" + self.log.read_text(errors="replace")[-3000:]


@contextmanager
def envoy_on_ads(
    ads: AdsServer, workdir: Path, *, node_id: str = "envoy-peer", timeout: float = 30.0
) -> Iterator[EnvoyOnAds]:
    """Run an Envoy on ``ads`` (started) until the block ends.

    It is yielded once its admin answers, maybe before its first xDS fetch is
    done: wait with :meth:`EnvoyOnAds.listener_port` or the server's ``wait_ack``.
    """
    if not ads.port:
        raise RuntimeError("start the AdsServer first")
    with running_envoy(bootstrap(ads, node_id), workdir, timeout=timeout, require_live=False) as envoy:
        yield EnvoyOnAds(envoy, node_id)
