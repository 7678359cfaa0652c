"""Outlier detection: eject endpoints that fail in a row, for base_ejection_time × times ejected."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from meshlib._clock import Clock
from meshlib._config.resilience import OutlierDetectionConfig
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler
from meshlib._upstream.cluster import ClusterState
from meshlib._upstream.endpoint import Endpoint

__all__ = ["OutlierDetector", "OutlierFilter"]


class OutlierDetector:
    """SKELETON (helper replaces): records try outcomes per endpoint and ejects/returns endpoints."""

    def __init__(self, config: OutlierDetectionConfig, cluster: ClusterState, clock: Clock) -> None:
        self.config = config
        self.cluster = cluster
        self.clock = clock

    def record(self, endpoints: Sequence[Endpoint], endpoint: Endpoint, failed: bool) -> None:
        raise NotImplementedError


class OutlierFilter:
    """SKELETON (helper replaces): reports each try's outcome at the endpoint level."""

    name: ClassVar[str] = "outlier"

    def __init__(self, detector: OutlierDetector, endpoints: Sequence[Endpoint]) -> None:
        self.detector = detector
        self.endpoints = endpoints

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        raise NotImplementedError

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        raise NotImplementedError
