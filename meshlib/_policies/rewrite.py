"""``rewrite``: replace the matched path prefix and/or the Host header before the request goes upstream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from meshlib._config.models import RouteConfig
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler
from meshlib._engine.urls import path_of, with_path

__all__ = ["RewriteFilter", "RewritePolicy"]


@dataclass(frozen=True, slots=True)
class RewritePolicy:
    """``matched`` is the route's path prefix (its exact path, or ``/`` with no path match)."""

    matched: str | None
    replacement: str | None
    host: str | None

    @classmethod
    def from_route(cls, route: RouteConfig) -> RewritePolicy | None:
        if route.rewrite is None:
            return None
        matched = route.match.path_prefix or route.match.path or "/"
        return cls(matched, route.rewrite.path_prefix, route.rewrite.host)

    def apply(self, request: Request) -> None:
        if self.replacement is not None and self.matched is not None:
            path = path_of(request.url)
            if path.startswith(self.matched):
                request.url = with_path(request.url, self.replacement + path[len(self.matched) :])
        if self.host is not None:
            request.headers["host"] = self.host


class RewriteFilter:
    """Applies a :class:`RewritePolicy` to the outgoing request."""

    name: ClassVar[str] = "rewrite"

    def __init__(self, policy: RewritePolicy) -> None:
        self.policy = policy

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        self.policy.apply(request)
        return call_next(request)

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        self.policy.apply(request)
        return await call_next(request)
