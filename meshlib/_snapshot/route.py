"""CompiledRoute: one route's match predicates, policies and composed handlers, frozen."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from meshlib._engine.base import AsyncHandler, Filter, SyncHandler
from meshlib._snapshot.matchers import Predicate

__all__ = ["CompiledRoute"]


@dataclass(frozen=True, slots=True, eq=False)
class CompiledRoute:
    """A route ready to serve: ``matches`` decides, ``handle``/``handle_async`` carry it out.

    ``implicit`` marks the route every cluster gets for its own name as host
    (``http://ratings/``), placed after all configured routes.
    """

    name: str
    index: int
    host: str | None
    predicates: tuple[Predicate, ...]
    filters: Sequence[Filter]
    clusters: tuple[str, ...]
    handle: SyncHandler = field(repr=False)
    handle_async: AsyncHandler = field(repr=False)
    implicit: bool = False

    def matches(self, request: httpx.Request, path: str) -> bool:
        for predicate in self.predicates:  # noqa: SIM110 - a plain loop beats all(genexpr) on the hot path
            if not predicate(request, path):
                return False
        return True

    @property
    def filter_names(self) -> list[str]:
        return [f.name for f in self.filters]
