"""``headers``: edits to request headers on the way upstream and response headers on the way back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import httpx

from meshlib._config.models import HeaderOpsConfig, RouteHeadersConfig
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler

__all__ = ["HeaderOpsPolicy", "HeadersFilter"]


@dataclass(frozen=True, slots=True)
class HeaderOpsPolicy:
    """Removes, then sets (replacing), then adds (appending) headers."""

    remove: tuple[str, ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_config(cls, config: HeaderOpsConfig) -> HeaderOpsPolicy:
        return cls(tuple(config.remove), tuple(config.set.items()), tuple(config.add.items()))

    def __bool__(self) -> bool:
        return bool(self.remove or self.set or self.add)

    def apply(self, headers: httpx.Headers) -> None:
        for name in self.remove:
            headers.pop(name, None)
        for name, value in self.set:
            headers[name] = value
        for name, value in self.add:
            # httpx.Headers has no public append; its list holds (raw name, lower name, value).
            headers._list.append((name.encode(), name.encode(), value.encode()))


class HeadersFilter:
    """Applies a route's request header edits before sending and response edits after."""

    name: ClassVar[str] = "headers"

    def __init__(self, request: HeaderOpsPolicy, response: HeaderOpsPolicy) -> None:
        self.request = request
        self.response = response

    @classmethod
    def from_config(cls, config: RouteHeadersConfig | None) -> HeadersFilter | None:
        if config is None:
            return None
        request, response = HeaderOpsPolicy.from_config(config.request), HeaderOpsPolicy.from_config(config.response)
        return cls(request, response) if request or response else None

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        self.request.apply(request.headers)
        response = call_next(request)
        self.response.apply(response.headers)
        return response

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        self.request.apply(request.headers)
        response = await call_next(request)
        self.response.apply(response.headers)
        return response
