"""``hedge``: a second try for an idempotent request that has not answered after ``after``."""

from __future__ import annotations

from typing import ClassVar

from meshlib._background import Background
from meshlib._config.resilience import HedgeConfig
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler
from meshlib._upstream.cluster import ClusterState

__all__ = ["HedgeFilter"]


class HedgeFilter:
    """SKELETON (helper replaces)."""

    name: ClassVar[str] = "hedge"

    def __init__(self, config: HedgeConfig, state: ClusterState, background: Background) -> None:
        self.config = config

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        raise NotImplementedError

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        raise NotImplementedError
