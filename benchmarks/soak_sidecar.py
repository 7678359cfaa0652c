"""Memory soak of ``meshlib proxy`` with the policies users configure: does RSS keep growing under load?

Run ``python benchmarks/soak_sidecar.py`` (``--rounds N``, ``--duration S``,
``--concurrency C``, ``--check`` to exit 1 on growth). The proxy gets a route
timeout of 1 s, retries on 5xx and connect failures, a circuit breaker, outlier
detection and a rate limit far above the load (so every policy runs on every
request but none refuses), metrics, an access log (to a file) and tracing at
1% to a Zipkin sink on loopback (``--no-observability`` leaves those three
out), and wrk drives it at c64 in rounds; the table
shows RSS after each round and the growth per request after the first round
(the warm-up, when pools and caches fill). A leak of a few bytes per request
shows as steady growth round after round; the target is none: at most
``--max-growth`` MB from the end of round 1 to the end of the last round.

It needs wrk (``apt-get install wrk``); the upstream is ``fast_upstream.py``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from bench_observability import ZipkinSink
from bench_sidecar import (
    WRK_SCRIPT,
    Processes,
    _answers_200,
    _free_port,
    _wait,
    fast_upstream,
    rss_mb,
    run_wrk,
)

from meshlib._cli import build_kind

START_TIMEOUT = 30.0


def soak_config(
    upstreams: Sequence[int], port: int, admin: int, observe: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One round-robin cluster with the resilience policies a user would set, a catch-all route, ``observe``."""
    return {
        **(observe or {}),
        "clusters": {
            "upstream": {
                "endpoints": [f"http://127.0.0.1:{p}" for p in upstreams],
                "timeout": "1s",
                "retry": {"attempts": 3, "retry_on": ["5xx", "connect-failure", "reset"]},
                "circuit_breaker": {"failure_threshold": 50, "recovery_timeout": "5s"},
                "outlier_detection": {"consecutive_5xx": 20, "base_ejection_time": "5s"},
                "rate_limit": {"rate": "1000000/second"},
            }
        },
        "routes": [{"match": {}, "cluster": "upstream"}],
        "sidecar": {"outbound": {"listen": f"127.0.0.1:{port}"}, "admin": {"listen": f"127.0.0.1:{admin}"}},
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="wrk rounds (default 6; the first is the warm-up)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per round (default 10)")
    parser.add_argument("--concurrency", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--max-growth", type=float, default=2.0, help="MB allowed after round 1 (default 2)")
    parser.add_argument("--check", action="store_true", help="exit 1 when RSS grew more than --max-growth")
    parser.add_argument("--no-observability", action="store_true", help="without metrics, the access log and tracing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="soak-sidecar-") as tmp, Processes(Path(tmp)) as procs:
        workdir = Path(tmp)
        script = workdir / "summary.lua"
        script.write_text(WRK_SCRIPT)
        with fast_upstream(procs, None) as (ports, _), ZipkinSink() as zipkin:
            port, admin = _free_port(), _free_port()
            observe = None
            if not args.no_observability:
                observe = {
                    "metrics": {"enabled": True},
                    "access_log": {"path": str(workdir / "access.log")},
                    "tracing": {"sampling": 0.01, "zipkin": {"endpoint": zipkin.endpoint}},
                }
            config = workdir / "mesh.yaml"
            config.write_text(yaml.safe_dump(soak_config(ports, port, admin, observe), sort_keys=False))
            proxy = procs.start("meshlib", [sys.executable, "-m", "meshlib", "proxy", "--config", str(config)])
            reason = _wait(proxy, lambda: _answers_200(f"http://127.0.0.1:{admin}/ready"), START_TIMEOUT)
            if reason is not None:
                print(f"meshlib proxy did not start: {reason}", file=sys.stderr)
                return 2
            url = f"http://127.0.0.1:{port}/"
            with_what = "" if args.no_observability else ", with metrics, an access log and tracing at 1%"
            print(
                f"soak: meshlib proxy ({build_kind()}){with_what}, wrk -c{args.concurrency} × {args.rounds} rounds of "
                f"{args.duration} s"
            )
            print(f"  idle RSS {rss_mb(proxy.pid):.1f} MB")
            print(f"  {'round':>5} {'requests':>10} {'req/s':>8} {'errors':>7} {'RSS MB':>8}")
            samples: list[tuple[int, float]] = []
            total = 0
            for n in range(1, args.rounds + 1):
                result = run_wrk([wrk], url, args.concurrency, args.duration, script)
                total += result.requests
                rss = rss_mb(proxy.pid)
                samples.append((total, rss))
                print(f"  {n:>5} {result.requests:>10,} {result.rps:>8,.0f} {result.errors:>7} {rss:>8.1f}", flush=True)
    (first_total, first_rss), (last_total, last_rss) = samples[0], samples[-1]
    growth = last_rss - first_rss
    per_request = growth * 1024 * 1024 / max(last_total - first_total, 1)
    verdict = "met" if growth <= args.max_growth else "MISSED"
    print(
        f"\nRSS after round 1: {first_rss:.1f} MB; after round {len(samples)}: {last_rss:.1f} MB "
        f"({growth:+.1f} MB over {last_total - first_total:,} requests, {per_request:+.1f} bytes/request)"
    )
    print(f"target: growth ≤ {args.max_growth:.1f} MB after the warm-up round: {verdict}")
    return 1 if args.check and growth > args.max_growth else 0


if __name__ == "__main__":
    sys.exit(main())
