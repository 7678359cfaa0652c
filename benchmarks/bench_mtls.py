"""mTLS benchmark: what mutual TLS with a SPIFFE check costs the sidecar, against plaintext to the same upstream.

Run ``python benchmarks/bench_mtls.py`` (``--quick`` for a smoke run,
``--duration SECONDS``). It needs ``wrk`` (``apt-get install wrk``) and
``psutil``. Two tables:

* **through the sidecar**: one ``meshlib proxy`` with two clusters, plaintext
  and ``tls: mutual`` with ``expected_identities``, each in front of a
  ``fast_upstream.py`` (the mTLS one requires a client certificate of the
  benchmark's CA); wrk drives both in turn (ABAB), and the table gives
  req/s, p99 and the sidecar's CPU per request. Connections to the upstream
  are kept alive, so the handshake is paid once per pooled connection.
* **the upstream client alone**: the sidecar's ``AsyncHTTP1Transport`` in this
  process, plaintext, mTLS with kept-alive connections, and mTLS with a new
  connection for every request (each resuming the previous one's TLS
  session, a ticket rather than certificates both ways): why reuse matters.

Envoy rows can be added the way ``bench_sidecar.py`` runs Envoy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_sidecar import (  # noqa: E402 - a sibling script, importable once its folder is on the path
    WRK_SCRIPT,
    Processes,
    Running,
    WrkResult,
    _answers_200,
    _free_port,
    _wait,
    cpu_seconds,
    run_wrk,
)

from meshlib._tls import ca  # noqa: E402
from meshlib._tls.identity import IdentityCheck  # noqa: E402
from meshlib._transport import AsyncHTTP1Transport  # noqa: E402

CONCURRENCIES = (16, 64)
ROUNDS = 3
QUICK_ROUNDS = 1
CLIENT_REQUESTS = 3000
QUICK_CLIENT_REQUESTS = 600
CLIENT_CONCURRENCY = 16
TRUST_DOMAIN = "bench.local"


@dataclass
class Pki:
    ca: Path
    upstream_cert: Path
    upstream_key: Path
    client_cert: Path
    client_key: Path


def make_pki(root: Path) -> Pki:
    ca.init_ca(root / "ca", TRUST_DOMAIN)
    up = ca.issue(root / "ca", root, "upstream")
    client = ca.issue(root / "ca", root, "frontend")
    return Pki(root / "ca" / ca.CA_CERT, up.cert, up.key, client.cert, client.key)


def start_upstream(procs: Processes, name: str, tls: Pki | None) -> tuple[Running, int]:
    cmd = [sys.executable, str(HERE / "fast_upstream.py"), "--port", "0"]
    if tls is not None:
        cmd += ["--tls", str(tls.upstream_cert), str(tls.upstream_key), str(tls.ca)]
    running = procs.start(name, cmd)
    port: list[int] = []

    def bound() -> bool:
        text = running.log.read_text()
        if "listening on 127.0.0.1:" in text:
            port.append(int(text.split("listening on 127.0.0.1:")[1].split()[0]))
        return bool(port)

    reason = _wait(running, bound, 30)
    if reason is not None:
        raise RuntimeError(f"{name} did not start: {reason}")
    return running, port[0]


def sidecar_config(pki: Pki, plain: int, mtls: int, port: int, admin: int) -> dict[str, Any]:
    return {
        "clusters": {
            "plain": {"endpoints": [f"http://127.0.0.1:{plain}"]},
            "mtls": {
                "endpoints": [f"https://127.0.0.1:{mtls}"],
                "tls": {
                    "mode": "mutual",
                    "ca_file": str(pki.ca),
                    "cert_file": str(pki.client_cert),
                    "key_file": str(pki.client_key),
                    "expected_identities": [f"spiffe://{TRUST_DOMAIN}/ns/default/sa/upstream"],
                },
            },
        },
        # wrk's Host is 127.0.0.1:PORT: the path picks the cluster.
        "routes": [{"match": {"path_prefix": "/mtls"}, "cluster": "mtls"}, {"match": {}, "cluster": "plain"}],
        "sidecar": {"outbound": {"listen": f"127.0.0.1:{port}"}, "admin": {"listen": f"127.0.0.1:{admin}"}},
    }


@dataclass
class Row:
    name: str
    concurrency: int
    runs: list[WrkResult] = field(default_factory=list)
    cpu: float = 0.0

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.runs)

    @property
    def p99_ms(self) -> float:
        return statistics.median(r.p99_us for r in self.runs) / 1000

    @property
    def cpu_us(self) -> float:
        return self.cpu / max(sum(r.requests for r in self.runs), 1) * 1e6

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)


def through_the_sidecar(workdir: Path, pki: Pki, duration: int, rounds: int) -> list[Row]:
    script = workdir / "summary.lua"
    script.write_text(WRK_SCRIPT)
    rows: list[Row] = []
    with Processes(workdir) as procs:
        _, plain = start_upstream(procs, "plain upstream", None)
        _, mtls = start_upstream(procs, "mtls upstream", pki)
        port, admin = _free_port(), _free_port()
        config = workdir / "mesh.yaml"
        config.write_text(yaml.safe_dump(sidecar_config(pki, plain, mtls, port, admin)))
        proxy = procs.start("meshlib proxy", [sys.executable, "-m", "meshlib", "proxy", "--config", str(config)])
        reason = _wait(proxy, lambda: _answers_200(f"http://127.0.0.1:{port}/mtls/"), 30)
        if reason is not None:
            raise RuntimeError(f"meshlib proxy did not start: {reason}")
        for concurrency in CONCURRENCIES:
            pair = {kind: Row(kind, concurrency) for kind in ("plaintext", "mTLS + SPIFFE check")}
            for _ in range(rounds):
                for kind, path in (("plaintext", "/plain/"), ("mTLS + SPIFFE check", "/mtls/")):
                    url = f"http://127.0.0.1:{port}{path}"
                    run_wrk(["wrk"], url, concurrency, 1, script)  # warm-up: pools filled, handshakes done
                    before = cpu_seconds(proxy.pid)
                    pair[kind].runs.append(run_wrk(["wrk"], url, concurrency, duration, script))
                    pair[kind].cpu += cpu_seconds(proxy.pid) - before
            rows += pair.values()
        stats = httpx.get(f"http://127.0.0.1:{admin}/stats", timeout=5).json()
        assert stats["certificates"]["clusters.mtls.tls.cert_file"]["spiffe_id"].endswith("/sa/frontend")
    return rows


@dataclass
class ClientRow:
    name: str
    rps: float
    cpu_us: float


async def _client_run(transport: AsyncHTTP1Transport, url: str, requests: int) -> tuple[float, float]:
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            response = await transport.handle_async_request(httpx.Request("GET", url))
            await response.aread()
            await response.aclose()

    await worker()  # one request first: the first connection is made outside the measurement
    left = requests
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CLIENT_CONCURRENCY)))
    return time.perf_counter() - wall, time.process_time() - cpu


def upstream_client_alone(workdir: Path, pki: Pki, requests: int) -> list[ClientRow]:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.check_hostname = False  # the SPIFFE ID names the peer, as the mesh does with expected_identities
    context.load_cert_chain(pki.client_cert, pki.client_key)
    check = IdentityCheck.of([f"spiffe://{TRUST_DOMAIN}/ns/default/sa/upstream"])
    rows = []
    with Processes(workdir) as procs:
        _, plain = start_upstream(procs, "plain upstream", None)
        _, mtls = start_upstream(procs, "mtls upstream", pki)
        cases = [
            ("plaintext, kept alive", f"http://127.0.0.1:{plain}/", AsyncHTTP1Transport()),
            (
                "mTLS, kept alive",
                f"https://127.0.0.1:{mtls}/",
                AsyncHTTP1Transport(ssl_context=context, verify_peer=check),
            ),
            (
                "mTLS, a handshake per request",
                f"https://127.0.0.1:{mtls}/",
                AsyncHTTP1Transport(ssl_context=context, verify_peer=check, max_idle_per_origin=0),
            ),
        ]

        async def run_all() -> None:
            for name, url, transport in cases:
                n = requests // 5 if "handshake" in name else requests
                wall, cpu = await _client_run(transport, url, n)
                rows.append(ClientRow(name, n / wall, cpu / n * 1e6))
                await transport.aclose()

        try:
            import uvloop

            uvloop.run(run_all())
        except ImportError:  # pragma: no cover
            asyncio.run(run_all())
    return rows


def print_tables(rows: Sequence[Row], client: Sequence[ClientRow]) -> None:
    print("\nthrough the sidecar (wrk → meshlib proxy → fast_upstream), median of the runs")
    print(f"{'case':<22} {'conns':>5} {'req/s':>9} {'p99 ms':>8} {'CPU µs/req':>11} {'vs plain':>9} {'errors':>7}")
    print("─" * 78)
    for row in rows:
        base = next(r for r in rows if r.concurrency == row.concurrency and r.name == "plaintext")
        ratio = row.rps / base.rps if base.rps else float("nan")
        print(
            f"{row.name:<22} {row.concurrency:>5} {row.rps:>9,.0f} {row.p99_ms:>8.2f} {row.cpu_us:>11.0f}"
            f" {ratio:>8.2f}× {row.errors:>7}"
        )
    print(f"\nthe upstream client alone (AsyncHTTP1Transport, {CLIENT_CONCURRENCY} concurrent, uvloop)")
    print(f"{'case':<32} {'req/s':>9} {'CPU µs/req':>11}")
    print("─" * 54)
    for crow in client:
        print(f"{crow.name:<32} {crow.rps:>9,.0f} {crow.cpu_us:>11.0f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one short round: a smoke run")
    parser.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 5, quick 2)")
    args = parser.parse_args(argv)
    duration = args.duration or (2 if args.quick else 5)
    rounds = QUICK_ROUNDS if args.quick else ROUNDS
    print(
        f"meshlib bench_mtls: Python {platform.python_version()}, OpenSSL {ssl.OPENSSL_VERSION.split()[1]},"
        f" {os.cpu_count()} CPUs; wrk -t 2, {duration} s per run, {rounds} round(s), ABAB"
    )
    with tempfile.TemporaryDirectory(prefix="bench-mtls-") as tmp:
        workdir = Path(tmp)
        pki = make_pki(workdir / "pki")
        rows = through_the_sidecar(workdir, pki, duration, rounds)
        client = upstream_client_alone(workdir, pki, QUICK_CLIENT_REQUESTS if args.quick else CLIENT_REQUESTS)
    print_tables(rows, client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
