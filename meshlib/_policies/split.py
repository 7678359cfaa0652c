"""``split``: choose a cluster for each request by weight, independently per request."""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass

from meshlib._config.models import RouteConfig

__all__ = ["SplitPolicy"]


@dataclass(frozen=True, slots=True)
class SplitPolicy:
    """Picks ``clusters[i]`` with probability ``weight[i] / sum(weights)``; one cluster needs no draw."""

    clusters: tuple[str, ...]
    cumulative: tuple[int, ...]
    rng: random.Random

    @classmethod
    def from_route(cls, route: RouteConfig, rng: random.Random) -> SplitPolicy:
        if route.split is None:
            assert route.cluster is not None
            return cls((route.cluster,), (1,), rng)
        return cls(
            tuple(leg.cluster for leg in route.split),
            tuple(itertools.accumulate(leg.weight for leg in route.split)),
            rng,
        )

    def pick(self) -> str:
        if len(self.clusters) == 1:
            return self.clusters[0]
        draw = self.rng.random() * self.cumulative[-1]
        return self.clusters[bisect.bisect_right(self.cumulative, draw)]
