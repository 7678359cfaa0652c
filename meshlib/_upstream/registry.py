"""Live state keyed by cluster name and endpoint URL, carried from one snapshot to the next."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Any, TypeVar

from meshlib._upstream.cluster import ClusterState
from meshlib._upstream.endpoint import EndpointState

__all__ = ["StateRegistry"]

T = TypeVar("T")


class StateRegistry:
    """Hands the compiler the live state for clusters, endpoints and policies, creating it on first use.

    A reload compiles a new snapshot against the same registry, so a cluster
    or endpoint that still exists keeps its counters, and a policy component
    (breaker, budget, limiter, outlier detector) whose config did not change
    keeps its state. :meth:`retain` then drops what the new config no longer uses.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clusters: dict[str, ClusterState] = {}
        self._endpoints: dict[tuple[str, str], EndpointState] = {}
        self._components: dict[tuple[str, Hashable], tuple[Any, Any]] = {}
        self._used: set[tuple[str, Hashable]] = set()

    def cluster(self, name: str) -> ClusterState:
        with self._lock:
            state = self._clusters.get(name)
            if state is None:
                state = self._clusters[name] = ClusterState(name)
            return state

    def endpoint(self, cluster: str, url: str) -> EndpointState:
        with self._lock:
            state = self._endpoints.get((cluster, url))
            if state is None:
                state = self._endpoints[(cluster, url)] = EndpointState()
            return state

    def component(self, kind: str, key: Hashable, config: Any, factory: Callable[[], T]) -> T:
        """The live ``kind`` object for ``key``: kept while ``config`` is unchanged, else built anew."""
        with self._lock:
            found = self._components.get((kind, key))
            self._used.add((kind, key))
            if found is not None and found[0] == config:
                kept: T = found[1]
                return kept
        made = factory()
        with self._lock:
            old = self._components.get((kind, key))
            self._components[(kind, key)] = (config, made)
        if old is not None and hasattr(old[1], "close"):
            old[1].close()
        return made

    def get(self, kind: str, key: Hashable) -> Any:
        """The live ``kind`` object for ``key``, or None."""
        with self._lock:
            found = self._components.get((kind, key))
        return None if found is None else found[1]

    def close(self) -> None:
        """Close every component that has background work (health checkers) and forget them all."""
        with self._lock:
            objects = [obj for _, obj in self._components.values()]
            self._components = {}
        for obj in objects:
            if hasattr(obj, "close"):
                obj.close()

    def retain(self, endpoints: Iterable[tuple[str, str]]) -> None:
        """Forget every cluster and endpoint not in ``endpoints`` ((cluster, url) pairs), and unused components."""
        keep = set(endpoints)
        clusters = {c for c, _ in keep}
        with self._lock:
            self._endpoints = {k: v for k, v in self._endpoints.items() if k in keep}
            self._clusters = {k: v for k, v in self._clusters.items() if k in clusters}
            dropped = [obj for key, (_, obj) in self._components.items() if key not in self._used]
            self._components = {k: v for k, v in self._components.items() if k in self._used}
            self._used = set()
        for obj in dropped:
            if hasattr(obj, "close"):
                obj.close()
