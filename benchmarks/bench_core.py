"""Core speed benchmark: bare httpx clients vs meshed ones against a uvicorn upstream, and the engine alone.

Run ``python benchmarks/bench_core.py`` (``--quick`` for a smoke run, ``--check``
to exit 1 when a target is missed, ``--profile`` to profile the engine alone).
See ``benchmarks/README.md`` for what each row means.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import math
import os
import platform
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx

import meshlib
from meshlib._cli import build_kind

HERE = Path(__file__).resolve().parent

N_ROUTES = 50
N_CLUSTERS = 20
CONCURRENCY = 16
TARGET_RATIO = 0.90  # meshed client keeps at least this share of the bare client's requests/s
# The engine alone costs at most this many µs per request: the data-path issue's target (the first issue's was 25).
TARGET_ENGINE_US = 15.0

# The request every case sends. It matches route TARGET_ROUTE, late in the table, so matching walks most routes.
TARGET_ROUTE = "r47"
TARGET_HOST = "shop.internal"
TARGET_PATH = "/api/v47/items/17"
TARGET_HEADERS = {"x-tenant": "t47", "x-user": "user-17", "user-agent": "bench/1.0"}


@dataclass(frozen=True)
class Sizes:
    """How much to measure: each case runs ``pairs`` bare/mesh batch pairs, interleaved (ABBA).

    ``budget`` bounds each case in seconds: no new pair starts after it (three pairs always run).
    """

    pairs: int
    sync_batch: int  # requests per batch
    async_batch: int
    engine_batch: int
    budget: float


FULL = Sizes(pairs=16, sync_batch=150, async_batch=160, engine_batch=2000, budget=20.0)
QUICK = Sizes(pairs=3, sync_batch=40, async_batch=64, engine_batch=500, budget=4.0)
MIN_PAIRS = 3


# --- the config: 50 routes over 20 clusters ---------------------------------------------------------------------------


def generate_config(endpoints: Callable[[int], list[Any]]) -> dict[str, Any]:
    """50 routes over 20 clusters; ``endpoints(i)`` gives cluster i's endpoints.

    Routes mix host, path (prefix, exact, regex) and header (exact, prefix,
    regex) matches; a fifth name their own host, a fifth name no host (so
    they are candidates for every host), the rest share TARGET_HOST. Every
    fourth route splits, some rewrite or edit headers. TARGET_ROUTE is the
    one the benchmark's request matches.
    """
    lbs = ["round_robin", "random", "least_request", "ring_hash"]
    clusters: dict[str, Any] = {}
    for i in range(N_CLUSTERS):
        cluster: dict[str, Any] = {"endpoints": endpoints(i), "lb": lbs[i % len(lbs)]}
        if cluster["lb"] == "ring_hash":
            cluster["hash_on"] = {"header": "x-user"}
        clusters[f"c{i:02d}"] = cluster

    routes: list[dict[str, Any]] = []
    for i in range(N_ROUTES):
        name = f"r{i:02d}"
        match: dict[str, Any] = {}
        if i % 5 == 0:
            match["host"] = f"svc-{i}.internal"
        elif i % 5 != 4:
            match["host"] = TARGET_HOST
        if i % 5 == 4:  # no host: checked for every request, so make them fail on a header
            match["headers"] = {"x-canary": {"exact": f"on-{i}"}}
        elif i % 3 == 0:
            match["path_prefix"] = f"/api/v{i}/"
            match["headers"] = {"x-tenant": {"exact": f"t{i}"}}
        elif i % 3 == 1:
            match["path_regex"] = rf"/api/v{i}/items/[0-9]+"
            match["headers"] = {"user-agent": {"regex": rf".*App/{i}\b.*"}}
        else:
            match["path"] = f"/api/v{i}/items"
            match["headers"] = {"x-user": {"prefix": "user-"}}
        route: dict[str, Any] = {"name": name, "match": match}
        if i % 4 == 0:
            route["split"] = [
                {"cluster": f"c{i % N_CLUSTERS:02d}", "weight": 90},
                {"cluster": f"c{(i + 1) % N_CLUSTERS:02d}", "weight": 10},
            ]
        else:
            route["cluster"] = f"c{i % N_CLUSTERS:02d}"
        if i % 6 == 0 and "path_regex" not in match:
            route["rewrite"] = {"path_prefix": "/v2/"}
        if i % 7 == 0:
            route["headers"] = {"request": {"set": {"x-route": name}}, "response": {"set": {"x-served-by": "mesh"}}}
        routes.append(route)

    # The benchmark's route: a late TARGET_HOST route with a header match, a 3-way split, a rewrite and header edits.
    target = routes[int(TARGET_ROUTE[1:])]
    target["match"] = {"host": TARGET_HOST, "path_prefix": "/api/v47/", "headers": {"x-tenant": {"exact": "t47"}}}
    target.pop("cluster", None)
    target["split"] = [
        {"cluster": "c10", "weight": 70},  # least_request
        {"cluster": "c11", "weight": 20},  # ring_hash on x-user
        {"cluster": "c12", "weight": 10},  # round_robin
    ]
    target["rewrite"] = {"path_prefix": "/"}
    target["headers"] = {"request": {"set": {"x-route": TARGET_ROUTE}, "remove": ["x-debug"]}}
    return {"service": "bench", "clusters": clusters, "routes": routes}


def _fake_endpoints(i: int) -> list[Any]:
    return [{"url": f"http://10.0.{i}.{j + 1}:8080", "weight": 1 + j % 2} for j in range(3)]


# --- zero-I/O inner transports ---------------------------------------------------------------------------------------


class ZeroIO(httpx.BaseTransport):
    """Answers every request with a fresh ``200 ok``, without any I/O."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"ok")


class AsyncZeroIO(httpx.AsyncBaseTransport):
    """The async twin of :class:`ZeroIO`."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"ok")


# --- the uvicorn upstream, in its own process ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def uvicorn_upstream(start_timeout: float = 15.0) -> Iterator[str]:
    """Run ``benchmarks/upstream_app.py`` under uvicorn in a subprocess; yields its URL; always stops it."""
    with tempfile.TemporaryFile() as log:
        for _attempt in range(3):  # the free port can be taken between probing and binding: retry
            port = _free_port()
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                "upstream_app:app",
                "--app-dir",
                str(HERE),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
                "--lifespan",
                "off",
            ]
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
            try:
                url = f"http://127.0.0.1:{port}"
                if _wait_ready(proc, url, start_timeout):
                    yield url
                    return
            finally:
                _stop(proc)
        log.seek(0)
        raise RuntimeError("uvicorn upstream did not start:\n" + log.read().decode(errors="replace")[-2000:])


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                if client.get(url + "/ready").status_code == 200:
                    return True
            except httpx.TransportError:
                time.sleep(0.02)
    return False


# --- measurements ----------------------------------------------------------------------------------------------------
#
# A batch sends a fixed number of requests (fewer if it runs past its time cap) and returns (requests done, seconds).
# Bare and mesh batches alternate ABBA, so a change in background load hits both sides alike. Client rows
# report each side's median batch (robust to bursts of other load); engine rows, CPU only, the best batch.

Batch = Callable[[], tuple[int, float]]
AsyncBatch = Callable[[], Awaitable[tuple[int, float]]]


def _check(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"unexpected {response.status_code} from {response.request.url}")


def sync_batch(client: httpx.Client, url: str, n: int, cap: float) -> tuple[int, float]:
    """``n`` sequential requests."""
    done = 0
    start = time.perf_counter()
    for done in range(1, n + 1):
        _check(client.get(url, headers=TARGET_HEADERS))
        if done % 32 == 0 and time.perf_counter() - start > cap:
            break
    return done, time.perf_counter() - start


async def async_batch(client: httpx.AsyncClient, url: str, n: int, cap: float, concurrency: int) -> tuple[int, float]:
    """``n`` requests sent by ``concurrency`` tasks."""
    tickets = iter(range(n))
    done = 0
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        for _ in tickets:
            _check(await client.get(url, headers=TARGET_HEADERS))
            done += 1
            if time.perf_counter() - start > cap:
                return

    async with asyncio.TaskGroup() as tasks:
        for _ in range(concurrency):
            tasks.create_task(worker())
    return done, time.perf_counter() - start


def engine_batch(
    transport: httpx.BaseTransport, requests: Sequence[httpx.Request], n: int, cap: float
) -> tuple[int, float]:
    """``n`` calls of ``handle_request`` on prebuilt requests, closing each response."""
    handle = transport.handle_request
    count = len(requests)
    done = 0
    start = time.perf_counter()
    for done in range(1, n + 1):
        handle(requests[done % count]).close()
        if done % 1024 == 0 and time.perf_counter() - start > cap:
            break
    return done, time.perf_counter() - start


async def engine_batch_async(
    transport: httpx.AsyncBaseTransport, requests: Sequence[httpx.Request], n: int, cap: float
) -> tuple[int, float]:
    """The async twin of :func:`engine_batch`."""
    handle = transport.handle_async_request
    count = len(requests)
    done = 0
    start = time.perf_counter()
    for done in range(1, n + 1):
        response = await handle(requests[done % count])
        await response.aclose()
        if done % 1024 == 0 and time.perf_counter() - start > cap:
            break
    return done, time.perf_counter() - start


def _side(i: int) -> int:
    """Which side runs i-th: 0 (bare) or 1 (mesh), in ABBA order (0 1 1 0 0 1 1 0 ...)."""
    return (i + i // 2) % 2


Rates = tuple[list[float], list[float]]  # requests/s of each bare batch, of each mesh batch


def interleave(sizes: Sizes, bare: Batch, mesh: Batch) -> Rates:
    """Run bare and mesh batches alternately, ABBA; each batch's requests/s."""
    bare(), mesh()  # warm-up: connections, caches
    deadline = time.perf_counter() + sizes.budget
    rates: Rates = ([], [])
    gc.collect()
    for i in range(2 * sizes.pairs):
        if i % 2 == 0 and i >= 2 * MIN_PAIRS and time.perf_counter() > deadline:
            break
        side = _side(i)
        n, seconds = (bare, mesh)[side]()
        rates[side].append(n / seconds)
    return rates


async def interleave_async(sizes: Sizes, bare: AsyncBatch, mesh: AsyncBatch) -> Rates:
    """The async twin of :func:`interleave`."""
    await bare(), await mesh()
    deadline = time.perf_counter() + sizes.budget
    rates: Rates = ([], [])
    gc.collect()
    for i in range(2 * sizes.pairs):
        if i % 2 == 0 and i >= 2 * MIN_PAIRS and time.perf_counter() > deadline:
            break
        side = _side(i)
        n, seconds = await (bare, mesh)[side]()
        rates[side].append(n / seconds)
    return rates


@dataclass(frozen=True)
class Row:
    case: str
    unit: str
    bare: float
    mesh: float

    @property
    def higher_is_better(self) -> bool:
        return self.unit == "req/s"

    @property
    def ratio(self) -> float:
        return self.mesh / self.bare

    @property
    def overhead_us(self) -> float:
        """What the mesh adds per request, in µs."""
        if self.higher_is_better:  # requests/s
            return (1 / self.mesh - 1 / self.bare) * 1e6
        return self.mesh - self.bare

    @property
    def target(self) -> str:
        return f"≥ {TARGET_RATIO:.2f}× bare" if self.higher_is_better else f"engine ≤ {TARGET_ENGINE_US:.0f} µs"

    @property
    def ok(self) -> bool:
        if self.higher_is_better:
            return self.ratio >= TARGET_RATIO
        return self.overhead_us <= TARGET_ENGINE_US


def _client_row(case: str, rates: Rates) -> Row:
    """Requests/s: each side's median batch, robust to bursts of other load on the machine."""
    return Row(case, "req/s", statistics.median(rates[0]), statistics.median(rates[1]))


def _engine_row(case: str, rates: Rates) -> Row:
    """µs per request: each side's best batch (CPU only: other load can only add time)."""
    return Row(case, "µs/req", 1e6 / max(rates[0]), 1e6 / max(rates[1]))


def live_rows(sizes: Sizes) -> list[Row]:
    """Bare vs meshed httpx clients against the uvicorn upstream, sync and async."""
    cap = sizes.budget
    with uvicorn_upstream() as upstream:
        print(f"upstream: uvicorn in a subprocess at {upstream}", flush=True)
        mesh = meshlib.Mesh.from_dict(generate_config(lambda i: [upstream]))
        bare_url = upstream + TARGET_PATH
        mesh_url = f"http://{TARGET_HOST}{TARGET_PATH}"
        cpu = CpuPerRequest()
        with httpx.Client(trust_env=False) as bare_client, mesh.client(trust_env=False) as mesh_client:
            n = sizes.sync_batch
            rates = interleave(
                sizes,
                cpu.measure("sync", 0, lambda: sync_batch(bare_client, bare_url, n, cap)),
                cpu.measure("sync", 1, lambda: sync_batch(mesh_client, mesh_url, n, cap)),
            )
        sync_row = _client_row("httpx.Client, sequential", rates)
        print(f"  {sync_row.case}: done", flush=True)

        async def run_async() -> Rates:
            limits = httpx.Limits(max_connections=CONCURRENCY)
            async with (
                httpx.AsyncClient(trust_env=False, limits=limits) as bare_client,
                mesh.async_client(trust_env=False, limits=limits) as mesh_client,
            ):
                n = sizes.async_batch
                return await interleave_async(
                    sizes,
                    cpu.measure_async("async", 0, lambda: async_batch(bare_client, bare_url, n, cap, CONCURRENCY)),
                    cpu.measure_async("async", 1, lambda: async_batch(mesh_client, mesh_url, n, cap, CONCURRENCY)),
                )

        async_row = _client_row(f"httpx.AsyncClient, {CONCURRENCY} concurrent", asyncio.run(run_async()))
        print(f"  {async_row.case}: done", flush=True)
    cpu.report()
    return [sync_row, async_row]


class CpuPerRequest:
    """The client process's CPU per request, bare and mesh: steadier than requests/s on a shared 2-core machine.

    Requests/s also depends on the upstream process, which shares the cores;
    CPU time of this process is what the mesh itself adds.
    """

    def __init__(self) -> None:
        self.samples: dict[tuple[str, int], list[float]] = {}

    def measure(self, case: str, side: int, batch: Batch) -> Batch:
        def run() -> tuple[int, float]:
            start = time.process_time()
            n, seconds = batch()
            self.samples.setdefault((case, side), []).append((time.process_time() - start) / n * 1e6)
            return n, seconds

        return run

    def measure_async(self, case: str, side: int, batch: AsyncBatch) -> AsyncBatch:
        async def run() -> tuple[int, float]:
            start = time.process_time()
            n, seconds = await batch()
            self.samples.setdefault((case, side), []).append((time.process_time() - start) / n * 1e6)
            return n, seconds

        return run

    def report(self) -> None:
        for case in ("sync", "async"):
            bare, mesh = (statistics.median(self.samples.get((case, side), [math.nan])) for side in (0, 1))
            print(f"  client CPU per request, {case}: bare {bare:.0f} µs, mesh {mesh:.0f} µs ({mesh - bare:+.0f} µs)")


def _engine_setup() -> tuple[meshlib.Mesh, list[httpx.Request]]:
    mesh = meshlib.Mesh.from_dict(generate_config(_fake_endpoints))
    # Built by a client, so they carry the headers a client adds (host, accept, user-agent...), as in real use.
    with httpx.Client(trust_env=False) as client:
        requests = [
            client.build_request(
                "GET", f"http://{TARGET_HOST}/api/v47/items/{i}", headers={**TARGET_HEADERS, "x-user": f"user-{i}"}
            )
            for i in range(256)
        ]
    route = mesh.snapshot.routes.match(requests[0])
    if route is None or route.name != TARGET_ROUTE:
        raise RuntimeError(f"the benchmark request matched {route and route.name!r}, not {TARGET_ROUTE!r}")
    return mesh, requests


def engine_rows(sizes: Sizes) -> list[Row]:
    """The engine alone over a zero-I/O inner transport vs that transport called directly."""
    mesh, requests = _engine_setup()
    n, cap = sizes.engine_batch, sizes.budget
    inner, mesh_transport = ZeroIO(), mesh.transport(inner=ZeroIO())
    rates = interleave(
        sizes,
        lambda: engine_batch(inner, requests, n, cap),
        lambda: engine_batch(mesh_transport, requests, n, cap),
    )
    sync_row = _engine_row("engine alone, sync", rates)

    async def run_async() -> Rates:
        inner, mesh_transport = AsyncZeroIO(), mesh.async_transport(inner=AsyncZeroIO())
        return await interleave_async(
            sizes,
            lambda: engine_batch_async(inner, requests, n, cap),
            lambda: engine_batch_async(mesh_transport, requests, n, cap),
        )

    async_row = _engine_row("engine alone, async", asyncio.run(run_async()))
    return [sync_row, async_row]


def profile_engine(sizes: Sizes, limit: int = 30) -> None:
    """Profile the engine alone (sync) and print where the time goes."""
    mesh, requests = _engine_setup()
    transport = mesh.transport(inner=ZeroIO())
    engine_batch(transport, requests, sizes.engine_batch, sizes.budget)
    profiler = cProfile.Profile()
    profiler.enable()
    done, seconds = engine_batch(transport, requests, sizes.engine_batch * 5, sizes.budget)
    profiler.disable()
    per_request = seconds / done * 1e6
    print(f"\nprofile of the engine alone (sync), {per_request:.1f} µs/request under the profiler:\n")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(limit)


# --- report ----------------------------------------------------------------------------------------------------------


def _fmt(value: float, unit: str) -> str:
    return f"{value:,.0f}" if unit == "req/s" else f"{value:.1f}"


def print_table(rows: Sequence[Row]) -> None:
    header = ["case", "unit", "bare", "mesh", "ratio", "mesh adds", "target", "ok"]
    body = [
        [
            r.case,
            r.unit,
            _fmt(r.bare, r.unit),
            _fmt(r.mesh, r.unit),
            f"{r.ratio:.2f}×",
            f"{r.overhead_us:+.1f} µs",
            r.target,
            "yes" if r.ok else "NO",
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    right = {2, 3, 4, 5}

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(padded).rstrip()

    print(line(header))
    print("─" * len(line(header)))
    for cells in body:
        print(line(cells))


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # so the finally blocks stop the upstream


def core_speed_ms(loops: int = 2_000_000, repeats: int = 3) -> float:
    """The best of ``repeats`` timings of a plain Python loop of ``loops`` additions, in ms: how fast this core runs
    Python right now. The engine row's µs are absolute, so a slowed core (other tenants) shows in them; this number
    tells such an hour from a regression."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        total = 0
        for i in range(loops):
            total += i
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run (a few seconds)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--profile", action="store_true", help="also profile the engine alone and print the top")
    parser.add_argument("--engine-only", action="store_true", help="skip the uvicorn cases")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    sizes = QUICK if args.quick else FULL

    mesh, _ = _engine_setup()
    walked = [r.name for r in mesh.snapshot.routes.candidates(TARGET_HOST)].index(TARGET_ROUTE) + 1
    print(
        f"meshlib {meshlib.__version__} ({build_kind()}) bench_core{' --quick' if args.quick else ''}: "
        f"Python {platform.python_version()}, httpx {httpx.__version__}, {os.cpu_count()} CPUs\n"
        f"config: {N_ROUTES} routes over {N_CLUSTERS} clusters; the request matches {TARGET_ROUTE}, "
        f"the {walked}th route tried for its host\n"
        f"each case: up to {sizes.pairs} bare/mesh batch pairs, interleaved; clients: median batch, engine: best",
        flush=True,
    )
    speed = core_speed_ms()
    started = time.perf_counter()
    rows = [] if args.engine_only else live_rows(sizes)
    rows += engine_rows(sizes)
    print(f"core speed: a plain Python loop of 2,000,000 additions, {speed:.0f} ms before, {core_speed_ms():.0f} after")
    print()
    print_table(rows)
    print(f"\n({time.perf_counter() - started:.1f} s)")
    if args.profile:
        profile_engine(sizes)
    missed = [r.case for r in rows if not r.ok]
    if missed:
        print(f"missed targets: {', '.join(missed)}")
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
