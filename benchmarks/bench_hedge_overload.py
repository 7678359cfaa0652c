"""Hedging under overload, and for stragglers: hedging must never make an overloaded upstream worse.

The upstream (a subprocess, asyncio, on 127.0.0.1) has two replicas, each
serving requests with ``--cores`` cores, ``--service`` seconds of a core per
request, so that its latency grows with the load; a try the client has
dropped is still served (the server cannot tell). Three kinds, a table each:

* ``queueing``: at most ``--cores`` requests at a time, the others wait in
  arrival order (a worker pool). A burst's hedges queue behind its first tries.
* ``sharing``: every request it holds shares the cores (processor sharing, a
  CPU-bound server): each extra try slows every other one at once.
* ``straggling``: ``queueing``, nearly idle, but every ``--straggle``-th try
  (20th) each replica gets pauses ``--pause`` seconds (200 ms) first, as a GC
  pause or a slow disk would: the stragglers hedging is for.

The overload tables send a burst of 150 concurrent GETs through
``mesh.async_client()``, ``timeout: 1s``; the straggler table 200 GETs from 4
workers, one after another each. Five ways, in the same run:

* no hedging;
* hedging after 20 ms, unthrottled (``retry: {attempts: 1, budget: null}``
  and the overload guard switched off): every slow request hedged, as before;
* hedging with the default retry budget only (the guard switched off);
* hedging with the overload guard only (``budget: null``);
* hedging as configured by default: the guard, then the default budget (no
  ``retry`` configured: 20% of the requests + 10/s).

The guard is switched off by setting ``meshlib._policies.hedge.OVERLOAD_SHARE``
to infinity around a burst (there is no setting for it). Each round runs every
case (in alternating order, on an upstream drained of the last burst's
tries); a table shows medians over the rounds, and each case's p50 and p99
against no hedging's in the same round. The verdicts: under overload, never
worse than no hedging: as many successes and no more timeouts in every round,
and median p50 and p99 ratios at most 1 + NOISE; with stragglers, hedging keeps
its use: as many successes, and a median p99 ratio at most STRAGGLER_P99.

The mesh's sender is meshlib's ``AsyncHTTP1Transport`` (``--sender pooled``), so
that the upstream is what is overloaded: ``--sender httpx`` uses httpx's own
transport, whose pool of 100 connections queues the tries beyond it, with
bookkeeping that grows with that queue, so that the client's CPU decides the
latencies (the setting of the issue; see benchmarks/README.md).

Run: ``python benchmarks/bench_hedge_overload.py [--quick] [--check]`` (also ``nox -s bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import heapq
import itertools
import json
import logging
import math
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from bench_core import _stop
from bench_resilience import _table

import meshlib
import meshlib._policies.hedge as hedge_module
from meshlib._transport import AsyncHTTP1Transport

REQUESTS = 150
TIMEOUT = "1s"
AFTER = "20ms"
STRAGGLER_REQUESTS = 200
STRAGGLER_WORKERS = 4  # about as many requests at a time as the upstream has cores: nearly idle
# Never worse than no hedging: the p50 and p99 ratios' margin, for run-to-run noise on a shared 2-core machine.
NOISE = 0.10
# Hedging's use: with 1 try in 20 pausing 200 ms, no hedging's p99 is a pause; hedging's must be at most this share.
STRAGGLER_P99 = 0.5
DRAIN_TIMEOUT = 30.0  # seconds the upstream may take to finish the tries left after a burst
BURST_TIMEOUT = 30.0  # seconds a burst may take (each request has its 1 s timeout: this is a safety net)

# --- the upstream -----------------------------------------------------------------------------------------------------


class Replica:
    """One endpoint of the overloaded upstream; ``work()`` is one request's time in it, by its discipline.

    A request's work goes on when its client has gone (a dropped try, a
    timeout): the server cannot tell, as most cannot.
    """

    def __init__(self, cores: int, service: float, straggle: int = 0, pause: float = 0.0) -> None:
        self.cores = cores
        self.service = service
        self.straggle = straggle  # every straggle-th try pauses first (0: none does)
        self.pause = pause
        self.tries = 0
        self.busy = 0  # requests being served or waiting

    async def work(self) -> None:
        raise NotImplementedError

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: Stats) -> None:
        try:
            for _ in range(100_000):  # keep-alive: one request after another, bounded
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1]
                if target.startswith(b"/__stats"):
                    body = json.dumps(stats.read(reset=target.endswith(b"?reset"))).encode()
                else:
                    self.tries += 1
                    self.busy += 1
                    try:
                        if self.straggle and self.tries % self.straggle == 0:
                            await asyncio.sleep(self.pause)  # a pause, not work: it takes no core
                        await self.work()
                    finally:
                        self.busy -= 1
                    body = b"ok"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, IndexError):
            pass  # the client hung up (a dropped try, a timeout) or sent garbage
        finally:
            writer.close()


class Queueing(Replica):
    """Serves at most ``cores`` requests at a time, ``service`` seconds each; the others wait in arrival order."""

    def __init__(self, cores: int, service: float, straggle: int = 0, pause: float = 0.0) -> None:
        super().__init__(cores, service, straggle, pause)
        self._slots = asyncio.Semaphore(cores)

    async def work(self) -> None:
        async with self._slots:
            await asyncio.sleep(self.service)


class Sharing(Replica):
    """Shares its ``cores`` among every request it holds (processor sharing), as a CPU-bound server does.

    Each request needs ``service`` seconds of a core; with n requests in,
    each runs at min(1, cores / n) of a core, so every extra try slows every
    other one at once. Kept in virtual time: a request finishes when the
    replica's virtual clock has advanced ``service`` past its arrival.
    """

    def __init__(self, cores: int, service: float, straggle: int = 0, pause: float = 0.0) -> None:
        super().__init__(cores, service, straggle, pause)
        self._jobs: list[tuple[float, int, asyncio.Future[None]]] = []  # (virtual finish, arrival, waiter)
        self._arrivals = itertools.count()
        self._virtual = 0.0
        self._stamp = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def _advance(self, now: float) -> None:
        if self._jobs:
            self._virtual += (now - self._stamp) * min(1.0, self.cores / len(self._jobs))
        self._stamp = now

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        if self._jobs:
            rate = min(1.0, self.cores / len(self._jobs))
            self._timer = loop.call_later(max(0.0, (self._jobs[0][0] - self._virtual) / rate), self._finish, loop)

    def _finish(self, loop: asyncio.AbstractEventLoop) -> None:
        self._advance(loop.time())
        while self._jobs and self._jobs[0][0] <= self._virtual + 1e-9:
            heapq.heappop(self._jobs)[2].set_result(None)
        self._schedule(loop)

    async def work(self) -> None:
        loop = asyncio.get_running_loop()
        self._advance(loop.time())
        waiter: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._jobs, (self._virtual + self.service, next(self._arrivals), waiter))
        self._schedule(loop)
        await waiter


MODELS: dict[str, type[Replica]] = {"queueing": Queueing, "sharing": Sharing, "straggling": Queueing}


class Stats:
    def __init__(self, replicas: Sequence[Replica]) -> None:
        self.replicas = replicas

    def read(self, *, reset: bool) -> dict[str, int]:
        result = {"tries": sum(r.tries for r in self.replicas), "busy": sum(r.busy for r in self.replicas)}
        if reset:
            for replica in self.replicas:
                replica.tries = 0
        return result


async def serve(model: str, cores: int, service: float, straggle: int, pause: float) -> None:
    """The upstream process: two replicas on free loopback ports, printed as one JSON line; runs until killed."""
    if model != "straggling":
        straggle = 0
    replicas = [MODELS[model](cores, service, straggle, pause) for _ in range(2)]
    stats = Stats(replicas)
    servers = [
        await asyncio.start_server(functools.partial(r.serve, stats=stats), "127.0.0.1", 0, backlog=1024)
        for r in replicas
    ]
    print(json.dumps([s.sockets[0].getsockname()[1] for s in servers]), flush=True)
    await asyncio.Event().wait()


@contextmanager
def upstream(args: argparse.Namespace, model: str, start_timeout: float = 15.0) -> Iterator[list[str]]:
    """Run the upstream in a subprocess (its own GIL); yields the replicas' URLs; always stops it."""
    cmd = [sys.executable, __file__, "--serve", "--model", model, "--cores", str(args.cores)]
    cmd += ["--service", str(args.service), "--straggle", str(args.straggle), "--pause", str(args.pause)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], start_timeout)
        line = proc.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError("the upstream did not start")
        yield [f"http://127.0.0.1:{port}" for port in json.loads(line)]
    finally:
        _stop(proc)


def _upstream_stats(url: str, *, reset: bool = False) -> dict[str, int]:
    stats: dict[str, int] = httpx.get(url + "/__stats" + ("?reset" if reset else ""), timeout=5.0).json()
    return stats


def drain(url: str) -> None:
    """Wait until the upstream has served every try it got (each burst starts on an idle upstream)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while _upstream_stats(url)["busy"] and time.monotonic() < deadline:
        time.sleep(0.05)


# --- the bursts -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    config: dict[str, Any]
    guard: bool = True  # the overload guard on (as shipped), or switched off as before it existed


def cases(endpoints: list[str]) -> dict[str, Case]:
    def cluster(**policies: Any) -> dict[str, Any]:
        return {"clusters": {"api": {"endpoints": endpoints, "timeout": TIMEOUT, **policies}}}

    hedge = {"after": AFTER, "max_extra": 1}
    no_budget = {"attempts": 1, "budget": None}
    return {
        "no hedging": Case(cluster()),
        "hedging, unthrottled": Case(cluster(hedge=hedge, retry=no_budget), guard=False),
        "hedging, budget only": Case(cluster(hedge=hedge), guard=False),
        "hedging, guard only": Case(cluster(hedge=hedge, retry=no_budget)),
        "hedging, guard + budget": Case(cluster(hedge=hedge)),
    }


DEFAULT = "hedging, guard + budget"  # what a cluster with `hedge` and nothing else gets
# Cases held to the verdicts (--check): what meshlib ships, with and without a budget. The others show what it saves.
HELD = (DEFAULT, "hedging, guard only")


@contextmanager
def overload_guard(on: bool) -> Iterator[None]:
    """The guard as shipped, or switched off: ``OVERLOAD_SHARE`` is read at each hedge decision."""
    shipped = hedge_module.OVERLOAD_SHARE
    hedge_module.OVERLOAD_SHARE = shipped if on else math.inf
    try:
        yield
    finally:
        hedge_module.OVERLOAD_SHARE = shipped


@dataclass(frozen=True)
class Burst:
    successes: int
    timeouts: int
    errors: int
    p50: float
    p99: float
    tries: int
    hedges: int
    overload: int  # hedges the overload guard refused
    budget: int  # hedges the retry budget refused
    cpu: float  # the client's CPU seconds for the burst


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class Workload:
    """``requests`` GETs from ``workers`` tasks, one after another each (None: all at once)."""

    requests: int
    workers: int | None = None
    description: str = field(default="", compare=False)


OVERLOAD = Workload(REQUESTS, None, f"{REQUESTS} concurrent GETs")
STRAGGLERS = Workload(
    STRAGGLER_REQUESTS, STRAGGLER_WORKERS, f"{STRAGGLER_REQUESTS} GETs, {STRAGGLER_WORKERS} at a time"
)


async def _burst(
    config: dict[str, Any], workload: Workload, sender: str
) -> tuple[list[tuple[str, float]], dict[str, int]]:
    mesh = meshlib.Mesh.from_dict(config)
    inner: dict[str, Any] = {"transport": AsyncHTTP1Transport()} if sender == "pooled" else {}
    try:
        async with mesh.async_client(**inner) as client:

            async def one() -> tuple[str, float]:
                started = time.perf_counter()
                try:
                    response = await client.get("http://api/")
                    outcome = "ok" if response.status_code == 200 else "error"
                except meshlib.RequestTimeoutError:
                    outcome = "timeout"
                except httpx.HTTPError:
                    outcome = "error"
                return outcome, time.perf_counter() - started

            async def worker(count: int) -> list[tuple[str, float]]:
                return [await one() for _ in range(count)]

            n, workers = workload.requests, workload.workers or workload.requests
            shares = [n // workers + (i < n % workers) for i in range(workers)]
            done = await asyncio.wait_for(asyncio.gather(*(worker(k) for k in shares)), BURST_TIMEOUT)
            outcomes = [outcome for outcomes_of_one in done for outcome in outcomes_of_one]
        counters: dict[str, int] = mesh.stats()["clusters"]["api"]["counters"]
        return outcomes, counters
    finally:
        mesh.close()


def burst(case: Case, endpoints: list[str], workload: Workload, sender: str) -> Burst:
    drain(endpoints[0])
    _upstream_stats(endpoints[0], reset=True)
    cpu = time.process_time()
    with overload_guard(case.guard):
        outcomes, counters = asyncio.run(_burst(case.config, workload, sender))
    cpu = time.process_time() - cpu
    drain(endpoints[0])  # dropped tries still count: the upstream served them
    latencies = [seconds for _, seconds in outcomes]
    kinds = [kind for kind, _ in outcomes]
    return Burst(
        successes=kinds.count("ok"),
        timeouts=kinds.count("timeout"),
        errors=kinds.count("error"),
        p50=_percentile(latencies, 0.5),
        p99=_percentile(latencies, 0.99),
        tries=_upstream_stats(endpoints[0], reset=True)["tries"],
        hedges=counters.get("hedges", 0),
        overload=counters.get("hedge_overload_refused", 0),
        budget=counters.get("hedge_budget_exhausted", 0),
        cpu=cpu,
    )


def run_model(model: str, args: argparse.Namespace, rounds: int) -> bool:
    """Every round's bursts on one kind of upstream; prints the table and verdicts; True if the held cases passed."""
    stragglers = model == "straggling"
    workload = STRAGGLERS if stragglers else OVERLOAD
    upstream_kind = f"2 replicas × {args.cores} cores, {args.service * 1000:g} ms of a core per request"
    if stragglers:
        upstream_kind += f", every {args.straggle}th try pausing {args.pause * 1000:g} ms first"
    else:
        upstream_kind += f" ({2 * args.cores / args.service:,.0f} requests/s in all)"
    setting = f"{workload.description}; sender {args.sender}; median of {rounds} rounds"
    print(f"\n{model} upstream: {upstream_kind}; {setting}\n")
    results: dict[str, list[Burst]] = {}
    ratios: dict[str, list[tuple[float, float]]] = {}  # p50 and p99 ÷ those of no hedging in the same round
    worse: dict[str, list[bool]] = {}  # fewer successes or more timeouts than no hedging in the same round
    with upstream(args, model) as endpoints:
        all_cases = cases(endpoints)
        burst(all_cases["no hedging"], endpoints, Workload(20), args.sender)  # warm-up: imports, first connections
        for i in range(rounds):
            order = list(all_cases) if i % 2 == 0 else list(reversed(all_cases))
            this_round = {name: burst(all_cases[name], endpoints, workload, args.sender) for name in order}
            plain = this_round["no hedging"]
            for name, result in this_round.items():
                results.setdefault(name, []).append(result)
                ratios.setdefault(name, []).append((result.p50 / plain.p50, result.p99 / plain.p99))
                lost = result.successes < plain.successes or result.timeouts > plain.timeouts
                worse.setdefault(name, []).append(lost)

    def p50_ratio(name: str) -> float:
        return statistics.median(p50 for p50, _ in ratios[name])

    def p99_ratio(name: str) -> float:
        return statistics.median(p99 for _, p99 in ratios[name])

    body = []
    for name in all_cases:
        bursts = results[name]

        def median(field: str, bursts: list[Burst] = bursts) -> float:
            return statistics.median(float(getattr(b, field)) for b in bursts)

        body.append(
            [
                name,
                f"{median('successes'):g}",
                f"{median('timeouts'):g}",
                f"{median('errors'):g}",
                f"{median('p50') * 1000:.0f}",
                f"{median('p99') * 1000:.0f}",
                f"{p50_ratio(name):.2f}×",
                f"{p99_ratio(name):.2f}×",
                f"{median('tries') / workload.requests:.2f}",
                f"{median('hedges'):g}",
                f"{median('overload'):g}",
                f"{median('budget'):g}",
                f"{median('cpu') * 1000:.0f}",
            ]
        )
    header = ["case", "successes", "timeouts", "errors", "p50 ms", "p99 ms", "p50 vs none", "p99 vs none"]
    header += ["tries/request", "hedges", "guard refused", "budget refused", "client CPU ms"]
    _table(header, body, right=set(range(1, len(header))))

    verdicts = {}
    if stragglers:
        print(
            f"\nhedging still cuts the stragglers' tail (successes ≥ no hedging's in every round,"
            f" median p99 ratio ≤ {STRAGGLER_P99:.2f}×):"
        )
        for name in list(all_cases)[1:]:
            verdicts[name] = not any(worse[name]) and p99_ratio(name) <= STRAGGLER_P99
    else:
        print(
            f"\nnever worse than no hedging (successes ≥ and timeouts ≤ in every round,"
            f" median p50 and p99 ratios ≤ {1 + NOISE:.2f}×):"
        )
        for name in list(all_cases)[1:]:
            verdicts[name] = not any(worse[name]) and max(p50_ratio(name), p99_ratio(name)) <= 1 + NOISE
    for name, verdict in verdicts.items():
        print(f"  {name}: {'yes' if verdict else 'NO'}")
    return all(verdicts[name] for name in HELD)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    parser.add_argument("--check", action="store_true", help="exit 1 when hedging as shipped missed a verdict")
    parser.add_argument("--rounds", type=int, help="bursts of each kind (default 5, --quick 2)")
    parser.add_argument(
        "--model",
        choices=[*MODELS, "all"],
        default="all",
        help="the upstream: requests beyond --cores queued, all sharing --cores, or stragglers (default: all)",
    )
    parser.add_argument("--cores", type=int, default=2, help="requests each replica serves at once (its cores)")
    parser.add_argument("--service", type=float, default=0.01, help="seconds of a core each request takes")
    parser.add_argument("--straggle", type=int, default=20, help="straggling: every Nth try of a replica pauses")
    parser.add_argument("--pause", type=float, default=0.2, help="straggling: seconds a pause takes")
    parser.add_argument(
        "--sender",
        choices=["pooled", "httpx"],
        default="pooled",
        help="the mesh's inner transport: meshlib's AsyncHTTP1Transport (default), or httpx's own (pool of 100)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.model, args.cores, args.service, args.straggle, args.pause))
        return 0
    # Each burst with the budget runs it dry by design: its WARNING would print once per burst.
    logging.getLogger("meshlib.retry").setLevel(logging.ERROR)
    rounds = args.rounds or (2 if args.quick else 5)
    print(f"hedging under overload and for stragglers: timeout {TIMEOUT}, hedge after {AFTER}")
    models = list(MODELS) if args.model == "all" else [args.model]
    passed = [run_model(model, args, rounds) for model in models]
    return 0 if all(passed) or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
