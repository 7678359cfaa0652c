"""RouteTable.match(request) → CompiledRoute | None: first match wins, hosts indexed, long lists indexed by path."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from meshlib._config.hosts import host_matches
from meshlib._engine.urls import host_of, path_of
from meshlib._snapshot.matchers import MatchInput
from meshlib._snapshot.route import CompiledRoute

__all__ = ["PathIndex", "RouteTable"]

# From this many candidates on, a host's routes are walked through a PathIndex: below it, trying each route's
# predicates costs less than looking the path up.
INDEX_FROM = 8


class PathIndex:
    """Routes in config order, and which of them a path can match, by their path literals (exact or prefix).

    Each route is a bit (its position); a path's bits are those of the routes with no path literal, of the exact
    literal equal to it, and of the prefix literals it starts with (one dict lookup per distinct prefix length).
    Walking the set bits low to high keeps config order, so first-match-wins holds; each route's predicates,
    its path check included, still decide.
    """

    __slots__ = ("_always", "_exact", "_prefixes", "routes")

    def __init__(self, routes: Sequence[CompiledRoute]) -> None:
        self.routes = tuple(routes)
        always = 0
        exact: dict[str, int] = {}
        by_length: dict[int, dict[str, int]] = {}
        for position, route in enumerate(self.routes):
            bit = 1 << position
            if route.path_literal is None:
                always |= bit
                continue
            literal, is_exact = route.path_literal
            table = exact if is_exact else by_length.setdefault(len(literal), {})
            table[literal] = table.get(literal, 0) | bit
        self._always = always
        self._exact = exact
        self._prefixes = tuple(sorted(by_length.items()))

    def bits(self, path: str) -> int:
        """The routes ``path`` may match, as bits of their positions."""
        bits = self._always | self._exact.get(path, 0)
        size = len(path)
        for length, literals in self._prefixes:
            if length > size:
                break
            bits |= literals.get(path[:length], 0)
        return bits


class RouteTable:
    """Routes in config order, with the candidates for each exact host precomputed.

    A request only walks the routes that could apply to its host (those naming
    it, naming a matching wildcard, or naming no host), still in config
    order, so first-match-wins holds and a table of many hosts stays fast. A
    host with many candidates walks only those its path can match (PathIndex).
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
        self._indexes = {host: PathIndex(found) for host, found in self._by_host.items() if len(found) >= INDEX_FROM}
        self._generic_index = (
            PathIndex(self._generic) if not self._any_wildcard and len(self._generic) >= INDEX_FROM else None
        )
        self._any_index = bool(self._indexes) or self._generic_index is not None

    def candidates(self, host: str) -> tuple[CompiledRoute, ...]:
        found = self._by_host.get(host)
        if found is not None:
            return found
        if not self._any_wildcard:
            return self._generic
        return tuple(r for r in self._generic if r.host is None or host_matches(r.host, host))

    def match(self, request: httpx.Request) -> CompiledRoute | None:
        url = request.url
        m = MatchInput(request, path_of(url))
        host = host_of(url)
        index = None
        if self._any_index:  # a table of few routes per host (most) skips the index lookups
            index = self._indexes.get(host)
            if index is None and host not in self._by_host:
                index = self._generic_index
        if index is not None:
            routes = index.routes
            bits = index.bits(m.path)
            while bits:
                low = bits & -bits
                route = routes[low.bit_length() - 1]
                for predicate in route.predicates:
                    if not predicate(m):
                        break
                else:
                    return route
                bits ^= low
            return None
        for route in self.candidates(host):
            # Inlined CompiledRoute.matches: this loop is the hottest in the engine.
            for predicate in route.predicates:
                if not predicate(m):
                    break
            else:
                return route
        return None
