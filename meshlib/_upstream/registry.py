"""Live state keyed by cluster name and endpoint URL, carried from one snapshot to the next, changed only whole."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from meshlib._upstream.cluster import ClusterState
from meshlib._upstream.endpoint import Endpoint, EndpointState
from meshlib._upstream.recent_errors import RecentErrors

__all__ = ["StateRegistry"]

logger = logging.getLogger("meshlib.config")

T = TypeVar("T")
_Key = tuple[str, Hashable]


def _close(obj: object) -> None:
    close = getattr(obj, "close", None)
    if close is not None:
        close()


@dataclass
class _Changes:
    """What one compile uses and builds: applied whole by a commit, or dropped."""

    clusters: dict[str, ClusterState] = field(default_factory=dict)
    endpoints: dict[tuple[str, str], Endpoint] = field(default_factory=dict)
    components: dict[_Key, tuple[Any, Any]] = field(default_factory=dict)
    # Built by this compile, in order, each with what starts it once committed.
    made: list[tuple[Any, Callable[[Any], None] | None]] = field(default_factory=list)


class StateRegistry:
    """Hands the compiler the live state for clusters, endpoints and policies, creating it on first use.

    A compile runs inside :meth:`transaction`, against the same registry as
    the snapshot before it: a cluster or endpoint that still exists keeps its
    counters, and a policy component (breaker, budget, limiter, outlier
    detector, health checker) whose config did not change keeps its state.
    Nothing the running snapshot uses is touched until the compile succeeds:
    then the new state is committed whole (new components started, those it
    replaced or no longer uses closed); if the compile fails, what it built is
    closed unstarted and the old state serves on, intact.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the committed state below
        self._compiling = threading.Lock()  # one transaction at a time
        self._clusters: dict[str, ClusterState] = {}
        self._endpoints: dict[tuple[str, str], Endpoint] = {}
        self._components: dict[_Key, tuple[Any, Any]] = {}
        self._changes: _Changes | None = None
        # The mesh's recent errors, shared by its clusters (the admin page's "recent errors").
        self.recent_errors = RecentErrors()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Compile inside this block: committed when it ends normally, discarded when it raises."""
        with self._compiling:
            changes = self._changes = _Changes()
            try:
                yield
            except BaseException:
                self._changes = None
                for obj, _ in changes.made:
                    _close(obj)
                raise
            self._changes = None
            self._commit(changes)

    def _pending(self) -> _Changes:
        if self._changes is None:
            raise RuntimeError("the state registry is changed only inside transaction()")
        return self._changes

    def cluster(self, name: str) -> ClusterState:
        changes = self._pending()
        state = changes.clusters.get(name)
        if state is None:
            with self._lock:
                state = self._clusters.get(name) or ClusterState(name, self.recent_errors)
            changes.clusters[name] = state
        return state

    def endpoints(self, cluster: str, given: Iterable[tuple[str, int]]) -> tuple[Endpoint, ...]:
        """The endpoints ``(url, weight)`` of ``cluster``, each with its live state, created on first use.

        An endpoint that stays from one compile to the next is the same object (its URL parsed once): discovery
        can give a cluster thousands and change one of them. One lock for all of them.
        """
        changes = self._pending()
        pending = changes.endpoints
        out = []
        with self._lock:
            committed = self._endpoints
            for url, weight in given:
                key = (cluster, url)
                endpoint = pending.get(key) or committed.get(key)
                if endpoint is None:
                    endpoint = Endpoint(url, weight, httpx.URL(url), EndpointState())
                elif endpoint.weight != weight:
                    endpoint = Endpoint(url, weight, endpoint.origin, endpoint.state)
                pending[key] = endpoint
                out.append(endpoint)
        return tuple(out)

    def component(
        self,
        kind: str,
        key: Hashable,
        config: Any,
        factory: Callable[[], T],
        *,
        start: Callable[[T], None] | None = None,
    ) -> T:
        """The live ``kind`` object for ``key``: kept while ``config`` is unchanged, else built anew.

        A new object must not act on shared state until ``start(obj)`` (called on commit):
        a compile that fails must leave nothing behind.
        """
        changes = self._pending()
        found = changes.components.get((kind, key))
        if found is None:
            with self._lock:
                found = self._components.get((kind, key))
        if found is not None and found[0] == config:
            changes.components[(kind, key)] = found
            kept: T = found[1]
            return kept
        made = factory()
        changes.components[(kind, key)] = (config, made)
        changes.made.append((made, start))
        return made

    def _commit(self, changes: _Changes) -> None:
        with self._lock:
            old = self._components
            self._clusters = changes.clusters
            self._endpoints = changes.endpoints
            self._components = changes.components
        live = {id(obj) for _, obj in changes.components.values()}
        # New components start before the ones they replace close: a new health checker takes over the
        # endpoints (and their verdicts) from the old one.
        for obj, start in changes.made:
            if id(obj) not in live:  # replaced again later in the same compile
                _close(obj)
            elif start is not None:
                try:
                    start(obj)
                except Exception as exc:  # the snapshot is in: a component that cannot start must not undo it
                    logger.error("starting %r failed: %r", obj, exc)
        for _, obj in old.values():
            if id(obj) not in live:
                _close(obj)

    def get(self, kind: str, key: Hashable) -> Any:
        """The live ``kind`` object for ``key`` (of the last committed compile), or None."""
        with self._lock:
            found = self._components.get((kind, key))
        return None if found is None else found[1]

    def close(self) -> None:
        """Close every component that has background work (health checkers) and forget them all."""
        with self._lock:
            objects = [obj for _, obj in self._components.values()]
            self._components = {}
        for obj in objects:
            _close(obj)
