"""Resilience benchmark: the engine's cost with every policy configured but idle, and a retry storm.

1. The engine alone over a zero-I/O transport, for bench_core's config of 50
   routes and 20 clusters, with and without every resilience policy on every
   cluster and route (timeouts, retries with budgets, breaker, outlier
   detection, health checks, rate limit, hedging, faults and mirroring at 0%).
   Nothing fails, so the policies only pay their bookkeeping. Target: at most
   2× the core engine's cost.
   Also printed, without a target: sync hedging over a sender the mesh cannot
   interrupt (a worker thread per hedged request), and the in-memory moving
   window's cost per hit, meshlib's against the ``limits`` library's.
2. A retry storm: an upstream failing every request (503), 3 attempts, a retry
   budget of 20% plus 10 retries/s, at 1,000 requests/s of simulated time.
   Upstream calls per request, against the same without a budget (3.0).

Run: ``python benchmarks/bench_resilience.py [--quick]`` (also ``nox -s bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import math
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx
import limits
import limits.storage
import limits.strategies
from bench_core import (
    FULL,
    QUICK,
    AsyncZeroIO,
    Rates,
    Sizes,
    ZeroIO,
    _engine_row,
    _engine_setup,
    engine_batch,
    engine_batch_async,
    interleave,
    interleave_async,
)

import meshlib
from meshlib._policies.rate_limit import MovingWindow

TARGET_IDLE_RATIO = 2.0

POLICIES: dict[str, Any] = {
    "connect_timeout": "250ms",
    "timeout": "2s",
    "retry": {
        "attempts": 3,
        "per_try_timeout": "500ms",
        "retry_on": ["connect-failure", "reset", "5xx"],
        "retriable_status_codes": [409],
        "backoff": {"base": "25ms", "max": "250ms"},
        "budget": {"ratio": 0.2, "min_retries_per_second": 10},
    },
    "circuit_breaker": {"failure_threshold": 5, "recovery_timeout": "30s", "max_concurrent_requests": 1024},
    "outlier_detection": {
        "consecutive_5xx": 5,
        "interval": "10s",
        "base_ejection_time": "30s",
        "max_ejection_percent": 50,
    },
    # Probes go to loopback ports nobody listens on, once an hour: never enough failures to matter here.
    "health_check": {"path": "/healthz", "interval": "1h", "timeout": "1s", "unhealthy_threshold": 3},
    "rate_limit": {"rate": "1000000/second"},
    "hedge": {"after": "1s", "max_extra": 1},
}
ROUTE_POLICIES: dict[str, Any] = {
    "fault": {"delay": {"duration": "100ms", "percent": 0}, "abort": {"status": 503, "percent": 0}},
}


class FakeClock:
    """Simulated time: sleeping advances it at once; the storm advances it by hand."""

    START = 1000.0

    def __init__(self) -> None:
        self._now = self.START
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0))

    async def asleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0))


class InterruptibleZeroIO(ZeroIO):
    """A zero-I/O sender that a hedge may run inline, as it runs tries over the mesh's own ``httpx.HTTPTransport``.

    The mesh lets a winning hedge interrupt a sync try blocked in a socket read
    of httpx's HTTP/1.1 transport (``_engine/interrupt.py``), so it runs first
    tries inline there; senders it cannot interrupt (respx, custom transports)
    get a worker thread per hedged request instead. This sender never blocks,
    so the mark is true of it; the "uninterruptible sender" row shows the
    worker-thread path's cost.
    """

    _meshlib_interruptible = True


def _with_policies(config: dict[str, Any], skip: Sequence[str] = ()) -> dict[str, Any]:
    config = copy.deepcopy(config)
    for i, cluster in enumerate(config["clusters"].values()):
        cluster.update({k: copy.deepcopy(v) for k, v in POLICIES.items() if k not in skip})
        cluster["endpoints"] = [{"url": f"http://127.0.0.1:{20000 + 3 * i + j}", "weight": 1 + j % 2} for j in range(3)]
    for route in config["routes"]:
        route.update(copy.deepcopy(ROUTE_POLICIES))
        first = route.get("cluster") or route["split"][0]["cluster"]
        route["mirror"] = {"cluster": first, "percent": 0}
    return config


def idle_rows(sizes: Sizes, skip: Sequence[str] = ()) -> list[tuple[str, float, float]]:
    """(case, core µs, with policies µs) for sync and async, each net of the zero-I/O transport."""
    core, requests = _engine_setup()
    config = _with_policies(core.config.model_dump(mode="json", exclude_none=True), skip)
    with_policies = meshlib.Mesh.from_dict(config)
    n, cap = sizes.engine_batch, sizes.budget
    try:
        bare = ZeroIO()
        base_rates = interleave(sizes, lambda: engine_batch(bare, requests, n, cap), lambda: (n, 1.0))
        rates: Rates = interleave(
            sizes,
            lambda: engine_batch(core.transport(inner=ZeroIO()), requests, n, cap),
            lambda: engine_batch(with_policies.transport(inner=InterruptibleZeroIO()), requests, n, cap),
        )
        zero = 1e6 / max(base_rates[0])
        sync = _engine_row("sync", rates)
        rows = [("engine, sync", sync.bare - zero, sync.mesh - zero)]

        async def run_async() -> tuple[Rates, Rates]:
            bare = AsyncZeroIO()

            async def nothing() -> tuple[int, float]:
                return n, 1.0

            base = await interleave_async(sizes, lambda: engine_batch_async(bare, requests, n, cap), nothing)
            core_t, pol_t = (
                core.async_transport(inner=AsyncZeroIO()),
                with_policies.async_transport(inner=AsyncZeroIO()),
            )
            both = await interleave_async(
                sizes,
                lambda: engine_batch_async(core_t, requests, n, cap),
                lambda: engine_batch_async(pol_t, requests, n, cap),
            )
            return base, both

        base_async, rates_async = asyncio.run(run_async())
        zero_async = 1e6 / max(base_async[0])
        row = _engine_row("async", rates_async)
        rows.append(("engine, async", row.bare - zero_async, row.mesh - zero_async))
        return rows
    finally:
        core.close()
        with_policies.close()


def uninterruptible_row(sizes: Sizes) -> tuple[str, float, float]:
    """Sync, all policies, over a sender a hedge cannot interrupt: every hedged request takes a worker thread."""
    core, requests = _engine_setup()
    with_policies = meshlib.Mesh.from_dict(_with_policies(core.config.model_dump(mode="json", exclude_none=True)))
    n, cap = sizes.engine_batch, sizes.budget
    try:
        bare = ZeroIO()
        base_rates = interleave(sizes, lambda: engine_batch(bare, requests, n, cap), lambda: (n, 1.0))
        rates = interleave(
            sizes,
            lambda: engine_batch(core.transport(inner=ZeroIO()), requests, n, cap),
            lambda: engine_batch(with_policies.transport(inner=ZeroIO()), requests, n, cap),
        )
        zero = 1e6 / max(base_rates[0])
        row = _engine_row("sync", rates)
        return ("engine, sync, all policies, uninterruptible sender", row.bare - zero, row.mesh - zero)
    finally:
        core.close()
        with_policies.close()


def limiter_rows(hits: int) -> list[tuple[str, float, float]]:
    """(rate, limits µs per hit, meshlib µs per hit) for the in-memory moving window, best of 3."""
    rows = []
    for rate in ("100/second", "10000/second", "1000000/second"):
        item = limits.parse(rate)

        def limits_batch(item: limits.RateLimitItem = item) -> float:
            strategy = limits.strategies.MovingWindowRateLimiter(limits.storage.MemoryStorage())
            start = time.perf_counter()
            for _ in range(hits):
                strategy.hit(item, "bench")
            return (time.perf_counter() - start) / hits * 1e6

        def meshlib_batch(item: limits.RateLimitItem = item) -> float:
            window, lock = MovingWindow(item), threading.Lock()  # the limiter takes a lock per hit too
            start = time.perf_counter()
            for _ in range(hits):
                now = time.time()
                with lock:
                    window.hit(now)
            return (time.perf_counter() - start) / hits * 1e6

        rows.append((rate, min(limits_batch() for _ in range(3)), min(meshlib_batch() for _ in range(3))))
    return rows


class Failing(httpx.BaseTransport):
    """An upstream that answers every request 503, counting calls."""

    def __init__(self) -> None:
        self.calls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return httpx.Response(503)


class AsyncFailing(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return httpx.Response(503)


def _storm_config(budget: bool) -> dict[str, Any]:
    retry: dict[str, Any] = {"attempts": 3, "retry_on": ["5xx"], "backoff": {"base": "1ms", "max": "2ms"}}
    retry["budget"] = {"ratio": 0.2, "min_retries_per_second": 10} if budget else None
    return {"clusters": {"api": {"endpoints": ["http://127.0.0.1:9"], "retry": retry}}}


def storm_rows(requests: int, rate: float) -> list[tuple[str, int, int, float]]:
    """(case, requests, upstream calls, bound) for sync and async, with and without a budget."""
    rows = []
    for budget in (True, False):
        label = "budget 20% + 10/s" if budget else "no budget"

        def bound(clock: FakeClock, budget: bool = budget) -> float:
            # (1 + ratio) × requests, plus the reserve over the simulated seconds (backoff sleeps included).
            elapsed = clock.monotonic() - FakeClock.START
            return requests * 1.2 + 10 * math.ceil(elapsed) if budget else requests * 3.0

        clock = FakeClock()
        mesh = meshlib.Mesh.from_dict(_storm_config(budget), clock=clock)
        upstream = Failing()
        with mesh.client(transport=upstream) as client:
            for _ in range(requests):
                client.get("http://api/")
                clock.advance(1 / rate)
        rows.append((f"sync, {label}", requests, upstream.calls, bound(clock)))

        async def run(mesh: meshlib.Mesh, clock: FakeClock) -> int:
            upstream = AsyncFailing()
            async with mesh.async_client(transport=upstream) as client:
                for _ in range(requests):
                    await client.get("http://api/")
                    clock.advance(1 / rate)
            return upstream.calls

        clock = FakeClock()
        calls = asyncio.run(run(meshlib.Mesh.from_dict(_storm_config(budget), clock=clock), clock))
        rows.append((f"async, {label}", requests, calls, bound(clock)))
    return rows


def _table(header: Sequence[str], body: Sequence[Sequence[str]], right: set[int]) -> None:
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(line(header))
    print("─" * len(line(header)))
    for cells in body:
        print(line(cells))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    missed = []

    print("engine alone with every resilience policy configured but idle (µs per request, net of the transport):\n")
    idle = [(f"{case}, all policies", core, pol) for case, core, pol in idle_rows(sizes)]
    idle += [(f"{case}, all but hedge", core, pol) for case, core, pol in idle_rows(sizes, skip=("hedge",))]
    body = []
    for case, core, policies in idle:
        ok = policies / core <= TARGET_IDLE_RATIO
        missed += [] if ok else [case]
        body.append(
            [
                case,
                f"{core:.1f}",
                f"{policies:.1f}",
                f"{policies / core:.2f}×",
                f"≤ {TARGET_IDLE_RATIO:.1f}×",
                "yes" if ok else "NO",
            ]
        )
    case, core, policies = uninterruptible_row(sizes)
    body.append([case, f"{core:.1f}", f"{policies:.1f}", f"{policies / core:.2f}×", "(info)", ""])
    _table(["case", "core µs", "all policies µs", "ratio", "target", "ok"], body, {1, 2, 3})

    hits = 20_000 if args.quick else 200_000
    print(f"\nin-memory moving-window rate limit, µs per hit ({hits:,} hits as fast as possible):\n")
    body = [[rate, f"{old:.2f}", f"{new:.2f}", f"{old / new:.1f}×"] for rate, old, new in limiter_rows(hits)]
    _table(["rate", "limits MemoryStorage", "meshlib MovingWindow", "speed-up"], body, {1, 2, 3})

    requests = 2000 if args.quick else 10000
    print(f"\nretry storm: upstream failing 100%, 3 attempts, {requests:,} requests at 1,000/s (simulated time):\n")
    body = []
    for case, n, calls, bound in storm_rows(requests, 1000.0):
        ok = calls <= bound
        missed += [] if ok else [case]
        body.append([case, f"{n:,}", f"{calls:,}", f"{calls / n:.3f}", f"≤ {bound / n:.3f}", "yes" if ok else "NO"])
    _table(["case", "requests", "upstream calls", "calls/request", "bound", "ok"], body, {1, 2, 3, 4})
    if missed:
        print(f"\nmissed targets: {', '.join(missed)}")
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
