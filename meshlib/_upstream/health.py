"""Active health checks: probe each endpoint in the background; unhealthy ones leave the load balancer."""

from __future__ import annotations

from collections.abc import Sequence

from meshlib._clock import Clock
from meshlib._config.resilience import HealthCheckConfig
from meshlib._upstream.cluster import ClusterState
from meshlib._upstream.endpoint import Endpoint

__all__ = ["HealthChecker"]


class HealthChecker:
    """SKELETON (helper replaces): a background prober of one cluster's endpoints."""

    def __init__(
        self, config: HealthCheckConfig, cluster: ClusterState, endpoints: Sequence[Endpoint], clock: Clock
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.endpoints = endpoints
        self.clock = clock

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError
