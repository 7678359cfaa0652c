"""Instructions per in-process request, counted by valgrind: the engine's cost and observability's, free of the noise.

Run ``python benchmarks/engine_instructions.py`` (needs ``valgrind``: ``apt-get
install valgrind``; ``--cases`` to choose, ``--sampling`` for the tracing
cases). Each case runs in a child interpreter under valgrind, twice: it sends
``--small`` and then ``--large`` requests through one transport over
bench_core's zero-I/O transport (bench_core's 50 routes over 20 clusters, its
prebuilt requests), after a warm-up of 500. The difference in instructions
divided by the difference in requests is one request's cost, start-up taken
off.

* ``bare`` and ``bare-async``: the zero-I/O transports called directly;
  ``engine`` and ``engine-async``: bench_core's mesh in front of them. The
  engine's own cost is the difference (bench_core.py's "engine alone" rows,
  on the clock).
* ``off``, ``plumbing``, ``metrics``, ``tracing``, ``both``:
  bench_observability.py's engine meshes (each cluster with a timeout,
  retries with a budget and a circuit breaker; tracing sampled at
  ``--sampling``, 0.01 by default). What each adds is read against ``off``.
  Sampled spans are made and ended but not exported: the export thread's work
  is off the request path, and ``bench_zipkin_encoder.py`` measures it.

Only user-space instructions are counted, and an instruction that misses the
caches costs more than one that hits: compare a figure with itself, before and
after a change, not with µs. ``PYTHONHASHSEED`` and the random seed are fixed;
two runs of the same code still differ by up to about 0.2% (timers run by the
wall clock, which valgrind slows, and sampling at 1% in a window of 4,000).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bench_observability
import httpx
from bench_core import AsyncZeroIO, ZeroIO, _engine_setup, engine_batch, engine_batch_async

ENGINE_CASES = ("bare", "engine", "bare-async", "engine-async")
# What each engine case is read against: the zero-I/O transport alone, called the same way.
_BASE = {"engine": "bare", "engine-async": "bare-async"}
OBSERVED = {
    "off": bench_observability.PLAIN,
    "plumbing": bench_observability.PLUMBING,
    "metrics": bench_observability.METRICS,
    "tracing": bench_observability.TRACING,
    "both": bench_observability.BOTH,
}
CASES = (*ENGINE_CASES, *OBSERVED)
WARM_UP = 500
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def _child(case: str, count: int, sampling: float) -> None:
    """Send ``count`` requests (after the warm-up) through ``case``'s transport, then leave at once."""
    random.seed(12345)
    if case.endswith("-async"):
        mesh, requests = _engine_setup()

        async def run() -> None:
            transport = AsyncZeroIO() if case == "bare-async" else mesh.async_transport(inner=AsyncZeroIO())
            await engine_batch_async(transport, requests, WARM_UP, 1000)
            await engine_batch_async(transport, requests, count, 1000)

        asyncio.run(run())
    else:
        sync: httpx.BaseTransport
        if case in OBSERVED:
            meshes, requests = bench_observability._engine_meshes(None, sampling)
            sync = meshes[OBSERVED[case]].transport(inner=ZeroIO())
        else:
            mesh, requests = _engine_setup()
            sync = ZeroIO() if case == "bare" else mesh.transport(inner=ZeroIO())
        engine_batch(sync, requests, WARM_UP, 1000)
        engine_batch(sync, requests, count, 1000)
    # No teardown: what a close costs is not a request's, and it would have to be the same in both runs.
    sys.stdout.flush()
    os._exit(0)


def count(case: str, requests: int, sampling: float, python: str) -> int:
    """The child's instructions, start to exit, for ``requests`` requests of ``case``."""
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        python,
        str(Path(__file__).resolve()),
        "--child",
        case,
        str(requests),
        "--sampling",
        repr(sampling),
    ]
    done = subprocess.run(
        command, env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=False
    )
    found = _REFS.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{case}: valgrind printed no instruction count:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="default: all")
    parser.add_argument("--small", type=int, default=1_000, help="requests in the first run (default 1,000)")
    parser.add_argument("--large", type=int, default=5_000, help="requests in the second run (default 5,000)")
    parser.add_argument("--sampling", type=float, default=bench_observability.SAMPLING, help="tracing's ratio")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        case, requests = args.child
        if case not in CASES:
            parser.error(f"unknown case {case!r}")
        _child(case, int(requests), args.sampling)
    if shutil.which("valgrind") is None:
        print("engine_instructions: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    if args.large <= args.small or args.small < 1:
        parser.error("--large must exceed --small, and --small be at least 1")
    if not 0.0 <= args.sampling <= 1.0:
        parser.error("--sampling is a ratio from 0 to 1")
    # valgrind cannot follow pyenv's shell shims: the interpreter itself.
    python = os.path.realpath(sys.executable)
    runs = [(case, n) for case in args.cases for n in (args.small, args.large)]
    with ThreadPoolExecutor(max_workers=max(1, min(len(runs), os.cpu_count() or 1))) as pool:
        totals = pool.map(lambda run: count(run[0], run[1], args.sampling, python), runs)
        counted = dict(zip(runs, totals, strict=True))
    span = args.large - args.small
    per = {case: (counted[case, args.large] - counted[case, args.small]) / span for case in args.cases}
    print(f"instructions per request ({args.small:,} and {args.large:,} requests, tracing at {args.sampling:g})")
    print(f"{'case':<14} {'instr/req':>10} {'adds':>10}  against")
    print("─" * 48)
    for case in args.cases:
        base = _BASE.get(case, "off" if case in OBSERVED else case)
        added = f"{per[case] - per[base]:>+10,.0f}  {base}" if case != base and base in per else ""
        print(f"{case:<14} {per[case]:>10,.0f} {added}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
