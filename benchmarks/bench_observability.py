"""What observability costs: metrics on and tracing sampled at 1% against both off, in process and in the sidecar.

Run ``python benchmarks/bench_observability.py`` (``--quick`` for a smoke run,
``--check`` to exit 1 when a target is missed, ``--engine-only`` or
``--sidecar-only``, ``--duration SECONDS``, ``--rounds N``). The sidecar part
needs ``wrk`` and ``taskset``. See ``benchmarks/README.md``.

The targets (the observability issue's Speed section):

* **in process**: the engine alone over a zero-I/O transport (bench_core's 50
  routes over 20 clusters, each cluster with the policies users configure: a
  timeout, a connect timeout, retries with a budget, a circuit breaker) costs
  at most 10 µs more per request with ``metrics: {enabled: true}`` and
  ``tracing: {sampling: 0.01}`` (spans exported to a Zipkin sink on loopback)
  than with neither; sync and async, each side's best batch, the cases
  interleaved (order reversed every other round). Metrics alone, tracing
  alone and "plumbing only" (the engine telling an observer that does
  nothing: the hooks' own cost) are printed too, to tell what each costs.
* **sidecar**: ``meshlib proxy`` with the same observability keeps at least
  0.85× the requests/s of the same proxy without it. Both proxies are pinned
  to CPU 1, ``wrk -t1``, the upstream (``fast_upstream.py``) and the Zipkin
  sink to CPU 0; they
  are measured in interleaved rounds, each run after a warm-up second; the
  ratio is the median over rounds of observed ÷ plain in the same round, and
  the proxies' CPU µs per request is printed beside it. Then "paired" rounds
  load both at the same moment (a wrk each): the host's drift between two
  runs (often ±30% here) slows both alike, so their ratio is the steadier one.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn

import httpx
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_core import (  # noqa: E402 - sibling scripts, importable once their folder is on the path
    AsyncZeroIO,
    ZeroIO,
    _engine_setup,
    engine_batch,
    engine_batch_async,
)
from bench_sidecar import (  # noqa: E402
    WRK_SCRIPT,
    Processes,
    Proxy,
    Unavailable,
    WrkResult,
    _pinned,
    _start,
    cpu_seconds,
    fast_upstream,
    meshlib_config,
)

import meshlib  # noqa: E402
from meshlib._cli import build_kind  # noqa: E402
from meshlib._observe import registry  # noqa: E402
from meshlib._observe.observers import Observer  # noqa: E402

TARGET_ENGINE_US = 10.0  # observed engine µs − plain engine µs, per request
TARGET_SIDECAR_RATIO = 0.85  # observed sidecar req/s ≥ this × plain sidecar req/s
SAMPLING = 0.01
CONCURRENCIES = (16, 64)
FULL_DURATION, QUICK_DURATION = 5, 2
FULL_ROUNDS, QUICK_ROUNDS = 3, 1
WARMUP = 1
PROXY_CPU, LOAD_CPU = "1", "0"

# The policies users configure on every cluster: nothing fails, so they only pay their bookkeeping.
POLICIES: dict[str, Any] = {
    "connect_timeout": "250ms",
    "timeout": "2s",
    "retry": {
        "attempts": 3,
        "retry_on": ["connect-failure", "reset", "5xx"],
        "backoff": {"base": "25ms", "max": "250ms"},
        "budget": {"ratio": 0.2, "min_retries_per_second": 10},
    },
    "circuit_breaker": {"failure_threshold": 5, "recovery_timeout": "30s"},
}

PLAIN, METRICS, TRACING, BOTH = "off", "metrics", f"tracing {SAMPLING:g}", f"metrics + tracing {SAMPLING:g}"
PLUMBING = "plumbing only"  # a mesh told about requests by an observer that does nothing: the hooks' own cost
CASES = (PLAIN, PLUMBING, METRICS, TRACING, BOTH)


def observability(case: str, zipkin: str | None, sampling: float = SAMPLING) -> dict[str, Any]:
    """The config sections of ``case``; tracing exports to ``zipkin`` (None: spans are made, not exported)."""
    out: dict[str, Any] = {}
    if case in (METRICS, BOTH):
        out["metrics"] = {"enabled": True}
    if case in (TRACING, BOTH):
        out["tracing"] = {"sampling": sampling}
        if zipkin is not None:
            out["tracing"]["zipkin"] = {"endpoint": zipkin}
    return out


class ZipkinSink:
    """A Zipkin collector on loopback that accepts every batch of spans (202) and counts them.

    ``cpu``: the CPU its threads run on. The sidecar part puts it on the load CPU, beside the upstream and wrk: it
    stands for the collector, whose work is not the proxy's (unpinned, it took its share of the proxies' CPU).
    """

    def __init__(self, cpu: int | None = None) -> None:
        sink = self
        self.batches = 0
        self._cpu = cpu

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                sink.batches += 1
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._serve, name="zipkin-sink", daemon=True)

    def _serve(self) -> None:
        if self._cpu is not None and hasattr(os, "sched_setaffinity"):
            # This thread only (pid 0 on Linux); the handler threads it starts inherit the mask.
            os.sched_setaffinity(0, {self._cpu})
        self._server.serve_forever()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/v2/spans"

    def __enter__(self) -> ZipkinSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --- in process: the engine alone ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineSizes:
    rounds: int
    batch: int
    budget: float  # seconds; no new round after it (three always run)


def _engine_meshes(
    zipkin: str | None, sampling: float = SAMPLING
) -> tuple[dict[str, meshlib.Mesh], list[httpx.Request]]:
    """Each case's mesh (bench_core's config, each cluster with POLICIES) and the prebuilt requests."""
    core, requests = _engine_setup()
    config = core.config.model_dump(mode="json", exclude_none=True)
    core.close()
    for cluster in config["clusters"].values():
        cluster.update(copy.deepcopy(POLICIES))
    meshes = {
        case: meshlib.Mesh.from_dict({**config, **observability(case, zipkin, sampling)})
        for case in CASES
        if case != PLUMBING
    }
    # The observer registry builds an Observer (all no-ops) in place of the metrics one, for this mesh only.
    real = registry._factory
    registry._factory = lambda kind: lambda section, config, runtime: Observer()
    try:
        meshes[PLUMBING] = meshlib.Mesh.from_dict({**config, "metrics": {"enabled": True}})
    finally:
        registry._factory = real
    return meshes, requests


def engine_table(sizes: EngineSizes, zipkin: str) -> dict[tuple[str, str], float]:
    """Each case's best µs per request, sync and async (the zero-I/O transport's own cost is in every case alike)."""
    meshes, requests = _engine_meshes(zipkin)
    n, cap = sizes.batch, sizes.budget
    best: dict[tuple[str, str], float] = {}
    try:
        sync = {case: mesh.transport(inner=ZeroIO()) for case, mesh in meshes.items()}

        def sync_batch(case: str) -> float:
            done, seconds = engine_batch(sync[case], requests, n, cap)
            return seconds / done * 1e6

        _interleave("sync", sync_batch, sizes, best)

        async def run_async() -> None:
            transports = {case: mesh.async_transport(inner=AsyncZeroIO()) for case, mesh in meshes.items()}
            for case in CASES:  # warm-up
                await engine_batch_async(transports[case], requests, n, cap)
            deadline = time.perf_counter() + sizes.budget
            for i in range(sizes.rounds):
                if i >= 3 and time.perf_counter() > deadline:
                    break
                for case in CASES if i % 2 == 0 else reversed(CASES):
                    gc.collect()
                    done, seconds = await engine_batch_async(transports[case], requests, n, cap)
                    best[("async", case)] = min(best.get(("async", case), float("inf")), seconds / done * 1e6)

        asyncio.run(run_async())
    finally:
        for mesh in meshes.values():
            mesh.close()
    return best


def _interleave(
    mode: str, batch: Callable[[str], float], sizes: EngineSizes, best: dict[tuple[str, str], float]
) -> None:
    for case in CASES:  # warm-up: every label child bound, every cache filled
        batch(case)
    deadline = time.perf_counter() + sizes.budget
    for i in range(sizes.rounds):
        if i >= 3 and time.perf_counter() > deadline:
            break
        for case in CASES if i % 2 == 0 else reversed(CASES):
            gc.collect()
            us = batch(case)
            best[(mode, case)] = min(best.get((mode, case), float("inf")), us)


def print_engine(best: dict[tuple[str, str], float]) -> list[tuple[str, bool]]:
    print(f"\nmeshlib: {build_kind()}")
    print(f"{'engine alone':<30} {'µs/req':>8} {'vs off':>8}")
    print("─" * 48)
    verdicts = []
    for mode in ("sync", "async"):
        plain = best[(mode, PLAIN)]
        for case in CASES:
            us = best[(mode, case)]
            print(f"{mode + ', ' + case:<30} {us:>8.1f} {us - plain:>+8.1f}")
        added = best[(mode, BOTH)] - plain
        verdicts.append(
            (f"engine, {mode}: {BOTH} adds {added:.1f} µs ≤ {TARGET_ENGINE_US:g} µs", added <= TARGET_ENGINE_US)
        )
    return verdicts


# --- the sidecar -----------------------------------------------------------------------------------------------------


@dataclass
class SidecarRow:
    case: str
    concurrency: int
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # the proxy's CPU per request, per run
    errors: int = 0


@dataclass
class Sidecar:
    proxy: Proxy
    admin: str  # the admin listener's URL


def start_sidecar(procs: Processes, workdir: Path, upstreams: Sequence[int], case: str, zipkin: str) -> Sidecar:
    """``meshlib proxy`` pinned to PROXY_CPU: bench_sidecar's routes, the users' policies, ``case``'s sections."""
    admins: list[int] = []

    def build(port: int, admin: int) -> list[str]:
        admins.append(admin)
        config = meshlib_config(upstreams, port, admin)
        for cluster in config["clusters"].values():
            cluster.update(copy.deepcopy(POLICIES))
        config.update(observability(case, zipkin))
        path = workdir / f"mesh-{port}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return _pinned([sys.executable, "-m", "meshlib", "proxy", "--config", str(path)], PROXY_CPU)

    started = _start(procs, f"meshlib, {case}", build, lambda port, admin: f"http://127.0.0.1:{admin}/ready")
    if isinstance(started, Unavailable):
        raise RuntimeError(f"{started.name} did not start: {started.reason}")
    return Sidecar(started, f"http://127.0.0.1:{admins[-1]}")


def run_wrk1(wrk: Sequence[str], url: str, concurrency: int, duration: int, script: Path) -> WrkResult:
    """``wrk -t1 -cN -dD`` with bench_sidecar's summary script (one thread: the load has one CPU)."""
    cmd = [*wrk, "-t", "1", "-c", str(concurrency), "-d", f"{duration}s", "--latency", "-s", str(script), url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    match = re.search(r"^WRK_RESULT (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-400:]}")
    data = json.loads(match.group(1))
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(data["requests"], data["duration_us"] / 1e6, data["p50_us"], data["p99_us"], errors)


def sidecar_rows(duration: int, rounds: int, wrk_path: str, zipkin: str) -> list[SidecarRow]:
    rows: dict[tuple[str, int], SidecarRow] = {}
    with tempfile.TemporaryDirectory(prefix="bench-observability-") as tmp, Processes(Path(tmp)) as procs:
        workdir = Path(tmp)
        script = workdir / "summary.lua"
        script.write_text(WRK_SCRIPT)
        wrk = _pinned([wrk_path], LOAD_CPU)
        with fast_upstream(procs, LOAD_CPU) as (ports, _upstream_pid):
            sidecars = [start_sidecar(procs, workdir, ports, case, zipkin) for case in (PLAIN, BOTH)]
            observed = sidecars[1].admin
            with httpx.Client(trust_env=False, timeout=5) as client:
                page = client.get(observed + "/metrics")
            if page.status_code != 200 or "meshlib_outbound_requests_total{" not in page.text:
                raise RuntimeError(f"the observed sidecar's /metrics shows no request: {page.status_code}")
            print(
                f"sidecars ready ({', '.join(s.proxy.name for s in sidecars)}), pinned to CPU {PROXY_CPU}; "
                f"wrk -t1 and the upstream on CPU {LOAD_CPU}; {rounds} round(s) of {duration} s",
                flush=True,
            )
            for n in range(rounds):
                for c in CONCURRENCIES:
                    for sidecar in sidecars if n % 2 == 0 else sidecars[::-1]:
                        proxy = sidecar.proxy
                        row = rows.setdefault((proxy.name, c), SidecarRow(proxy.name, c))
                        run_wrk1(wrk, proxy.url, c, WARMUP, script)
                        before = cpu_seconds(proxy.running.pid)
                        result = run_wrk1(wrk, proxy.url, c, duration, script)
                        cpu = cpu_seconds(proxy.running.pid) - before
                        row.rps.append(result.rps)
                        row.cpu_us.append(cpu / max(result.requests, 1) * 1e6)
                        row.errors += result.errors
                        print(
                            f"  {proxy.name:<34} c={c:<3} {result.rps:>8,.0f} req/s  "
                            f"CPU {row.cpu_us[-1]:5.0f} µs/req"
                            + (f"  {result.errors} errors" if result.errors else ""),
                            flush=True,
                        )
            print(f"  paired: both sidecars loaded at the same moment ({rounds} round(s) of {duration} s)", flush=True)
            for _ in range(rounds):
                for c in CONCURRENCIES:
                    paired_run(wrk, sidecars, c, duration, script, rows)
            with httpx.Client(trust_env=False, timeout=5) as client:
                stats = client.get(observed + "/stats").json().get("observability", {})
            print(f"  the observed sidecar's observability stats: {stats}")
    return list(rows.values())


def paired_run(
    wrk: Sequence[str], sidecars: Sequence[Sidecar], c: int, duration: int, script: Path, rows: dict[Any, SidecarRow]
) -> None:
    """One wrk per sidecar, started together: both proxies share their CPU at the same moment, so whatever the
    host does to that core meanwhile slows both alike, and their CPU per request compares like with like."""
    results: dict[str, WrkResult] = {}

    def load(sidecar: Sidecar) -> None:
        results[sidecar.proxy.name] = run_wrk1(wrk, sidecar.proxy.url, c, duration, script)

    for sidecar in sidecars:
        run_wrk1(wrk, sidecar.proxy.url, c, WARMUP, script)
    before = {s.proxy.name: cpu_seconds(s.proxy.running.pid) for s in sidecars}
    threads = [threading.Thread(target=load, args=(s,)) for s in sidecars]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    line = []
    for sidecar in sidecars:
        name = sidecar.proxy.name
        result = results[name]
        row = rows.setdefault((f"{name} (paired)", c), SidecarRow(f"{name} (paired)", c))
        row.rps.append(result.rps)
        row.cpu_us.append((cpu_seconds(sidecar.proxy.running.pid) - before[name]) / max(result.requests, 1) * 1e6)
        row.errors += result.errors
        line.append(f"{name} {result.rps:,.0f} req/s {row.cpu_us[-1]:.0f} µs/req")
    print(f"  paired c={c:<3} " + "; ".join(line), flush=True)


def print_sidecar(rows: Sequence[SidecarRow]) -> list[tuple[str, bool]]:
    print(f"\n{'sidecar':<42} {'conc':>4} {'req/s':>9} {'CPU µs/req':>11} {'ratio':>7}")
    print("─" * 77)
    by = {(r.case, r.concurrency): r for r in rows}
    verdicts = []
    for c, paired in ((c, paired) for paired in ("", " (paired)") for c in CONCURRENCIES):
        plain, both = by.get((f"meshlib, {PLAIN}{paired}", c)), by.get((f"meshlib, {BOTH}{paired}", c))
        if plain is None or both is None:
            continue
        ratios = [b / p for b, p in zip(both.rps, plain.rps, strict=True)]  # observed ÷ plain, round by round
        ratio = statistics.median(ratios)
        for row, shown in ((plain, "1.00×"), (both, f"{ratio:.2f}×")):
            print(
                f"{row.case:<42} {c:>4} {statistics.median(row.rps):>9,.0f} {statistics.median(row.cpu_us):>11.0f}"
                f" {shown:>7}" + (f"  {row.errors} errors" if row.errors else "")
            )
        cpu_ratio = statistics.median(plain.cpu_us) / statistics.median(both.cpu_us)
        spread = f" (rounds {min(ratios):.2f}–{max(ratios):.2f}×)" if len(ratios) > 1 else ""
        verdicts.append(
            (
                f"sidecar c{c}{paired}: {ratio:.2f}× the plain sidecar's req/s{spread}, {cpu_ratio:.2f}× by CPU per "
                f"request; target ≥ {TARGET_SIDECAR_RATIO}×",
                ratio >= TARGET_SIDECAR_RATIO,
            )
        )
    return verdicts


# --- main ------------------------------------------------------------------------------------------------------------


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds the context managers: every process started is stopped


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer, shorter rounds")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--engine-only", action="store_true", help="skip the sidecar part")
    parser.add_argument("--sidecar-only", action="store_true", help="skip the in-process part")
    parser.add_argument("--duration", type=int, help="seconds per measured wrk run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    print(
        f"bench_observability{' --quick' if args.quick else ''}: Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    verdicts: list[tuple[str, bool]] = []
    with ZipkinSink(cpu=int(LOAD_CPU)) as sink:
        if not args.sidecar_only:
            sizes = EngineSizes(
                rounds=args.rounds or (4 if args.quick else 12), batch=500 if args.quick else 2000, budget=20.0
            )
            verdicts += print_engine(engine_table(sizes, sink.endpoint))
        if not args.engine_only:
            wrk = shutil.which("wrk")
            if wrk is None or shutil.which("taskset") is None:
                print("\nthe sidecar part needs wrk and taskset: apt-get install -y wrk util-linux", file=sys.stderr)
                return 2
            duration = args.duration or (QUICK_DURATION if args.quick else FULL_DURATION)
            rounds = args.rounds or (QUICK_ROUNDS if args.quick else FULL_ROUNDS)
            print()
            verdicts += print_sidecar(sidecar_rows(duration, rounds, wrk, sink.endpoint))
        print(f"\nspan batches the Zipkin sink received: {sink.batches}")
    print()
    for text, ok in verdicts:
        print(f"{'ok  ' if ok else 'MISS'} {text}")
    return 1 if args.check and not all(ok for _, ok in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
