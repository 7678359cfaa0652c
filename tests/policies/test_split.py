"""Weighted split: accurate proportions over many requests, each request's choice drawn independently."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import given, settings, strategies as st

import meshlib
from meshlib._config.models import RouteConfig
from meshlib._policies.split import SplitPolicy
from tests.conftest import MakeMesh

N = 10_000
PORTS = {9081: "v1", 9082: "v2", 9083: "v3"}


def _config(weights: dict[str, int]) -> dict[str, Any]:
    return {
        "clusters": {name: {"endpoints": [f"http://127.0.0.1:{port}"]} for port, name in PORTS.items()},
        "routes": [{"match": {"host": "reviews"}, "split": [{"cluster": c, "weight": w} for c, w in weights.items()]}],
    }


def _draw(mesh: meshlib.Mesh, n: int = N) -> list[str]:
    """Send ``n`` requests through the mesh's transport over a zero-I/O inner; the cluster of each, in order."""
    chosen: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        assert request.url.port is not None
        chosen.append(PORTS[request.url.port])
        return httpx.Response(204)

    transport = mesh.transport(inner=httpx.MockTransport(upstream))
    request = httpx.Request("GET", "http://reviews/")
    for _ in range(n):
        transport.handle_request(request)
    return chosen


def _runs_z(sequence: list[str], target: str) -> float:
    """Wald-Wolfowitz runs test statistic for ``target`` vs the rest (|z| is large when draws are not independent)."""
    marks = [c == target for c in sequence]
    n1 = sum(marks)
    n2 = len(marks) - n1
    runs = 1 + sum(a != b for a, b in itertools.pairwise(marks))
    mean = 2 * n1 * n2 / (n1 + n2) + 1
    variance = (mean - 1) * (mean - 2) / (n1 + n2 - 1)
    return (runs - mean) / math.sqrt(variance)


def test_95_5_split_is_within_one_point_and_draws_are_independent(make_mesh: MakeMesh) -> None:
    chosen = _draw(make_mesh(_config({"v1": 95, "v2": 5}), seed=2024))
    assert len(chosen) == N
    share = chosen.count("v2") / N
    assert abs(share - 0.05) <= 0.01
    # Independence: after a v2 the next request is still v2 about 5% of the time (a deterministic
    # interleaving, like smooth round robin, would never repeat v2), and the runs test agrees.
    after_v2 = [b for a, b in itertools.pairwise(chosen) if a == "v2"]
    assert abs(after_v2.count("v2") / len(after_v2) - 0.05) <= 0.03
    assert abs(_runs_z(chosen, "v2")) < 4


def test_95_5_split_without_a_seed_is_within_one_point(make_mesh: MakeMesh) -> None:
    """±1 point is more than four standard deviations at 10,000 requests, so any seed passes."""
    chosen = _draw(make_mesh(_config({"v1": 95, "v2": 5}), seed=None))
    assert abs(chosen.count("v2") / N - 0.05) <= 0.01
    assert abs(_runs_z(chosen, "v2")) < 4.5


def test_three_way_split_is_within_one_point_for_every_leg(make_mesh: MakeMesh) -> None:
    chosen = Counter(_draw(make_mesh(_config({"v1": 70, "v2": 20, "v3": 10}), seed=99)))
    for cluster, expected in {"v1": 0.70, "v2": 0.20, "v3": 0.10}.items():
        assert abs(chosen[cluster] / N - expected) <= 0.01, (cluster, chosen)


def test_equal_split_is_not_an_alternation(make_mesh: MakeMesh) -> None:
    chosen = _draw(make_mesh(_config({"v1": 1, "v2": 1}), seed=5), n=2_000)
    assert abs(chosen.count("v1") / len(chosen) - 0.5) <= 0.05
    assert abs(_runs_z(chosen, "v1")) < 4


def test_same_seed_gives_the_same_sequence(make_mesh: MakeMesh) -> None:
    first = _draw(make_mesh(_config({"v1": 50, "v2": 30, "v3": 20}), seed=3), n=500)
    second = _draw(make_mesh(_config({"v1": 50, "v2": 30, "v3": 20}), seed=3), n=500)
    assert first == second


class _Evenly(random.Random):
    """A stand-in rng whose draws sweep [0, 1) in ``n`` equal steps, so every weight slot is hit exactly once."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self._n = n
        self._i = 0

    def random(self) -> float:
        value = (self._i + 0.5) / self._n
        self._i += 1
        return value


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.integers(min_value=1, max_value=50), min_size=2, max_size=6))
def test_each_leg_owns_exactly_its_weights_share_of_the_draw_range(weights: list[int]) -> None:
    route = RouteConfig.model_validate({"split": [{"cluster": f"c{i}", "weight": w} for i, w in enumerate(weights)]})
    total = sum(weights)
    policy = SplitPolicy.from_route(route, _Evenly(total))
    picked = Counter(policy.pick() for _ in range(total))
    assert picked == {f"c{i}": w for i, w in enumerate(weights)}


def test_a_single_cluster_route_needs_no_draw() -> None:
    class NoDraws(random.Random):
        def random(self) -> float:
            raise AssertionError("drew a random number for a one-cluster route")

    policy = SplitPolicy.from_route(RouteConfig.model_validate({"cluster": "only"}), NoDraws())
    assert {policy.pick() for _ in range(10)} == {"only"}


@pytest.mark.anyio
async def test_async_split_lands_within_one_point(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(_config({"v1": 95, "v2": 5}), seed=11)
    chosen: Counter[int | None] = Counter()

    def upstream(request: httpx.Request) -> httpx.Response:
        chosen[request.url.port] += 1
        return httpx.Response(204)

    transport = mesh.async_transport(inner=httpx.MockTransport(upstream))
    request = httpx.Request("GET", "http://reviews/")
    for _ in range(N):
        await transport.handle_async_request(request)
    assert abs(chosen[9082] / N - 0.05) <= 0.01
