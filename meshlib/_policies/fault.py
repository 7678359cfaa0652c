"""``fault``: injected delays and aborts, by percent, so callers can rehearse failure."""

from __future__ import annotations

import random
from typing import ClassVar

from meshlib._clock import Clock
from meshlib._config.resilience import FaultConfig
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler
from meshlib._upstream.cluster import ClusterState

__all__ = ["FaultFilter"]


class FaultFilter:
    """SKELETON (helper replaces)."""

    name: ClassVar[str] = "fault"

    def __init__(self, config: FaultConfig, rng: random.Random, clock: Clock, states: list[ClusterState]) -> None:
        self.config = config

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        raise NotImplementedError

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        raise NotImplementedError
