"""In-process async benchmark: a meshed ``httpx.AsyncClient`` on ``meshlib.AsyncHTTP1Transport`` against a bare one.

Run ``python benchmarks/bench_inner_transport.py`` (``--quick`` for a smoke
run, ``--check`` to exit 1 when the target is missed). Not collected by pytest.

The target (issue 13): ``mesh.async_client(transport=meshlib.AsyncHTTP1Transport())``
serves at least 5× the requests/s of a bare ``httpx.AsyncClient`` at
concurrency 16, in the same run. The mesh runs with the policies users
configure: a 1 s timeout, 5xx retries with a budget, a circuit breaker and
outlier detection, on a route with a header edit.

The upstream is ``benchmarks/fast_upstream.py`` pinned to CPU 0; this process
(the client, the only thing measured) is pinned to CPU 1, so the CPU time
per request (``time.process_time``) is the client's alone. Every client kind
runs in each round, in an order that rotates from round to round, and each
row reports the median round. Rows on the default asyncio loop and on
uvloop; the machine's load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import meshlib

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop does not build on Windows
    uvloop = None  # type: ignore[assignment]

HERE = Path(__file__).resolve().parent
CONCURRENCY = 16
TARGET = 5.0
BARE = "bare httpx.AsyncClient"
KINDS = (
    BARE,
    "mesh.async_client()",
    "mesh.async_client(transport=AsyncHTTP1Transport())",
    "bare AsyncClient(transport=AsyncHTTP1Transport())",
)


def mesh_config(url: str) -> dict[str, Any]:
    """One route to one cluster, with the policies a user would set."""
    return {
        "service": "bench",
        "clusters": {
            "reviews": {
                "endpoints": [url],
                "timeout": "1s",
                "retry": {"attempts": 3, "retry_on": ["5xx", "connect-failure", "reset"]},
                "circuit_breaker": {"failure_threshold": 50, "recovery_timeout": "5s"},
                "outlier_detection": {"consecutive_5xx": 50},
            }
        },
        "routes": [
            {
                "name": "reviews",
                "match": {"host": "reviews", "path_prefix": "/"},
                "cluster": "reviews",
                "headers": {"request": {"set": {"x-route": "reviews"}}},
            }
        ],
    }


@contextmanager
def fast_upstream() -> Iterator[str]:
    """``fast_upstream.py`` on a free port, pinned to CPU 0 where the machine has two."""
    command = [sys.executable, str(HERE / "fast_upstream.py"), "--port", "0"]
    if (os.cpu_count() or 1) > 1:
        command = ["taskset", "-c", "0", *command]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"fast_upstream did not start: {line!r}")
        yield "http://" + line.rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Round:
    requests: int
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.requests * 1e6


async def run_round(client: httpx.AsyncClient, url: str, seconds: float) -> Round:
    """CONCURRENCY tasks send GETs back to back for ``seconds``; every response must be 200 ``ok``."""
    count = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            response = await client.get(url)
            if response.status_code != 200 or response.content != b"ok":
                raise RuntimeError(f"unexpected answer {response.status_code} {response.content[:60]!r}")
            count += 1

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return Round(count, time.perf_counter() - start, time.process_time() - cpu)


def make_client(kind: str, mesh: meshlib.Mesh) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    if kind == BARE:
        return httpx.AsyncClient(trust_env=False, limits=limits)
    if kind == KINDS[1]:
        return mesh.async_client(trust_env=False, limits=limits)
    if kind == KINDS[2]:
        return mesh.async_client(transport=meshlib.AsyncHTTP1Transport())
    return httpx.AsyncClient(trust_env=False, transport=meshlib.AsyncHTTP1Transport())


async def measure(upstream: str, rounds: int, seconds: float) -> dict[str, list[Round]]:
    mesh = meshlib.Mesh.from_dict(mesh_config(upstream))
    results: dict[str, list[Round]] = {kind: [] for kind in KINDS}
    clients = {kind: make_client(kind, mesh) for kind in KINDS}
    try:
        for kind, client in clients.items():  # warm-up: connections open, caches fill
            await run_round(client, upstream if kind.startswith("bare") else "http://reviews/", 0.3)
        for i in range(rounds):
            order = KINDS[i % len(KINDS) :] + KINDS[: i % len(KINDS)]
            for kind in order:
                url = upstream if kind.startswith("bare") else "http://reviews/"
                results[kind].append(await run_round(clients[kind], url, seconds))
    finally:
        for client in clients.values():
            await client.aclose()
        mesh.close()
    return results


def run_loop(kind: str, main: Callable[[], Any]) -> Any:
    if kind == "uvloop":
        assert uvloop is not None
        return uvloop.run(main())
    return asyncio.run(main())


def _median(rounds: list[Round]) -> Round:
    return sorted(rounds, key=lambda r: r.rate)[len(rounds) // 2]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 short rounds")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if a loop misses {TARGET}× the bare client")
    args = parser.parse_args(argv)
    rounds, seconds = (2, 0.5) if args.quick else (5, 2.0)
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    loops = ["asyncio"] + (["uvloop"] if uvloop is not None else [])
    print(f"load average before: {os.getloadavg()}; concurrency {CONCURRENCY}, {rounds} rounds of {seconds} s")
    ok = True
    with fast_upstream() as upstream:
        for loop_kind in loops:
            results = run_loop(loop_kind, lambda: measure(upstream, rounds, seconds))
            base = _median(results[BARE])
            print(f"\n{loop_kind} loop")
            print("| client | req/s | CPU µs/req | × bare | rounds' req/s spread |\n|---|---:|---:|---:|---:|")
            for kind in KINDS:
                row = _median(results[kind])
                rates = [r.rate for r in results[kind]]
                spread = (max(rates) - min(rates)) / statistics.median(rates)
                ratio = row.rate / base.rate
                print(f"| {kind} | {row.rate:,.0f} | {row.cpu_us:.1f} | {ratio:.2f} | {spread:.0%} |")
            meshed = _median(results[KINDS[2]]).rate / base.rate
            verdict = "meets" if meshed >= TARGET else "MISSES"
            print(f"meshed on AsyncHTTP1Transport: {meshed:.2f}× the bare client ({verdict} the {TARGET}× target)")
            ok = ok and meshed >= TARGET
    print(f"\nload average after: {os.getloadavg()}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
