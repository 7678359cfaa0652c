"""meshlib.testing: a fake clock and assertion helpers for resilience tests (fixtures: ``meshlib._testing_plugin``).

Installing meshlib registers a pytest plugin (the ``pytest11`` entry point
``meshlib``) with two fixtures, ``mesh_clock`` and ``mesh_factory``; this
module holds what they are built from, usable without pytest too::

    from meshlib.testing import FakeClock, assert_counters

    clock = FakeClock()
    mesh = meshlib.Mesh.from_dict(config, clock=clock, rng=random.Random(0))
    ...                                   # send requests through mesh.client()
    clock.advance(30)                     # a breaker's recovery_timeout passes at once
    assert_counters(mesh, "reviews", retries=2)

See docs/testing.md.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import anyio.lowlevel

from meshlib._clock import Clock, SystemClock

if TYPE_CHECKING:
    from meshlib._config.models import MeshConfig
    from meshlib._mesh import Mesh

__all__ = ["Clock", "FakeClock", "MeshFactory", "SystemClock", "assert_counters", "stats_of"]


class FakeClock:
    """A :class:`Clock` whose time moves only when something sleeps on it or a test calls :meth:`advance`.

    Give it to a mesh (``Mesh(config, clock=FakeClock())``) and everything the
    mesh times by its clock — retry backoff, retry budgets, the request
    deadline checked between tries, outlier ejection, breaker recovery —
    happens without real waiting. ``sleep`` and ``asleep`` advance the time
    at once by what was asked (``asleep`` still yields to the event loop once,
    as a real sleep would) and append it to :attr:`sleeps`, so a test can
    check the backoff the mesh chose. Safe to use from several threads.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._now = float(start)
        #: Every sleep so far, in seconds, oldest first (``advance`` is not a sleep).
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The fake time now, in seconds."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (by hand, not recorded as a sleep); returns the new time."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back (advance({seconds!r}))")
        with self._lock:
            self._now += seconds
            return self._now

    def sleep(self, seconds: float) -> None:
        """Record the sleep and advance time by it, without waiting (a negative sleep counts as 0)."""
        seconds = max(0.0, float(seconds))
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds

    async def asleep(self, seconds: float) -> None:
        """The async twin of :meth:`sleep`; yields to the event loop once, as ``anyio.sleep(0)`` does."""
        self.sleep(seconds)
        await anyio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"FakeClock(now={self.monotonic()!r}, sleeps={len(self.sleeps)})"


class MeshFactory(Protocol):
    """The ``mesh_factory`` fixture's type: ``mesh_factory(config, *, seed=0, clock=None)`` → a :class:`meshlib.Mesh`.

    ``config`` is a dict (as parsed from YAML), a :class:`meshlib.MeshConfig`
    or the path of a YAML/JSON file. ``seed`` seeds the mesh's rng (splits,
    load balancing, jitter, faults; ``None`` for an unseeded one); ``clock``
    defaults to the test's ``mesh_clock`` (pass ``SystemClock()`` for real time).
    """

    def __call__(
        self,
        config: Mapping[str, Any] | MeshConfig | str | os.PathLike[str],
        *,
        seed: int | None = 0,
        clock: Clock | None = None,
    ) -> Mesh: ...


def stats_of(mesh: Mesh, cluster: str) -> dict[str, int]:
    """The counters ``cluster`` has in ``mesh.stats()``: what its policies did (``retries``, ``breaker_open``…).

    A counter that was never incremented is absent (read it with ``.get(key, 0)``).
    Raises ``KeyError`` naming the known clusters when ``cluster`` is not one of them.
    """
    clusters: Mapping[str, Any] = mesh.stats()["clusters"]
    if cluster not in clusters:
        raise KeyError(f"no cluster {cluster!r} in this mesh (clusters: {', '.join(sorted(clusters)) or 'none'})")
    counters: dict[str, int] = dict(clusters[cluster]["counters"])
    return counters


def assert_counters(mesh: Mesh, cluster: str, /, **expected: int) -> None:
    """Assert that ``cluster``'s counters have the given values (a counter never incremented is 0).

    Only the named counters are compared; the error lists each difference and
    then every counter, e.g.::

        AssertionError: counters of cluster 'reviews' differ:
          retries: expected 2, got 1
          retry_budget_exhausted: expected 0, got 3
        all counters: {'retried_requests': 1, 'retries': 1, 'retry_budget_exhausted': 3}
    """
    actual = stats_of(mesh, cluster)
    diffs = [
        f"  {key}: expected {want!r}, got {actual.get(key, 0)!r}"
        for key, want in expected.items()
        if actual.get(key, 0) != want
    ]
    if diffs:
        lines = [f"counters of cluster {cluster!r} differ:", *diffs, f"all counters: {dict(sorted(actual.items()))}"]
        raise AssertionError("\n".join(lines))
