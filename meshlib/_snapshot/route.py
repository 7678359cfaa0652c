"""CompiledRoute: one route's match predicates, policies and composed handlers, frozen."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from meshlib._engine.base import AsyncHandler, Filter, SyncHandler
from meshlib._engine.cluster_stack import Leg
from meshlib._engine.urls import path_of
from meshlib._snapshot.matchers import MatchInput, Predicate

__all__ = ["CompiledRoute"]


@dataclass(frozen=True, slots=True, eq=False)
class CompiledRoute:
    """A route ready to serve: ``matches`` decides, ``handle``/``handle_async`` carry it out.

    ``filters``, ``handle`` and ``handle_async`` are the route's stack, as
    ``_engine/route_stack.py``'s ``build_route_stack`` composed it; the engine
    sees a CompiledRoute as a ``route_stack.Route``.

    ``implicit`` marks the route every cluster gets for its own name as host
    (``http://ratings/``), placed after all configured routes. ``path_literal``
    is what a path must be, ``(path, True)``, or start with, ``(prefix, False)``,
    for the route to match (``matchers.path_literal``): the route table's index.
    """

    name: str
    index: int
    host: str | None
    predicates: tuple[Predicate, ...]
    filters: Sequence[Filter]
    clusters: tuple[str, ...]
    legs: Mapping[str, Leg] = field(repr=False)
    handle: SyncHandler = field(repr=False)
    handle_async: AsyncHandler = field(repr=False)
    implicit: bool = False
    path_literal: tuple[str, bool] | None = None

    def matches(self, request: httpx.Request) -> bool:
        """Whether every predicate but the host holds (the route table checks hosts)."""
        m = MatchInput(request, path_of(request.url))
        return all(predicate(m) for predicate in self.predicates)

    @property
    def filter_names(self) -> list[str]:
        return [f.name for f in self.filters]
