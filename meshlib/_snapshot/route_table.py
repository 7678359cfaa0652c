"""RouteTable.match(request) → CompiledRoute | None: first match wins, hosts indexed."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from meshlib._config.hosts import host_matches
from meshlib._engine.urls import path_of
from meshlib._snapshot.matchers import MatchInput
from meshlib._snapshot.route import CompiledRoute

__all__ = ["RouteTable"]


class RouteTable:
    """Routes in config order, with the candidates for each exact host precomputed.

    A request only walks the routes that could apply to its host (those naming
    it, naming a matching wildcard, or naming no host), still in config
    order, so first-match-wins holds and a table of many hosts stays fast.
    """

    def __init__(self, routes: Sequence[CompiledRoute]) -> None:
        self.routes = tuple(routes)
        # Routes whose host is a pattern (or absent) must be checked against any host.
        self._generic = tuple(r for r in self.routes if r.host is None or "*" in r.host)
        self._any_wildcard = any(r.host is not None for r in self._generic)
        hosts = {r.host for r in self.routes if r.host is not None and "*" not in r.host}
        self._by_host = {
            host: tuple(r for r in self.routes if r.host is None or host_matches(r.host, host)) for host in hosts
        }

    def candidates(self, host: str) -> tuple[CompiledRoute, ...]:
        found = self._by_host.get(host)
        if found is not None:
            return found
        if not self._any_wildcard:
            return self._generic
        return tuple(r for r in self._generic if r.host is None or host_matches(r.host, host))

    def match(self, request: httpx.Request) -> CompiledRoute | None:
        m = MatchInput(request, path_of(request.url))
        for route in self.candidates(request.url.host):
            # Inlined CompiledRoute.matches: this loop is the hottest in the engine.
            for predicate in route.predicates:
                if not predicate(m):
                    break
            else:
                return route
        return None
