"""Live state keyed by cluster name and endpoint URL, carried from one snapshot to the next."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from meshlib._upstream.cluster import ClusterState
from meshlib._upstream.endpoint import EndpointState

__all__ = ["StateRegistry"]


class StateRegistry:
    """Hands the compiler the live state for a cluster or endpoint, creating it on first use.

    A reload compiles a new snapshot against the same registry, so a cluster
    or endpoint that still exists keeps its counters; :meth:`retain` then
    drops the state of what the new config removed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clusters: dict[str, ClusterState] = {}
        self._endpoints: dict[tuple[str, str], EndpointState] = {}

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

    def retain(self, endpoints: Iterable[tuple[str, str]]) -> None:
        """Forget every cluster and endpoint not in ``endpoints`` ((cluster, url) pairs)."""
        keep = set(endpoints)
        clusters = {c for c, _ in keep}
        with self._lock:
            self._endpoints = {k: v for k, v in self._endpoints.items() if k in keep}
            self._clusters = {k: v for k, v in self._clusters.items() if k in clusters}
