"""Load balancers: pick one endpoint of a cluster for a request. One small class each.

Every picker takes ``exclude`` (endpoints the caller does not want: ejected,
unhealthy, or already tried by this request) and returns None when it
excludes them all; the cluster decides what to do then.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
from collections.abc import Collection, Sequence
from functools import reduce
from typing import ClassVar, Final, Protocol

import httpx

from meshlib._httpx_shortcuts import header_value
from meshlib._upstream.endpoint import Endpoint

__all__ = ["LeastRequest", "LoadBalancer", "RandomLB", "RingHash", "RoundRobin", "build_lb"]

_next: Final = next  # bound once: compiled, a builtin is looked up on the builtins module at each use


class LoadBalancer(Protocol):
    """Chooses an endpoint for a request."""

    name: ClassVar[str]

    def pick(self, request: httpx.Request, exclude: Collection[Endpoint] = ()) -> Endpoint | None: ...


def _smooth_wrr_schedule(weights: Sequence[int], limit: int = 10_000) -> list[int]:
    """nginx's smooth weighted round robin, unrolled into one cycle of endpoint indexes.

    Weights 5, 1, 1 give ``0 0 1 0 2 0 0``: heavy endpoints are spread out,
    not sent bursts. Weights are divided by their gcd and scaled down if one
    cycle would exceed ``limit`` entries.
    """
    divisor = reduce(math.gcd, weights)
    if divisor == weights[0] and all(w == divisor for w in weights):
        return list(range(len(weights)))  # equal weights: plain turns (the loop below is quadratic)
    ws = [w // divisor for w in weights]
    total = sum(ws)
    if total > limit:
        ws = [max(1, round(w * limit / total)) for w in ws]
        total = sum(ws)
    current = [0] * len(ws)
    schedule = []
    for _ in range(total):
        for i, w in enumerate(ws):
            current[i] += w
        best = max(range(len(ws)), key=current.__getitem__)
        current[best] -= total
        schedule.append(best)
    return schedule


class RoundRobin:
    """Weighted round robin: each endpoint gets its weight's share, spread evenly in turn."""

    name: ClassVar[str] = "round_robin"

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = tuple(endpoints)
        self._schedule = tuple(self._endpoints[i] for i in _smooth_wrr_schedule([e.weight for e in endpoints]))
        # itertools.count's next() is atomic under the GIL: no lock on the hot path.
        self._counter = itertools.count()

    def pick(self, request: httpx.Request, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        schedule = self._schedule
        start = _next(self._counter)
        if not exclude:
            return schedule[start % len(schedule)]
        for step in range(len(schedule)):
            endpoint = schedule[(start + step) % len(schedule)]
            if endpoint not in exclude:
                return endpoint
        return None


class RandomLB:
    """Weighted random: each pick is independent, with probability proportional to weight."""

    name: ClassVar[str] = "random"

    def __init__(self, endpoints: Sequence[Endpoint], rng: random.Random) -> None:
        self._endpoints = tuple(endpoints)
        self._cum = list(itertools.accumulate(e.weight for e in endpoints))
        self._rng = rng

    def _draw(self, endpoints: Sequence[Endpoint], cum: Sequence[int]) -> Endpoint:
        return endpoints[bisect.bisect_right(cum, self._rng.random() * cum[-1])]

    def pick(self, request: httpx.Request, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        if exclude:
            rest = [e for e in self._endpoints if e not in exclude]
            return self._draw(rest, list(itertools.accumulate(e.weight for e in rest))) if rest else None
        return self._draw(self._endpoints, self._cum)


class LeastRequest:
    """Power of two choices: draw two endpoints by weight, send to the one with fewer in flight.

    Load is compared as ``in_flight / weight``, so a weight-3 endpoint takes
    about three times the concurrent requests of a weight-1 one; a tie (such as
    two idle endpoints) keeps the first draw, so light traffic is shared by weight.
    """

    name: ClassVar[str] = "least_request"

    def __init__(self, endpoints: Sequence[Endpoint], rng: random.Random) -> None:
        self._random = RandomLB(endpoints, rng)
        self._single = len(endpoints) == 1

    def pick(self, request: httpx.Request, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        first = self._random.pick(request, exclude)
        if self._single or first is None:
            return first
        # Two distinct endpoints: draw again from all first (cheap), and only when that repeats `first`
        # pay for a weight table without it, so a two-endpoint cluster always compares both.
        second = self._random.pick(request, exclude)
        if second is first:
            second = self._random.pick(request, (*exclude, first))
        if second is None or second is first:
            return first
        # second.in_flight / second.weight < first.in_flight / first.weight, without division.
        if second.in_flight * first.weight < first.in_flight * second.weight:
            return second
        return first


def _hash64(data: str) -> int:
    return int.from_bytes(hashlib.md5(data.encode(), usedforsecurity=False).digest()[:8], "big")


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None


class RingHash:
    """Consistent hashing (ketama): the same key always reaches the same endpoint.

    Each endpoint owns ``POINTS_PER_WEIGHT × weight`` points on a 64-bit ring,
    placed by hashing its URL, so removing an endpoint only remaps the keys it
    owned. A request without the key is sent to a random endpoint (as Envoy does).
    """

    name: ClassVar[str] = "ring_hash"
    POINTS_PER_WEIGHT: ClassVar[int] = 160
    MAX_POINTS: ClassVar[int] = 100_000

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        rng: random.Random,
        *,
        header: str | None = None,
        cookie: str | None = None,
    ) -> None:
        # As httpx's raw entries hold the name (lower-case bytes; the config checks that it is a token).
        self._header = header.lower().encode("ascii") if header is not None else None
        self._cookie = cookie
        self._fallback = RandomLB(endpoints, rng)
        total = sum(e.weight for e in endpoints) * self.POINTS_PER_WEIGHT
        scale = min(1.0, self.MAX_POINTS / total)
        points = sorted(
            (_hash64(f"{e.url}#{i}"), n)
            for n, e in enumerate(endpoints)
            for i in range(max(1, round(e.weight * self.POINTS_PER_WEIGHT * scale)))
        )
        self._hashes = [h for h, _ in points]
        self._owners = [endpoints[n] for _, n in points]

    def key(self, request: httpx.Request) -> str | None:
        """The value this ring hashes for ``request``, or None when the request lacks it."""
        if self._header is not None:
            return header_value(request.headers, self._header)
        assert self._cookie is not None
        # HTTP/2 allows one cookie header per cookie (RFC 9113 §8.2.3); httpx would join them with ", ".
        headers = request.headers.get_list("cookie")
        return _cookie("; ".join(headers), self._cookie) if headers else None

    def pick(self, request: httpx.Request, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        key = self.key(request)
        if key is None:
            return self._fallback.pick(request, exclude)
        start = bisect.bisect_left(self._hashes, _hash64(key))
        owners = self._owners
        for step in range(len(owners)):
            endpoint = owners[(start + step) % len(owners)]
            if endpoint not in exclude:
                return endpoint
        return None


class NoEndpoints:
    """The balancer of a cluster whose discovery has found no endpoint (yet): nothing to pick."""

    name: ClassVar[str] = "none"

    def pick(self, request: httpx.Request, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        return None


def build_lb(
    kind: str,
    endpoints: Sequence[Endpoint],
    rng: random.Random,
    *,
    header: str | None = None,
    cookie: str | None = None,
) -> LoadBalancer:
    """The load balancer named ``kind`` (a config ``lb`` value) over ``endpoints``."""
    if not endpoints:
        return NoEndpoints()
    if kind == "round_robin":
        return RoundRobin(endpoints)
    if kind == "random":
        return RandomLB(endpoints, rng)
    if kind == "least_request":
        return LeastRequest(endpoints, rng)
    if kind == "ring_hash":
        return RingHash(endpoints, rng, header=header, cookie=cookie)
    raise ValueError(f"unknown load balancer {kind!r}")
