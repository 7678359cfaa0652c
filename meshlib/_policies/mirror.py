"""``mirror``: send a copy of a share of requests to a shadow cluster, without waiting for or using its answer.

The last route filter, so the shadow sees the request as the primary cluster
does (headers edited, path rewritten). As in Envoy, the copy's Host gets a
``-shadow`` suffix so the shadow can tell mirrored traffic from real traffic,
and the copy is fire-and-forget: it runs in the background (a worker thread
for sync callers, a task for async ones), its answer is read and dropped and
its errors are swallowed. Only bodies held in memory can be copied; a request
with a streaming body goes to the primary alone.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import ClassVar

import httpx

from meshlib._background import Background
from meshlib._config.resilience import MirrorConfig
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler, context_of
from meshlib._engine.cluster_stack import Leg
from meshlib._engine.context import EXTENSION

__all__ = ["MAX_OUTSTANDING", "MirrorFilter", "MirrorPolicy", "shadow_host"]

# Copies queued or in flight per mirror, beyond which new ones are dropped (``mirror_overflow``): a slow
# shadow must not grow the background queue without bound (Envoy bounds it with the shadow cluster's
# max_pending_requests, 1024 by default).
MAX_OUTSTANDING = 1024


def shadow_host(host: str) -> str:
    """Envoy's shadow authority: ``reviews`` → ``reviews-shadow``, ``reviews:8080`` → ``reviews-shadow:8080``."""
    head, colon, port = host.rpartition(":")
    if colon and port.isdigit() and (head.endswith("]") or ":" not in head):
        return f"{head}-shadow:{port}"
    return f"{host}-shadow"


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    """Which requests are mirrored (an independent draw each), and what the copy looks like."""

    percent: float
    rng: random.Random

    def sample(self) -> bool:
        """Whether this request is mirrored: ``percent``% of requests, each drawn independently."""
        if self.percent >= 100:
            return True
        return self.percent > 0 and self.rng.random() * 100 < self.percent

    @staticmethod
    def copyable(request: Request) -> bool:
        """Only a body held in memory can be sent twice; a streaming one is read once, by the primary."""
        return isinstance(request.stream, httpx.ByteStream)

    @staticmethod
    def shadow_request(request: Request) -> Request:
        """The copy: same method, URL, headers and body, Host suffixed, and a fresh context of its own."""
        ctx = context_of(request).fork()
        # The copy is a new call: no tries yet, and no share of the caller's deadline.
        ctx.tried, ctx.attempt, ctx.deadline = [], 1, None
        ctx.cluster = ctx.endpoint = None
        # Fire-and-forget: the shadow's tries are not the caller's request's (its span, its log line).
        ctx.exchange = ctx.observers = None
        headers = request.headers.copy()
        headers["host"] = shadow_host(headers.get("host") or request.url.netloc.decode("ascii"))
        return httpx.Request(
            request.method,
            request.url,
            headers=headers,
            stream=request.stream,
            extensions={**request.extensions, EXTENSION: ctx},
        )


class MirrorFilter:
    """Sends a copy of ``percent``% of the route's requests through ``shadow``, then the request itself.

    Counted on the shadow cluster: ``mirrored`` (copies sent), ``mirror_failed``
    (of those, the ones whose send raised; a 5xx answer is not a failure of
    the mirror), ``mirror_skipped`` (drawn but not copyable: a streaming body,
    or a closed mesh) and ``mirror_overflow`` (dropped: too many copies pending).
    """

    name: ClassVar[str] = "mirror"

    def __init__(self, config: MirrorConfig, shadow: Leg, rng: random.Random, background: Background) -> None:
        self.policy = MirrorPolicy(config.percent, rng)
        self.shadow = shadow
        self.state = shadow.cluster.state
        self.background = background
        self._lock = threading.Lock()
        self._outstanding = 0

    def _copy(self, request: Request) -> Request | None:
        """The shadow copy to send, or None (not drawn, not copyable, or too many pending)."""
        if not self.policy.sample():
            return None
        if not self.policy.copyable(request) or self.background.closed:
            self.state.count("mirror_skipped")
            return None
        with self._lock:
            if self._outstanding >= MAX_OUTSTANDING:
                self.state.count("mirror_overflow")
                return None
            self._outstanding += 1
        self.state.count("mirrored")
        return self.policy.shadow_request(request)

    def _release(self) -> None:
        with self._lock:
            self._outstanding -= 1

    def _send(self, copy: Request) -> None:
        try:
            response = self.shadow.handle(copy)
            try:
                response.read()
            finally:
                response.close()
        except Exception:  # the shadow's failures are never the caller's
            self.state.count("mirror_failed")
        finally:
            self._release()

    async def _send_async(self, copy: Request) -> None:
        try:
            response = await self.shadow.handle_async(copy)
            try:
                await response.aread()
            finally:
                await response.aclose()
        except Exception:  # the shadow's failures are never the caller's
            self.state.count("mirror_failed")
        finally:
            self._release()

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        copy = self._copy(request)
        if copy is not None:
            try:
                self.background.submit(self._send, copy)
            except RuntimeError:  # the mesh closed since _copy looked
                self.state.count("mirror_failed")
                self._release()
        return call_next(request)

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        copy = self._copy(request)
        if copy is not None:
            try:
                self.background.spawn(self._send_async(copy))
            except RuntimeError:  # the mesh closed since _copy looked
                self.state.count("mirror_failed")
                self._release()
        return await call_next(request)
