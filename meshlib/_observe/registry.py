"""A mesh's observers, made from its config and kept across reloads while their config section is unchanged.

A tracer provider, a metrics registry and an access log's writer live as
long as the mesh does: rebuilding them per reload would lose counters and
queued spans. Each kind is imported only when a config turns it on, so a
mesh without ``tracing:`` never imports OpenTelemetry.
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING, Any, Protocol

from meshlib._observe.observers import Observer, Observers

if TYPE_CHECKING:
    from meshlib._config.models import MeshConfig
    from meshlib._snapshot.compile import Runtime

__all__ = ["KINDS", "ObserverRegistry"]

# The config section of each kind, and the order observers are told in (tracing first: the others log its trace id).
KINDS: tuple[str, ...] = ("tracing", "metrics", "access_log")


class _Factory(Protocol):
    def __call__(self, section: Any, config: MeshConfig, runtime: Runtime) -> Observer: ...


def _factory(kind: str) -> _Factory:
    module = importlib.import_module(f"meshlib._observe.{kind}")
    factory: _Factory = module.build
    return factory


class ObserverRegistry:
    """The live observers of one mesh, by kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, tuple[object, Observer]] = {}

    def observers_for(self, config: MeshConfig, runtime: Runtime) -> Observers | None:
        """The observers ``config`` turns on (None when it turns on none); those whose section changed are remade.

        All or nothing: every new observer is built before any replaces the one
        in force, so a build that fails (an access log file that can't be
        opened) leaves the mesh reporting as it did.
        """
        with self._lock:
            wanted: dict[str, tuple[object, Observer | None]] = {}
            for kind in KINDS:
                section = getattr(config, kind)
                if kind == "metrics" and section is not None and not section.enabled:
                    section = None
                if section is None:
                    continue
                key = (section, config.service)
                live = self._live.get(kind)
                wanted[kind] = (key, live[1] if live is not None and live[0] == key else None)
            built: list[Observer] = []
            try:
                for kind, (wanted_key, found) in wanted.items():
                    if found is None:
                        found = _factory(kind)(getattr(config, kind), config, runtime)
                        built.append(found)
                        wanted[kind] = (wanted_key, found)
            except BaseException:
                for observer in built:
                    observer.close()
                raise
            retired = [live for kind, (_, live) in self._live.items() if wanted.get(kind, (None, None))[1] is not live]
            self._live = {kind: (k, found) for kind, (k, found) in wanted.items() if found is not None}
            members = [observer for _, observer in self._live.values()]
        # Closing flushes what is queued (at most about a second for spans to a slow collector): reloads run off
        # the sidecar's event loop and the request path, so they may wait for it.
        for observer in retired:
            observer.close()
        return Observers(members) if members else None

    def get(self, kind: str) -> Observer | None:
        """The live observer of ``kind`` (``tracing``, ``metrics``, ``access_log``), if the config turns it on."""
        with self._lock:
            live = self._live.get(kind)
        return None if live is None else live[1]

    def stats(self) -> dict[str, Any]:
        """Each live observer's own stats (e.g. spans exported and dropped), by kind."""
        with self._lock:
            live = list(self._live.items())
        return {kind: observer.stats() for kind, (_, observer) in live}

    def close(self) -> None:
        """Close every observer (flush spans, stop writers); the mesh is closing."""
        with self._lock:
            live = [observer for _, observer in self._live.values()]
            self._live.clear()
        for observer in live:
            observer.close()
