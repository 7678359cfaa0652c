"""``meshlib demo``: local upstreams, a built-in mesh config, and a table of where the traffic went."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from meshlib._demo_upstreams import ROUTE_HEADER, PortUnavailableError, Upstream, UpstreamGroup
from meshlib._mesh import Mesh

__all__ = ["DEMO_CONFIG", "DEMO_UPSTREAMS", "describe_routes", "run_demo", "serve_upstreams", "show_config"]

# The demo's mesh config (what --print-config shows). `meshlib demo` starts its upstreams on free
# ports and swaps them in; `meshlib demo --serve` serves them on exactly these ports, so the README's
# and the examples' configs, which name the same ports, run against it.
DEMO_CONFIG: dict[str, Any] = {
    "service": "productpage",
    "outbound_policy": "allow_any",
    "clusters": {
        "reviews-v1": {"endpoints": ["http://127.0.0.1:9081", "http://127.0.0.1:9082"], "lb": "round_robin"},
        "reviews-v2": {"endpoints": ["http://127.0.0.1:9083"]},
        "ratings": {"endpoints": ["http://127.0.0.1:9090"]},
    },
    "routes": [
        {
            "name": "reviews-testers",
            "match": {"host": "reviews", "headers": {"x-user": {"exact": "tester"}}},
            "cluster": "reviews-v2",
            "headers": {"request": {"set": {"x-mesh-route": "reviews-testers"}}},
        },
        {
            "name": "reviews-android",
            "match": {"host": "reviews", "headers": {"user-agent": {"regex": ".*Android.*"}}},
            "cluster": "reviews-v2",
            "headers": {"request": {"set": {"x-mesh-route": "reviews-android"}}},
        },
        {
            "name": "reviews-canary",
            "match": {"host": "reviews", "path_prefix": "/api/"},
            "split": [{"cluster": "reviews-v1", "weight": 90}, {"cluster": "reviews-v2", "weight": 10}],
            "rewrite": {"path_prefix": "/"},
            "headers": {"request": {"set": {"x-mesh-route": "reviews-canary"}}},
        },
    ],
}

# Which service and version runs behind each endpoint of DEMO_CONFIG.
DEMO_UPSTREAMS: dict[str, tuple[str, str]] = {
    "http://127.0.0.1:9081": ("reviews", "v1"),
    "http://127.0.0.1:9082": ("reviews", "v1"),
    "http://127.0.0.1:9083": ("reviews", "v2"),
    "http://127.0.0.1:9090": ("ratings", "v1"),
}

CANARY_SHARE = 0.90  # reviews-v1's weight in the canary split
CANARY_TOLERANCE = 0.03  # at least ±3 points; wider for small samples (4 standard deviations)
ASYNC_FRACTION = 0.8  # the rest goes through the sync client
MIN_REQUESTS = 20
SEND_TIME_LIMIT = 60.0  # seconds; requests not sent by then count as failed
REQUEST_TIMEOUT = 5.0
ANDROID_UA = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Mobile"

EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_PORT_TAKEN = 3  # as `meshlib proxy`

# What the demo sends (see _spec), and the route each kind must take; the checks hold the mesh to it.
EXPECTED_ROUTE = {
    "canary": "reviews-canary",
    "tester": "reviews-testers",
    "android": "reviews-android",
    "ratings": "cluster:ratings",
}


@dataclass(frozen=True, slots=True)
class _Spec:
    kind: str
    url: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Result:
    kind: str
    latency: float  # seconds
    reply: dict[str, Any] | None  # the upstream's JSON, None when the request failed
    error: str | None = None

    @property
    def route(self) -> str:
        # Routes stamp x-mesh-route on the request; a cluster reached by name has no route of its own.
        assert self.reply is not None
        route: str | None = self.reply.get("route")
        return route if route else f"cluster:{self.reply['cluster']}"

    @property
    def endpoint(self) -> str:
        assert self.reply is not None
        return f"127.0.0.1:{self.reply['port']}"


def _spec(i: int) -> _Spec:
    # 7 in 10 requests are plain reviews traffic (the canary), 1 each for testers, Android, ratings.
    slot = i % 10
    if slot == 3:
        return _Spec("tester", f"http://reviews/api/reviews/{i}", {"x-user": "tester"})
    if slot == 6:
        return _Spec("android", f"http://reviews/api/reviews/{i}", {"x-user": f"user-{i}", "user-agent": ANDROID_UA})
    if slot == 9:
        return _Spec("ratings", f"http://ratings/ratings/{i}", {})
    return _Spec("canary", f"http://reviews/api/reviews/{i}", {"x-user": f"user-{i}"})


def _parse(kind: str, started: float, response: httpx.Response) -> _Result:
    latency = time.perf_counter() - started
    if response.status_code != 200:
        return _Result(kind, latency, None, f"HTTP {response.status_code} from {response.request.url}")
    try:
        reply = response.json()
    except ValueError:
        return _Result(kind, latency, None, f"not JSON from {response.request.url}: {response.text[:60]!r}")
    return _Result(kind, latency, reply)


def _failed(kind: str, started: float, exc: Exception) -> _Result:
    return _Result(kind, time.perf_counter() - started, None, f"{type(exc).__name__}: {exc}")


def _send_sync(mesh: Mesh, specs: Sequence[_Spec], deadline: float) -> list[_Result]:
    results: list[_Result] = []
    with mesh.client(timeout=REQUEST_TIMEOUT, trust_env=False) as client:
        for spec in specs:
            if time.monotonic() > deadline:
                results.append(_Result(spec.kind, 0.0, None, "not sent: time limit"))
                continue
            started = time.perf_counter()
            try:
                response = client.get(spec.url, headers=spec.headers)
            except httpx.HTTPError as exc:
                results.append(_failed(spec.kind, started, exc))
            else:
                results.append(_parse(spec.kind, started, response))
    return results


async def _send_async(mesh: Mesh, specs: Sequence[_Spec], concurrency: int, deadline: float) -> list[_Result]:
    results: list[_Result] = []
    queue: Iterator[_Spec] = iter(specs)  # shared by the workers: each spec is taken once

    async def worker(client: httpx.AsyncClient) -> None:
        for spec in queue:
            if time.monotonic() > deadline:
                results.append(_Result(spec.kind, 0.0, None, "not sent: time limit"))
                continue
            started = time.perf_counter()
            try:
                response = await client.get(spec.url, headers=spec.headers)
            except httpx.HTTPError as exc:
                results.append(_failed(spec.kind, started, exc))
            else:
                results.append(_parse(spec.kind, started, response))

    async with mesh.async_client(timeout=REQUEST_TIMEOUT, trust_env=False) as client, asyncio.TaskGroup() as tasks:
        for _ in range(concurrency):
            tasks.create_task(worker(client))
    return results


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _latency_ms(results: Sequence[_Result]) -> tuple[str, str]:
    values = sorted(r.latency for r in results)
    return f"{_percentile(values, 50) * 1000:.2f}", f"{_percentile(values, 99) * 1000:.2f}"


# --- describing the config -------------------------------------------------------------------------------------------


def _describe_value(name: str, match: dict[str, Any]) -> str:
    if "exact" in match:
        return f"{name}: {match['exact']}"
    if "prefix" in match:
        return f"{name}: {match['prefix']}*"
    if "regex" in match:
        return f"{name} ~ {match['regex']}"
    if match.get("present"):
        return f"has {name}"
    return f"no {name}"


def _describe_match(match: dict[str, Any]) -> str:
    parts: list[str] = []
    if "host" in match:
        parts.append(f"host {match['host']}")
    if "method" in match:
        methods = match["method"]
        parts.append("method " + ("|".join(methods) if isinstance(methods, list) else str(methods)))
    if "path" in match:
        parts.append(f"path {match['path']}")
    if "path_prefix" in match:
        parts.append(f"path {match['path_prefix']}*")
    if "path_regex" in match:
        parts.append(f"path ~ {match['path_regex']}")
    for name, value in match.get("headers", {}).items():
        parts.append(_describe_value(name, value if isinstance(value, dict) else {"exact": value}))
    for name, value in match.get("query", {}).items():
        parts.append(_describe_value(f"?{name}", value if isinstance(value, dict) else {"exact": value}))
    return ", ".join(parts) or "any request"


def _describe_action(route: dict[str, Any]) -> str:
    if "direct_response" in route:
        action = f"reply {route['direct_response']['status']}"
    elif "split" in route:
        total = sum(leg["weight"] for leg in route["split"])
        action = " / ".join(f"{leg['cluster']} {leg['weight'] / total:.0%}" for leg in route["split"])
    else:
        action = str(route["cluster"])
    extras: list[str] = []
    rewrite = route.get("rewrite") or {}
    if "path_prefix" in rewrite:
        matched = route.get("match", {}).get("path_prefix") or route.get("match", {}).get("path") or "/"
        extras.append(f"rewrite {matched} → {rewrite['path_prefix']}")
    if "host" in rewrite:
        extras.append(f"host → {rewrite['host']}")
    request_ops = (route.get("headers") or {}).get("request") or {}
    # Every demo route stamps ROUTE_HEADER (said once above the list), so only other edits are shown.
    extras.extend(f"set {name}" for name in request_ops.get("set", {}) if name != ROUTE_HEADER)
    return action + (f"   ({'; '.join(extras)})" if extras else "")


def describe_routes(config: dict[str, Any]) -> list[str]:
    """One line per route of ``config`` (plus the implicit by-name routes), in match order."""
    rows = [
        (route.get("name") or f"route-{i}", _describe_match(route.get("match", {})), _describe_action(route))
        for i, route in enumerate(config.get("routes", []))
    ]
    rows.extend((f"cluster:{name}", f"host {name}", name) for name in config.get("clusters", {}))
    name_width = max(len(r[0]) for r in rows)
    match_width = max(len(r[1]) for r in rows)
    return [f"{name:<{name_width}}  if {match:<{match_width}}  → {action}" for name, match, action in rows]


def show_config() -> int:
    """Print DEMO_CONFIG as YAML (a valid mesh config, with example ports)."""
    print("# meshlib demo's mesh config; `meshlib demo` runs it with free ports in place of 9081-9090,")
    print("# `meshlib demo --serve` serves its upstreams on exactly these ports.")
    print(yaml.safe_dump(DEMO_CONFIG, sort_keys=False, allow_unicode=True), end="")
    return 0


# --- the report ------------------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "─" * len(line(header))
    return [line(header), rule, *(line(row) for row in rows[:-1]), rule, line(rows[-1])]


def _traffic_table(results: Sequence[_Result], route_order: Sequence[str]) -> list[str]:
    ok = [r for r in results if r.reply is not None]
    by_route: dict[str, list[_Result]] = defaultdict(list)
    for r in ok:
        by_route[r.route].append(r)
    order = [name for name in route_order if name in by_route] + sorted(set(by_route) - set(route_order))
    rows: list[list[str]] = []
    for route in order:
        route_results = by_route[route]
        by_cluster: dict[str, list[_Result]] = defaultdict(list)
        for r in route_results:
            by_cluster[r.reply["cluster"] if r.reply else "?"].append(r)
        first_of_route = True
        for cluster in sorted(by_cluster):
            cluster_results = by_cluster[cluster]
            by_endpoint: dict[str, list[_Result]] = defaultdict(list)
            for r in cluster_results:
                by_endpoint[r.endpoint].append(r)
            groups: list[tuple[str, list[_Result]]] = []
            if len(by_endpoint) > 1:
                groups.append((f"{len(by_endpoint)} endpoints", cluster_results))
                groups.extend((f"  {ep}", by_endpoint[ep]) for ep in sorted(by_endpoint))
            else:
                groups.extend(by_endpoint.items())
            for i, (endpoint, group) in enumerate(groups):
                p50, p99 = _latency_ms(group)
                rows.append(
                    [
                        route if first_of_route else "",
                        cluster if i == 0 else "",
                        endpoint,
                        str(len(group)),
                        f"{len(group) / len(route_results):.1%}",
                        p50,
                        p99,
                    ]
                )
                first_of_route = False
    failed = [r for r in results if r.reply is None]
    if failed:
        error = failed[0].error or ""
        error = error if len(error) <= 40 else error[:39] + "…"
        rows.append(["FAILED", "", error, str(len(failed)), f"{len(failed) / len(results):.1%}", "", ""])
    p50, p99 = _latency_ms(ok)
    rows.append(["all", "", "", str(len(results)), "", p50, p99])
    return _table(["route", "cluster", "endpoint", "requests", "share", "p50 ms", "p99 ms"], rows, {3, 4, 5, 6})


@dataclass(frozen=True, slots=True)
class _Check:
    ok: bool
    text: str


def _checks(results: Sequence[_Result], endpoints: dict[str, list[str]]) -> list[_Check]:
    checks: list[_Check] = []
    failed = [r for r in results if r.reply is None]
    errors = Counter(r.error for r in failed)
    detail = "; ".join(f"{n}× {e}" for e, n in errors.most_common(3))
    checks.append(
        _Check(
            not failed, f"all {len(results)} requests answered 200 by an upstream" + (f" ({detail})" if failed else "")
        )
    )
    ok = [r for r in results if r.reply is not None]

    misrouted = Counter((r.kind, r.route) for r in ok if r.route != EXPECTED_ROUTE[r.kind])
    checks.append(
        _Check(
            not misrouted,
            "each request took its route (first match wins)"
            + "".join(f"; {n} {kind} requests took {route}" for (kind, route), n in misrouted.items()),
        )
    )

    for kind, label in (("tester", "x-user: tester"), ("android", "Android user-agent")):
        sent = [r for r in ok if r.kind == kind]
        on_v2 = sum(1 for r in sent if r.reply and r.reply["cluster"] == "reviews-v2")
        checks.append(_Check(bool(sent) and on_v2 == len(sent), f"{label} → reviews-v2: {on_v2}/{len(sent)}"))

    canary = [r for r in ok if r.kind == "canary"]
    on_v1 = sum(1 for r in canary if r.reply and r.reply["cluster"] == "reviews-v1")
    share = on_v1 / len(canary) if canary else 0.0
    sigma = math.sqrt(CANARY_SHARE * (1 - CANARY_SHARE) / max(1, len(canary)))
    tolerance = max(CANARY_TOLERANCE, 4 * sigma)
    checks.append(
        _Check(
            bool(canary) and abs(share - CANARY_SHARE) <= tolerance,
            f"canary: {share:.1%} of {len(canary)} on reviews-v1 (want {CANARY_SHARE:.0%} ± {tolerance:.1%})",
        )
    )

    rewritten = sum(1 for r in canary if r.reply and r.reply["path"].startswith("/reviews/"))
    checks.append(
        _Check(
            bool(canary) and rewritten == len(canary),
            f"rewrite: {rewritten}/{len(canary)} canary requests sent to /api/reviews/N arrived as /reviews/N",
        )
    )

    v1 = Counter(r.endpoint for r in ok if r.reply and r.reply["cluster"] == "reviews-v1")
    counts = [v1.get(ep, 0) for ep in endpoints["reviews-v1"]]
    balanced = bool(counts) and min(counts) > 0 and max(counts) - min(counts) <= max(2, sum(counts) // 20)
    checks.append(_Check(balanced, f"round robin over reviews-v1's endpoints: {' / '.join(map(str, counts))}"))

    ratings = [r for r in ok if r.kind == "ratings"]
    on_ratings = sum(1 for r in ratings if r.reply and r.reply["service"] == "ratings")
    checks.append(
        _Check(
            bool(ratings) and on_ratings == len(ratings),
            f"http://ratings/ (cluster name, no route) → ratings: {on_ratings}/{len(ratings)}",
        )
    )
    return checks


# --- the demo --------------------------------------------------------------------------------------------------------


def _live_config(upstreams: dict[str, Upstream]) -> dict[str, Any]:
    """DEMO_CONFIG with each example endpoint replaced by its running upstream's URL."""
    config: dict[str, Any] = json.loads(json.dumps(DEMO_CONFIG))
    for cluster in config["clusters"].values():
        cluster["endpoints"] = [upstreams[url].url for url in cluster["endpoints"]]
    return config


def _run_traffic(
    upstreams: dict[str, Upstream], requests: int, concurrency: int
) -> tuple[dict[str, Any], list[_Result], tuple[int, float, float, float]]:
    """Print the setup, then send the traffic through a mesh on the running upstreams."""
    config = _live_config(upstreams)
    print("upstreams (small HTTP servers on loopback, each replying with its name, version and port):")
    for name, cluster in config["clusters"].items():
        lb = cluster.get("lb", "round_robin")
        print(
            f"  {name:<11} {'  '.join(cluster['endpoints'])}" + (f"   ({lb})" if len(cluster["endpoints"]) > 1 else "")
        )
    print()
    print(f"routes (first match wins; each stamps {ROUTE_HEADER} on the request, so upstreams can tell who sent it;")
    print("every cluster is also reachable by its name, e.g. http://ratings/):")
    for line in describe_routes(config):
        print(f"  {line}")
    print()

    n_async = round(requests * ASYNC_FRACTION)
    specs = [_spec(i) for i in range(requests)]
    print(
        f"sending {requests} requests through the mesh: {n_async} with httpx.AsyncClient "
        f"({concurrency} concurrent tasks), {requests - n_async} with httpx.Client ..."
    )
    print()
    deadline = time.monotonic() + SEND_TIME_LIMIT
    with Mesh.from_dict(config) as mesh:
        t0 = time.perf_counter()
        results = asyncio.run(_send_async(mesh, specs[:n_async], concurrency, deadline))
        t1 = time.perf_counter()
        results += _send_sync(mesh, specs[n_async:], deadline)
        t2 = time.perf_counter()
    return config, results, (n_async, t0, t1, t2)


def run_demo(requests: int = 3000, concurrency: int = 8, *, print_config: bool = False) -> int:
    """Run the demo and print its report; returns the exit code (0 when every check passed)."""
    if print_config:
        return show_config()
    if requests < MIN_REQUESTS or concurrency < 1:
        print(f"meshlib demo: --requests must be at least {MIN_REQUESTS} and --concurrency at least 1", file=sys.stderr)
        return EXIT_USAGE

    started = time.perf_counter()
    cluster_of = {url: name for name, c in DEMO_CONFIG["clusters"].items() for url in c["endpoints"]}
    upstreams = {url: Upstream(service, version, cluster_of[url]) for url, (service, version) in DEMO_UPSTREAMS.items()}

    print("meshlib demo: a service mesh inside this Python process")
    print()
    try:
        with UpstreamGroup(list(upstreams.values())):
            config, results, timings = _run_traffic(upstreams, requests, concurrency)
    except OSError as exc:
        print(f"meshlib demo: could not run the local upstreams on 127.0.0.1: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    n_async, t0, t1, t2 = timings
    endpoints = {name: [u.removeprefix("http://") for u in c["endpoints"]] for name, c in config["clusters"].items()}

    route_order = [r["name"] for r in config["routes"]] + [f"cluster:{name}" for name in config["clusters"]]
    print("where the traffic went, counted from the upstreams' replies (share = of the route's requests):")
    print()
    for line in _traffic_table(results, route_order):
        print(f"  {line}")
    print()
    sent = t2 - t0
    print(
        f"sent {requests} requests in {sent:.2f} s, {requests / sent:,.0f} req/s "
        f"(async {n_async / (t1 - t0):,.0f} req/s, sync {(requests - n_async) / max(t2 - t1, 1e-9):,.0f} req/s); "
        f"whole demo {time.perf_counter() - started:.2f} s"
    )
    print("latency is per request as the client saw it; client, mesh and upstreams share this one Python process.")
    print()
    checks = _checks(results, endpoints)
    print("checks:")
    for check in checks:
        print(f"  {'ok  ' if check.ok else 'FAIL'}  {check.text}")
    print()
    failed = [c for c in checks if not c.ok]
    if failed:
        print(f"meshlib demo: {len(failed)} check(s) failed: " + "; ".join(c.text for c in failed), file=sys.stderr)
        return EXIT_CHECK_FAILED
    print("all checks passed.")
    return 0


# --- meshlib demo --serve --------------------------------------------------------------------------------------------

SERVE_HINT = (
    "try, from a clone of the repository: meshlib proxy --config examples/fastapi_app/mesh.yaml\n"
    "  then: curl -x http://127.0.0.1:15001 http://reviews/api/reviews/1"
)


def _say(*lines: str) -> None:
    """Print and flush; a reader that went away (``| head``) must not stop the servers."""
    try:
        print(*lines, sep="\n", flush=True)
    except BrokenPipeError:
        # Python's own advice: point stdout at devnull, or the flush at exit fails again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM set ``stop`` instead of killing the process, so the servers close cleanly."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def serve_upstreams(stop: threading.Event | None = None) -> int:
    """``meshlib demo --serve``: the demo's upstreams on their fixed ports until Ctrl-C, SIGTERM or ``stop``.

    Returns 0 after a clean stop, :data:`EXIT_PORT_TAKEN` when a port cannot be bound (nothing keeps serving).
    """
    stop = stop if stop is not None else threading.Event()
    cluster_of = {url: name for name, c in DEMO_CONFIG["clusters"].items() for url in c["endpoints"]}
    upstreams = [
        Upstream(service, version, cluster_of[url], port=urlsplit(url).port or 0)
        for url, (service, version) in DEMO_UPSTREAMS.items()
    ]
    group = UpstreamGroup(upstreams)
    with _stop_on_signals(stop):
        try:
            group.start()
        except OSError as exc:
            group.stop()
            if isinstance(exc, PortUnavailableError):
                print(f"meshlib demo --serve: {exc} (is another `meshlib demo --serve` running?)", file=sys.stderr)
                return EXIT_PORT_TAKEN
            print(f"meshlib demo --serve: could not run the upstreams on 127.0.0.1: {exc}", file=sys.stderr)
            return EXIT_CHECK_FAILED
        try:
            _say(
                "meshlib demo --serve: the demo's upstreams, each answering any request with JSON naming itself",
                *(f"  {u.service} {u.version:<3} cluster {u.cluster:<11} {u.url}" for u in upstreams),
                SERVE_HINT,
                "serving until Ctrl-C (or SIGTERM)",
            )
            # A timed wait: the signal handler sets the event from this thread, between two waits.
            while not stop.wait(0.5):
                pass
        finally:
            group.stop()
    _say("meshlib demo --serve: stopped")
    return 0
