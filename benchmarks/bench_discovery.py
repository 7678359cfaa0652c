"""Discovery at scale: watcher processes following 2,000 endpoints in etcd through churn; latency, CPU and memory.

Run ``python benchmarks/bench_discovery.py`` (``--duration S`` seconds of churn, default 600; ``--watchers N``,
default 20; ``--endpoints N``, default 2,000; ``--rate R`` changes/s, default 50; ``--quick`` for a 20 s smoke
run; ``--check`` to exit 1 when a target is missed). One real etcd member runs on loopback (``/usr/bin/etcd``,
started by ``tests/discovery/etcd_server.py``); the endpoints are registered under ``/bench/services/bench/``
as meshlib's registration writes them; each watcher is a process of its own with a mesh whose cluster
``bench`` discovers them, with the policies users configure (a timeout, retries, a breaker, outlier
detection). The parent then registers brand-new addresses and deletes old ones at ``--rate`` changes/s,
keeping about ``--endpoints`` registered, and reports:

* the time from a registration to the routing table of every watcher (p50, p90, p99, max; and how many
  were still missing from some table at the end), and the same for deregistrations;
* the CPU each watcher spends per change, net of this benchmark's own instrumentation and of its idle CPU;
* each watcher's RSS at the start of churn, after the warm-up (the first minute) and at the end.

Targets (the issue's): p99 registration → every watcher under 1 s, and no RSS growth after the warm-up
(at most ``--max-growth`` MB per watcher). See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import random
import resource
import signal
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.discovery.etcd_server, from the repo

import meshlib
from meshlib._discovery.etcd_client import EtcdClient
from meshlib._discovery.registration import registration_key

if TYPE_CHECKING:
    from tests.discovery.etcd_server import EtcdCluster

PREFIX = "/bench/"
SERVICE = "bench"
CLUSTER = "bench"
PORT = 8080

TARGET_P99 = 1.0  # seconds, registration → every watcher's routing table
# RSS growth per watcher allowed from the end of the warm-up to the end of the run. A leak only matters when it
# grows with the changes: over the 9 minutes after the warm-up (27,000 changes) 4 MB is ~155 bytes a change, one
# small object kept per change; below it is the noise of the allocator, which holds up to a few snapshots of
# 2,000 endpoints (~0.7 MB each at their peak) and frees arenas when it pleases.
MAX_GROWTH_MB = 4.0
WARMUP = 60.0  # seconds of churn before the reference RSS (shorter runs: a quarter of the run)
MIN_AGE = 30.0  # only endpoints registered at least this long ago are deleted: each registration gets measured
FLUSH = 0.5  # seconds between a watcher's reports (its CPU, RSS and the endpoints it saw come and go)
PRE_REGISTER_THREADS = 8
DRIVER_THREADS = 8  # the churn's calls in flight at most: 50/s holds while etcd takes up to 160 ms a call
MAX_PENDING = 500  # calls waiting for a thread: beyond this etcd cannot keep the pace, and the churn stops
READY_TIMEOUT = 300.0  # seconds for every watcher to start and list etcd (20 processes importing on 2 CPUs)
STOP_TIMEOUT = 20.0
QUICK_DURATION = 20
QUICK_IDLE = 4.0


# --- the addresses -------------------------------------------------------------------------------------------------


def address(index: int) -> str:
    """The ``index``-th endpoint, a distinct 10.x.y.z for each of 2^24 indices; brand-new ones are never reused."""
    return f"http://10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}:{PORT}"


def index_of(url: str) -> int:
    """The inverse of :func:`address`."""
    host = url.removeprefix("http://").rpartition(":")[0]
    _, a, b, c = host.split(".")
    return int(a) << 16 | int(b) << 8 | int(c)


def register(client: EtcdClient, index: int) -> None:
    url = address(index)
    # The key and value meshlib's own registration writes: PREFIX services/SERVICE/HOST:PORT → address and labels.
    value = json.dumps({"address": url, "labels": {"version": "v1"}}, sort_keys=True)
    client.put(registration_key(PREFIX, SERVICE, url), value)


def deregister(client: EtcdClient, index: int) -> None:
    client.delete(registration_key(PREFIX, SERVICE, address(index)))


def mesh_config(etcd: str) -> dict[str, Any]:
    """One cluster discovered from etcd, with the policies users configure (never a bare cluster)."""
    return {
        "registry": {"etcd": {"endpoints": [etcd], "prefix": PREFIX}},
        "clusters": {
            CLUSTER: {
                "discovery": {"etcd": {"service": SERVICE}},
                "timeout": "1s",
                "retry": {"attempts": 3},
                "circuit_breaker": {},
                "outlier_detection": {},
            }
        },
    }


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --- a watcher process ---------------------------------------------------------------------------------------------


class Recorder:
    """Wraps the mesh's recompile: after each swap, which endpoint URLs came and went, and when.

    time.monotonic() is CLOCK_MONOTONIC, one clock for the whole machine on Linux, so the parent compares these
    times with its own. The diff runs on the applier thread after the swap; its thread CPU is summed in ``cpu``
    so that the parent can take it off the watcher's.
    """

    def __init__(self, mesh: meshlib.Mesh) -> None:
        self._mesh = mesh
        self._lock = threading.Lock()
        self.urls = self._current()
        self._added: list[tuple[str, float]] = []
        self._removed: list[tuple[str, float]] = []
        self.swaps = 0
        self.cpu = 0.0

    def _current(self) -> frozenset[str]:
        return frozenset(endpoint.url for endpoint in self._mesh.snapshot.clusters[CLUSTER].endpoints)

    def wrap(self, apply: Callable[[], None]) -> Callable[[], None]:
        def recorded() -> None:
            apply()
            seen = time.monotonic()  # the new snapshot is in place: requests from now on route by it
            started = time.thread_time()
            urls = self._current()
            added, removed = urls - self.urls, self.urls - urls
            self.urls = urls
            with self._lock:
                self._added.extend((url, seen) for url in added)
                self._removed.extend((url, seen) for url in removed)
                self.swaps += 1
                self.cpu += time.thread_time() - started

        return recorded

    def take(self) -> tuple[list[tuple[str, float]], list[tuple[str, float]], int, float]:
        with self._lock:
            added, removed, self._added, self._removed = self._added, self._removed, [], []
            return added, removed, self.swaps, self.cpu


def watcher_main(conn: Connection, etcd: str, deadline: float) -> None:
    """One watcher: a mesh following etcd, reporting every FLUSH seconds until told to stop (or the deadline)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us in order
    started = time.monotonic()
    mesh = meshlib.Mesh.from_dict(mesh_config(etcd))
    try:
        discovery = mesh._discovery
        assert discovery is not None
        recorder = Recorder(mesh)
        # The applier thread calls discovery._apply (the mesh's bound _rediscover, taken at construction), so that
        # is the one to wrap; patching mesh._rediscover would not be seen.
        discovery._apply = recorder.wrap(discovery._apply)
        conn.send(("ready", os.getpid(), len(recorder.urls), time.monotonic() - started, rss_kb()))
        main_cpu = time.thread_time()
        while time.monotonic() < deadline:
            if conn.poll(FLUSH):
                conn.recv()  # "stop" (EOFError when the parent is gone)
                break
            added, removed, swaps, diff_cpu = recorder.take()
            # Instrumentation: the diffs on the applier thread and all of this thread since it started looping.
            instrumentation = diff_cpu + time.thread_time() - main_cpu
            conn.send(
                ("sample", time.monotonic(), time.process_time(), rss_kb(), instrumentation, swaps, added, removed)
            )
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the parent went away: nobody to report to
    finally:
        mesh.close()


# --- the parent's view of the watchers -----------------------------------------------------------------------------


@dataclass
class Sample:
    at: float  # monotonic
    cpu: float  # process CPU seconds, all threads
    rss_kb: int
    instrumentation: float  # CPU seconds of the benchmark's own code in the watcher
    swaps: int


@dataclass
class WatcherLog:
    """What one watcher reported; ``added[i]``/``removed[i]``: when address i came into/left its table (NaN: not)."""

    size: int
    fresh_from: int  # indices from here on are brand-new registrations
    pid: int = 0
    listed: int = 0
    start_seconds: float = 0.0
    ready_rss_kb: int = 0
    samples: list[Sample] = field(default_factory=list)
    added: array[float] = field(init=False)
    removed: array[float] = field(init=False)
    fresh_seen: int = 0
    removed_seen: int = 0
    ready: bool = False
    gone: bool = False

    def __post_init__(self) -> None:
        self.added = array("d", [math.nan]) * self.size
        self.removed = array("d", [math.nan]) * self.size

    def handle(self, message: tuple[Any, ...]) -> None:
        if message[0] == "ready":
            _, self.pid, self.listed, self.start_seconds, self.ready_rss_kb = message
            self.ready = True
            return
        _, at, cpu, rss, instrumentation, swaps, added, removed = message
        for url, seen in added:
            i = index_of(url)
            if i < self.size and math.isnan(self.added[i]):
                self.added[i] = seen
                self.fresh_seen += i >= self.fresh_from
        for url, seen in removed:
            i = index_of(url)
            if i < self.size and math.isnan(self.removed[i]):
                self.removed[i] = seen
                self.removed_seen += 1
        self.samples.append(Sample(at, cpu, rss, instrumentation, swaps))

    def before(self, t: float) -> Sample:
        """The last sample at or before ``t`` (the first one if none)."""
        i = bisect.bisect_right([s.at for s in self.samples], t)
        return self.samples[max(i - 1, 0)]

    def after(self, t: float) -> Sample:
        """The first sample at or after ``t`` (the last one if none)."""
        i = bisect.bisect_left([s.at for s in self.samples], t)
        return self.samples[min(i, len(self.samples) - 1)]


class Fleet:
    """The watcher processes and a thread that reads their reports; :meth:`stop` ends them all, in order."""

    def __init__(self, count: int, etcd: str, size: int, fresh_from: int, deadline: float) -> None:
        context = multiprocessing.get_context("spawn")  # a clean interpreter each, as a real workload has
        self.logs = [WatcherLog(size, fresh_from) for _ in range(count)]
        self._conns: dict[Connection, WatcherLog] = {}
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._done = threading.Event()
        for i, log in enumerate(self.logs):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=watcher_main, args=(theirs, etcd, deadline), name=f"watcher-{i}", daemon=True
            )
            process.start()
            theirs.close()  # so that a watcher's exit reads as EOF here
            self._processes.append(process)
            self._conns[ours] = log
        self._reader = threading.Thread(target=self._read, name="fleet-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._done.is_set():
            open_conns = [conn for conn, log in self._conns.items() if not log.gone]
            if not open_conns:
                return
            for conn in wait(open_conns, timeout=0.2):
                assert isinstance(conn, Connection)
                log = self._conns[conn]
                try:
                    log.handle(conn.recv())
                except (EOFError, OSError):
                    log.gone = True

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(log.ready for log in self.logs):
            dead = [p.name for p, log in zip(self._processes, self.logs, strict=True) if log.gone and not log.ready]
            if dead:
                raise RuntimeError(f"watcher(s) {', '.join(dead)} exited before they were ready (see stderr)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the watchers were not ready within {timeout:g} s")
            time.sleep(0.1)

    def converged(self, registered: int, deleted: int) -> bool:
        return all(log.fresh_seen == registered and log.removed_seen == deleted for log in self.logs)

    def wait_sample_after(self, t: float, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(
            log.gone or (log.samples and log.samples[-1].at >= t) for log in self.logs
        ):
            time.sleep(0.05)

    def stop(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):  # gone already
                conn.send("stop")
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self._processes:
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        self._done.set()
        self._reader.join(5)
        for conn in self._conns:
            conn.close()


# --- the churn -----------------------------------------------------------------------------------------------------


@dataclass
class Churn:
    start: float = 0.0
    end: float = 0.0  # when the last call returned
    registered: list[int] = field(default_factory=list)  # indices, in schedule order
    deleted: list[int] = field(default_factory=list)
    put_at: dict[int, float] = field(default_factory=dict)  # index → monotonic time just before its put
    delete_at: dict[int, float] = field(default_factory=dict)
    call_seconds: list[float] = field(default_factory=list)  # each put's and delete's round trip
    max_lag: float = 0.0  # how much later than scheduled a call started, at most
    cut_short: bool = False
    errors: list[BaseException] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return len(self.registered) + len(self.deleted)


class Pool:
    """A set of indices with O(1) add and removal of a random member."""

    def __init__(self, items: Sequence[int] = ()) -> None:
        self._items = list(items)
        self._where = {item: i for i, item in enumerate(self._items)}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: int) -> None:
        self._where[item] = len(self._items)
        self._items.append(item)

    def pop_random(self, rng: random.Random) -> int:
        i = rng.randrange(len(self._items))
        item, last = self._items[i], self._items[-1]
        self._items[i], self._where[last] = last, i
        self._items.pop()
        del self._where[item]
        return item


def churn(client: EtcdClient, endpoints: int, rate: float, duration: float, seed: int) -> Churn:
    """``rate`` × ``duration`` changes on an absolute schedule: a brand-new address, or the deletion of an old one.

    The count of registered endpoints is pulled back towards ``endpoints``: a random walk around it. The calls
    run on a few threads, so that the pace holds while etcd answers slowly (it shares the CPUs with the watchers).
    """
    rng = random.Random(seed)
    result = Churn()
    old = Pool(range(endpoints))
    young: deque[tuple[int, float]] = deque()  # (index, when due), registered less than MIN_AGE ago
    fresh = endpoints
    total = round(rate * duration)

    def call(change: Callable[[EtcdClient, int], None], index: int, due: float, at: dict[int, float]) -> None:
        before = time.monotonic()
        try:
            change(client, index)
        except Exception as exc:
            result.errors.append(exc)
            return
        # t0 is the time just before the call: conservative, the latency includes the call's round trip.
        at[index] = before
        result.call_seconds.append(time.monotonic() - before)
        result.max_lag = max(result.max_lag, before - due)

    result.start = start = time.monotonic() + 0.05
    hard_stop = start + duration * 1.5 + 30  # a machine too busy to keep the pace ends the churn here
    with ThreadPoolExecutor(DRIVER_THREADS, thread_name_prefix="churn") as pool:
        for k in range(total):
            due = start + k / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            pending = len(result.registered) + len(result.deleted) - len(result.call_seconds) - len(result.errors)
            if result.errors or now > hard_stop or pending > MAX_PENDING:
                result.cut_short = not result.errors
                break
            while young and young[0][1] <= due - MIN_AGE:
                old.add(young.popleft()[0])
            count = len(old) + len(young)
            p_register = min(1.0, max(0.0, 0.5 + (endpoints - count) / 100))
            if rng.random() < p_register or not old:
                pool.submit(call, register, fresh, due, result.put_at)
                result.registered.append(fresh)
                young.append((fresh, due))
                fresh += 1
            else:
                index = old.pop_random(rng)
                pool.submit(call, deregister, index, due, result.delete_at)
                result.deleted.append(index)
    result.end = time.monotonic()
    if result.errors:
        raise RuntimeError(f"etcd refused a change of the churn: {result.errors[0]}") from result.errors[0]
    return result


# --- machine counters ----------------------------------------------------------------------------------------------


def machine_busy() -> tuple[int, int, int]:
    """(busy, stolen, total) jiffies of all CPUs, from /proc/stat.

    Stolen: time the hypervisor gave to other guests while this one had work (a VM's CPUs are shared).
    """
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle, steal = fields[3] + fields[4], fields[7]  # idle + iowait; steal
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle - steal, steal, total


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of another process, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Counters:
    """The machine's CPU counters at one moment, and those of etcd and of this process."""

    at: float
    busy: int
    stolen: int
    total: int
    etcd: float
    own: float

    @classmethod
    def take(cls, etcd_pid: int) -> Counters:
        return cls(time.monotonic(), *machine_busy(), process_cpu(etcd_pid), own_cpu())


# --- statistics and output -----------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest rank; NaN for no values."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(p * len(sorted_values)) - 1)]


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "–"
    if math.isinf(seconds):
        return "∞"  # not there by the end of the drain
    return f"{seconds * 1000:,.0f}" if seconds >= 10 else f"{seconds * 1000:,.1f}"


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> None:
    """Right-aligned columns but the first ``left``."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print("  " + line(header))
    for row in rows:
        print("  " + line(row))


@dataclass
class Latencies:
    """Seconds from each change's t0 until the last watcher (or each watcher) had it in its table.

    A change some watcher had not shown by the end of the drain counts as infinitely late: the percentiles are
    over every change made, not only over those that arrived.
    """

    all_watchers: list[float]
    each_watcher: list[float]
    missing: int  # changes some watcher had not shown by the end of the drain

    @classmethod
    def of(cls, at: dict[int, float], seen: Sequence[array[float]]) -> Latencies:
        all_watchers: list[float] = []
        each: list[float] = []
        missing = 0
        for index, t0 in at.items():
            late = [math.inf if math.isnan(s[index]) else s[index] - t0 for s in seen]
            each.extend(late)
            all_watchers.append(max(late))
            missing += math.isinf(all_watchers[-1])
        return cls(sorted(all_watchers), sorted(each), missing)

    def row(self, what: str, *, every: bool) -> list[str]:
        """``every``: until all watchers had it; else one row per watcher and change."""
        values = self.all_watchers if every else self.each_watcher
        return [
            what,
            f"{len(values):,}",
            *(ms(percentile(values, p)) for p in (0.5, 0.9, 0.99)),
            ms(values[-1] if values else math.nan),
            f"{self.missing:,}" if every else f"{sum(math.isinf(v) for v in values):,}",
        ]


@dataclass
class WatcherCost:
    pid: int
    swaps: int
    applied: int  # changes that reached its table during the churn and the drain
    applied_after_warm: int
    busy: float  # share of one core during churn, net of instrumentation
    per_change_us: float  # per change applied, net of instrumentation and of the idle baseline
    instrumentation_us: float  # per change applied
    idle_us_per_s: float
    rss_start: int
    rss_warm: int
    rss_end: int

    @property
    def growth_kb(self) -> int:
        return self.rss_end - self.rss_warm


def applied_between(log: WatcherLog, start: float, end: float) -> int:
    """The changes (endpoints in, endpoints out) that reached the watcher's table between ``start`` and ``end``."""
    return sum(1 for seen in (log.added, log.removed) for t in seen if start <= t <= end)


def watcher_costs(
    logs: Sequence[WatcherLog], churn_: Churn, idle: tuple[float, float], end: float, warm: float
) -> list[WatcherCost]:
    """Per change *applied*: a watcher that falls behind has taken in fewer changes than were made."""
    costs = []
    for log in logs:
        a, b = log.after(idle[0]), log.before(idle[1])
        idle_span = max(b.at - a.at, 1e-9)
        idle_rate = max(0.0, ((b.cpu - a.cpu) - (b.instrumentation - a.instrumentation)) / idle_span)
        c, d = log.before(churn_.start), log.after(end)
        span = max(d.at - c.at, 1e-9)
        gross, instrumentation = d.cpu - c.cpu, d.instrumentation - c.instrumentation
        net = gross - instrumentation - idle_rate * span
        warm_sample = log.after(warm)
        applied = applied_between(log, c.at, d.at)
        costs.append(
            WatcherCost(
                pid=log.pid,
                swaps=d.swaps - c.swaps,
                applied=applied,
                applied_after_warm=applied_between(log, warm_sample.at, d.at),
                busy=(gross - instrumentation) / span,
                per_change_us=net / max(applied, 1) * 1e6,
                instrumentation_us=instrumentation / max(applied, 1) * 1e6,
                idle_us_per_s=idle_rate * 1e6,
                rss_start=c.rss_kb,
                rss_warm=warm_sample.rss_kb,
                rss_end=d.rss_kb,
            )
        )
    return costs


# --- the run -------------------------------------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt  # SIGTERM: the same orderly stop as Ctrl-C


def pre_register(client: EtcdClient, count: int) -> float:
    started = time.monotonic()
    with ThreadPoolExecutor(PRE_REGISTER_THREADS) as pool:
        for _ in pool.map(lambda i: register(client, i), range(count)):
            pass
    return time.monotonic() - started


def etcd_pid(cluster: EtcdCluster) -> int:
    process = cluster._members[0].process  # the helper keeps its Popen private; we only read its pid
    assert process is not None
    return process.pid


def run(args: argparse.Namespace) -> int:
    from tests.discovery.etcd_server import EtcdCluster  # the parent only: cryptography stays out of the watchers

    load_before = os.getloadavg()
    cpus = os.cpu_count() or 1
    print(
        f"bench_discovery: 1 etcd member, {args.endpoints:,} endpoints of service {SERVICE!r}, "
        f"{args.watchers} watcher processes, {args.rate:g} changes/s for {args.duration:g} s"
    )
    print(f"machine: {cpus} CPUs, load average {' '.join(f'{x:.2f}' for x in load_before)} before", flush=True)
    cluster = EtcdCluster(members=1)
    fleet: Fleet | None = None
    client: EtcdClient | None = None
    try:
        cluster.start()
        etcd = cluster.endpoints[0]
        client = EtcdClient([etcd])
        took = pre_register(client, args.endpoints)
        print(f"  registered {args.endpoints:,} endpoints in {took:.1f} s", flush=True)
        size = args.endpoints + round(args.rate * args.duration) + 1
        deadline = time.monotonic() + READY_TIMEOUT + args.idle + args.duration * 1.5 + args.drain + 120
        started = time.monotonic()
        fleet = Fleet(args.watchers, etcd, size, args.endpoints, deadline)
        fleet.wait_ready(READY_TIMEOUT)
        listed = {log.listed for log in fleet.logs}
        if listed != {args.endpoints}:
            raise RuntimeError(f"the watchers listed {sorted(listed)} endpoints, not {args.endpoints}")
        rss = [log.ready_rss_kb for log in fleet.logs]
        print(
            f"  {args.watchers} watchers ready in {time.monotonic() - started:.1f} s (each listed "
            f"{args.endpoints:,} endpoints in {max(log.start_seconds for log in fleet.logs):.1f} s at most; "
            f"RSS {mb(min(rss))}–{mb(max(rss))} MB)",
            flush=True,
        )
        idle = (time.monotonic(), time.monotonic() + args.idle)
        time.sleep(args.idle)
        pid = etcd_pid(cluster)
        counters = Counters.take(pid)
        done = churn(client, args.endpoints, args.rate, args.duration, args.seed)
        registered, deleted = len(done.registered), len(done.deleted)
        drain_deadline = time.monotonic() + args.drain
        while not fleet.converged(registered, deleted) and time.monotonic() < drain_deadline:
            time.sleep(0.05)
        converged = fleet.converged(registered, deleted)
        end = time.monotonic()
        counters_end = Counters.take(pid)
        fleet.wait_sample_after(end, FLUSH * 4 + 5)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the watchers and etcd", file=sys.stderr)
        return 130
    finally:
        if fleet is not None:
            fleet.stop()
        if client is not None:
            client.close()
        cluster.stop()
    load_after = os.getloadavg()
    assert fleet is not None
    return report(args, fleet, done, idle, end, converged, (counters, counters_end), cpus, load_after)


def report(
    args: argparse.Namespace,
    fleet: Fleet,
    done: Churn,
    idle: tuple[float, float],
    end: float,
    converged: bool,
    counters: tuple[Counters, Counters],
    cpus: int,
    load_after: tuple[float, float, float],
) -> int:
    logs = fleet.logs
    span = done.end - done.start
    calls = sorted(done.call_seconds)
    print(
        f"  idle {args.idle:g} s, then churn: {done.changes:,} changes ({len(done.registered):,} registrations, "
        f"{len(done.deleted):,} deletions) in {span:.1f} s = {done.changes / max(span, 1e-9):.1f}/s; "
        f"each call started at most {ms(done.max_lag)} ms after its scheduled time"
        + ("; CUT SHORT (the machine could not keep the pace)" if done.cut_short else "")
    )
    print(f"  etcd put/delete round trip: p50 {ms(percentile(calls, 0.5))} ms, p99 {ms(percentile(calls, 0.99))} ms")
    if converged:
        print(f"  every watcher's table matched etcd {end - done.end:.2f} s after the last change")
    else:
        print(f"  NOT CONVERGED: some watcher still missed changes {args.drain:g} s after the last change")

    seen_added = [log.added for log in logs]
    registrations = Latencies.of(done.put_at, seen_added)
    deletions = Latencies.of(done.delete_at, [log.removed for log in logs])
    n = len(logs)
    print("\ntime from a change to the routing tables (t0: just before the put/delete call; CLOCK_MONOTONIC)")
    table(
        ["change", "count", "p50 ms", "p90 ms", "p99 ms", "max ms", "missing"],
        [
            registrations.row(f"registration → all {n} watchers", every=True),
            registrations.row("registration → each watcher", every=False),
            deletions.row(f"deregistration → all {n} watchers", every=True),
            deletions.row("deregistration → each watcher", every=False),
        ],
    )

    warm_span = min(WARMUP, args.duration / 4)
    warm = done.start + warm_span
    costs = watcher_costs(logs, done, idle, end, warm)

    # Over time: does latency, CPU or RSS creep as the churn goes on?
    span = done.end - done.start
    windows = max(1, round(span / (60.0 if args.duration >= 360 else max(5.0, args.duration / 6))))
    edges = [done.start + span * k / windows for k in range(windows + 1)]
    edges[-1] = math.inf  # the last window takes the last changes, whenever their calls returned
    rows = []
    for t, t_end in itertools.pairwise(edges):
        lat = sorted(
            max(math.inf if math.isnan(s[i]) else s[i] for s in seen_added) - t0
            for i, t0 in done.put_at.items()
            if t <= t0 < t_end
        )
        t_end = min(t_end, done.end)
        cpu = [
            ((b.cpu - a.cpu) - (b.instrumentation - a.instrumentation)) / max(b.at - a.at, 1e-9)
            for a, b in ((log.before(t), log.before(t_end)) for log in logs)
        ]
        rss = [log.before(t_end).rss_kb for log in logs]
        rows.append(
            [
                f"{t - done.start:.0f}–{t_end - done.start:.0f}",
                f"{len(lat):,}",
                ms(percentile(lat, 0.5)),
                ms(percentile(lat, 0.99)),
                ms(lat[-1] if lat else math.nan),
                f"{sum(cpu) / len(cpu) * 100:.0f}%",
                mb(sum(rss) / len(rss)),
                mb(max(rss)),
            ]
        )
    print("\nover time (registration → all watchers; watchers' CPU in the window; RSS at its end)")
    table(
        ["window s", "registrations", "p50 ms", "p99 ms", "max ms", "CPU/watcher", "RSS MB mean", "RSS MB max"],
        rows,
    )

    print(
        f"\nper watcher (changes applied: that reached its table; CPU net of the benchmark's instrumentation, the set"
        f" diff after each swap and the reporting loop; µs/change per change applied, also net of the idle baseline;"
        f" RSS start = at the churn's start, warm = after {warm_span:.0f} s of churn, end = after the drain)"
    )
    rows = [
        [
            f"{i}",
            f"{c.pid}",
            f"{c.applied:,}",
            f"{c.swaps:,}",
            f"{c.applied / max(c.swaps, 1):.1f}",
            f"{c.busy * 100:.0f}%",
            f"{c.per_change_us:,.0f}",
            f"{c.instrumentation_us:,.0f}",
            f"{c.idle_us_per_s:,.0f}",
            mb(c.rss_start),
            mb(c.rss_warm),
            mb(c.rss_end),
            f"{c.growth_kb / 1024:+.1f}",
        ]
        for i, c in enumerate(costs)
    ]

    def agg(name: str, f: Callable[[Sequence[float]], float]) -> list[str]:
        def col(values: Sequence[float], fmt: str) -> str:
            return format(f(values), fmt)

        return [
            name,
            "",
            col([c.applied for c in costs], ",.0f"),
            col([c.swaps for c in costs], ",.0f"),
            col([c.applied / max(c.swaps, 1) for c in costs], ".1f"),
            col([c.busy * 100 for c in costs], ".0f") + "%",
            col([c.per_change_us for c in costs], ",.0f"),
            col([c.instrumentation_us for c in costs], ",.0f"),
            col([c.idle_us_per_s for c in costs], ",.0f"),
            col([c.rss_start / 1024 for c in costs], ".1f"),
            col([c.rss_warm / 1024 for c in costs], ".1f"),
            col([c.rss_end / 1024 for c in costs], ".1f"),
            col([c.growth_kb / 1024 for c in costs], "+.1f"),
        ]

    rows += [agg("mean", lambda v: sum(v) / len(v)), agg("max", max)]
    table(
        [
            "#",
            "pid",
            "applied",
            "swaps",
            "changes/swap",
            "CPU %core",
            "µs/change",
            "instr µs/change",
            "idle µs/s",
            "RSS start",
            "RSS warm",
            "RSS end",
            "growth MB",
        ],
        rows,
    )

    first, last = counters
    wall = max(last.at - first.at, 1e-9)
    jiffies = max(last.total - first.total, 1)
    machine = (last.busy - first.busy) / jiffies * cpus
    stolen = (last.stolen - first.stolen) / jiffies * cpus
    watchers = sum(log.after(last.at).cpu - log.before(first.at).cpu for log in logs) / wall
    etcd_share, driver = (last.etcd - first.etcd) / wall, (last.own - first.own) / wall
    # Process CPU clocks may include time the hypervisor stole, so the rest is counted against busy + stolen.
    rest = machine + stolen - watchers - etcd_share - driver
    print(
        f"\nmachine during churn (% of one core; {cpus} CPUs = {cpus * 100}%): busy {machine * 100:.0f}% and stolen by"
        f" the hypervisor {stolen * 100:.0f}%; of these, watchers {watchers * 100:.0f}%, etcd {etcd_share * 100:.0f}%,"
        f" this driver {driver * 100:.0f}%, the rest (other processes, the kernel) {rest * 100:.0f}%; load average"
        f" after {' '.join(f'{x:.2f}' for x in load_after)}"
    )

    p99 = percentile(registrations.all_watchers, 0.99)
    worst = max(costs, key=lambda c: c.growth_kb)
    growth = worst.growth_kb / 1024
    per_change = worst.growth_kb * 1024 / max(worst.applied_after_warm, 1)
    checks = [
        (
            f"p99 registration → all watchers < {TARGET_P99 * 1000:,.0f} ms",
            p99 < TARGET_P99,
            f"{ms(p99)} ms"
            + (f" ({registrations.missing:,} of {len(done.put_at):,} missing at the end)" if math.isinf(p99) else ""),
        ),
        (
            f"RSS growth after the {warm_span:.0f} s warm-up ≤ {args.max_growth:g} MB each",
            growth <= args.max_growth,
            f"max {growth:+.1f} MB ({per_change:+,.0f} bytes per change, over the {worst.applied_after_warm:,}"
            " it applied)",
        ),
        (
            "every change reached every watcher",
            converged and registrations.missing == 0 and deletions.missing == 0,
            f"{registrations.missing:,} registrations, {deletions.missing:,} deletions missing at the end",
        ),
    ]
    print("\ntargets:")
    width = max(len(c[0]) for c in checks)
    for what, ok, measured in checks:
        print(f"  {what.ljust(width)}  {'met' if ok else 'MISSED':<6}  {measured}")
    if args.duration < 2 * WARMUP:
        print(f"  (a {args.duration:g} s run is a smoke test of the memory target: the issue's is ten minutes)")
    mean_us = sum(c.per_change_us for c in costs) / len(costs)
    missed = [what for what, ok, _ in checks if not ok]
    verdict = "all targets met" if not missed else f"MISSED: {'; '.join(missed)}"
    print(
        f"\nverdict: {verdict} — p99 {ms(p99)} ms to all {n} watchers, {mean_us:,.0f} µs CPU per change per "
        f"watcher, RSS growth ≤ {growth:+.1f} MB after warm-up, {args.duration:g} s at {args.rate:g} changes/s"
    )
    return 1 if args.check and missed else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--watchers", type=int, default=20, help="watcher processes (default 20)")
    parser.add_argument("--endpoints", type=int, default=2000, help="endpoints kept registered (default 2,000)")
    parser.add_argument("--rate", type=float, default=50.0, help="changes per second (default 50)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of churn (default 600)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle baseline before churn (default 10)")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for convergence (default 30)")
    parser.add_argument("--max-growth", type=float, default=MAX_GROWTH_MB, help="MB per watcher after warm-up")
    parser.add_argument("--seed", type=int, default=1, help="the churn's random seed (default 1)")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK_DURATION} s of churn")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.idle = QUICK_DURATION, QUICK_IDLE
    if args.watchers < 1 or args.endpoints < 1 or args.rate <= 0 or args.duration <= 0 or args.idle < 2 * FLUSH:
        parser.error(f"--watchers, --endpoints, --rate and --duration must be positive, --idle ≥ {2 * FLUSH:g}")
    if args.endpoints + args.rate * args.duration >= 1 << 24:
        parser.error("too many addresses for 10.0.0.0/8")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
