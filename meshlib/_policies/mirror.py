"""``mirror``: send a copy of a share of requests to a shadow cluster, without waiting for or using its answer."""

from __future__ import annotations

import random
from typing import ClassVar

from meshlib._background import Background
from meshlib._config.resilience import MirrorConfig
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler
from meshlib._engine.cluster_stack import Leg

__all__ = ["MirrorFilter"]


class MirrorFilter:
    """SKELETON (helper replaces)."""

    name: ClassVar[str] = "mirror"

    def __init__(self, config: MirrorConfig, shadow: Leg, rng: random.Random, background: Background) -> None:
        self.config = config

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        raise NotImplementedError

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        raise NotImplementedError
