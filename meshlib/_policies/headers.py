"""``headers``: edits to request headers on the way upstream and response headers on the way back."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
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
    # Compiled form: lower-case names to drop (remove ∪ set) and httpx header entries to append (set + add).
    _drop: frozenset[bytes] = field(default=frozenset(), repr=False)
    _append: tuple[tuple[bytes, bytes, bytes], ...] = field(default=(), repr=False)

    @classmethod
    def from_config(cls, config: HeaderOpsConfig) -> HeaderOpsPolicy:
        drop = frozenset(name.encode() for name in (*config.remove, *config.set))
        append = tuple((n.encode(), n.encode(), v.encode()) for n, v in (*config.set.items(), *config.add.items()))
        return cls(tuple(config.remove), tuple(config.set.items()), tuple(config.add.items()), drop, append)

    def __bool__(self) -> bool:
        return bool(self.remove or self.set or self.add)

    def apply(self, headers: httpx.Headers) -> None:
        # httpx.Headers keeps (raw name, lower name, value) entries in `_list` and has no public append;
        # one pass over it costs a fraction of a pop() and a __setitem__ per edit, which each rescan
        # and re-encode every header (benchmarks/bench_core.py).
        entries = headers._list
        if self._drop:
            entries[:] = [entry for entry in entries if entry[1] not in self._drop]
        entries.extend(self._append)


class HeadersFilter:
    """Applies a route's request header edits before sending and response edits after."""

    name: ClassVar[str] = "headers"

    def __init__(self, request: HeaderOpsPolicy, response: HeaderOpsPolicy) -> None:
        self.request = request
        self.response = response
        self._edits_response = bool(response)

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

    def handle_async(self, request: Request, call_next: AsyncHandler) -> Awaitable[Response]:
        self.request.apply(request.headers)
        if not self._edits_response:  # nothing to do on the way back: the caller awaits the next handler itself
            return call_next(request)
        return self._edited(request, call_next)

    async def _edited(self, request: Request, call_next: AsyncHandler) -> Response:
        response = await call_next(request)
        self.response.apply(response.headers)
        return response
