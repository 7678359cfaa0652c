"""The bookinfo demo: four services on loopback, traffic through the mesh, and what the mesh saw.

``frontend`` (FastAPI, examples/fastapi_app) calls ``reviews`` with a 90/10 canary between v1 and v2;
``reviews`` (Flask, examples/flask_app, one server per version) calls ``ratings`` (Flask, examples/ratings_app).
Reviews v1 answers every 10th request with 503 on purpose: the frontend's retries hide it from the user,
and the trace and the metrics show it. In process, each service's mesh runs inside it; in sidecar mode each
service has a ``meshlib proxy`` beside it and its mesh client sends through that.

The traces go to a small Zipkin-compatible collector the demo runs; the metrics are scraped from each
service's ``/metrics`` (each sidecar's admin ``/metrics`` in sidecar mode).
"""

from __future__ import annotations

import asyncio
import copy
import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml
from opentelemetry import trace
from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import meshlib
from examples.bookinfo.report import (
    ServiceMetrics,
    Table,
    by_trace,
    complete_traces,
    metrics_table,
    parse_metrics,
    trace_lines,
)
from examples.bookinfo.servers import AsgiServer, WsgiServer
from examples.bookinfo.sidecars import Sidecar
from examples.bookinfo.zipkin import Collector, Span
from examples.fastapi_app.app import create_app as create_frontend
from examples.flask_app.app import create_app as create_reviews
from examples.ratings_app.app import create_app as create_ratings

__all__ = ["MODES", "Check", "Outcome", "Result", "canary_tolerance", "report_lines", "run"]

Mode = Literal["in-process", "sidecar"]
MODES: tuple[Mode, ...] = ("in-process", "sidecar")
EXAMPLES = Path(__file__).resolve().parents[1]
CHAIN = ("frontend", "reviews", "ratings")  # who calls whom: one trace must span them all
CANARY_SHARE = 0.90  # reviews-v1's weight in examples/fastapi_app/mesh.yaml
FLAKY_EVERY = 10  # reviews v1 answers every 10th request with 503 (and serves the retry of it)
PRODUCTS = 10
SEND_TIME_LIMIT = 20.0  # seconds: requests not sent by then count as not sent
SPAN_WAIT = 3.0  # seconds for the last spans to reach the collector once everything has closed
CLIENT_TIMEOUT = 10.0
DEMO_SERVICE = "demo"  # the service name of the demo's own client spans
SERVICES = ("frontend", "reviews v1", "reviews v2", "ratings")  # as the report names them


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    text: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request the demo sent to the frontend, and what came back."""

    product: int
    trace_id: str
    latency: float  # seconds
    status: int | None = None  # None: no answer (the error says why)
    version: str | None = None  # the reviews version that answered
    rated: bool = False  # every review carried its rating from ratings
    stars: bool = False  # ... drawn as stars (v2)
    error: str | None = None


@dataclass
class Result:
    """What a run of the demo saw; :func:`report_lines` is what it prints of it."""

    mode: Mode
    services: dict[str, dict[str, str]] = field(default_factory=dict)  # service → {"app": URL, ...}
    entry: str = ""
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    spans: list[Span] = field(default_factory=list)
    collector_rejected: int = 0
    trace: list[Span] = field(default_factory=list)  # the sample trace
    pages: dict[str, str] = field(default_factory=dict)  # service → its metrics page as scraped
    metrics: dict[str, ServiceMetrics] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    @property
    def versions(self) -> Counter[str]:
        """Requests answered 200, by the reviews version that answered."""
        return Counter(o.version for o in self.outcomes if o.status == 200 and o.version)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)


# --- the services ----------------------------------------------------------------------------------------------------


def _config(folder: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((EXAMPLES / folder / "mesh.yaml").read_text(encoding="utf-8"))
    return loaded


def _traced(config: dict[str, Any], collector: str) -> dict[str, Any]:
    """``config`` with its spans sent to the demo's collector."""
    config = copy.deepcopy(config)
    config.setdefault("tracing", {})["zipkin"] = {"endpoint": collector, "timeout": "2s"}
    return config


def _unobserved(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` for an app behind a sidecar: the sidecar traces and counts, the app applies its inbound policy."""
    return {k: v for k, v in config.items() if k not in ("tracing", "metrics", "access_log", "sidecar")}


def _listeners(app: str) -> dict[str, Any]:
    # Port 0 everywhere: the proxy says which ports it got.
    return {
        "outbound": {"listen": "127.0.0.1:0"},
        "inbound": {"listen": "127.0.0.1:0", "app": app},
        "admin": {"listen": "127.0.0.1:0"},
    }


@dataclass
class _Deployment:
    entry: str  # where the demo sends its requests
    scrape: dict[str, str]  # service → its metrics URL
    services: dict[str, dict[str, str]]  # service → where it (and its sidecar's listeners) listen
    meshes: list[meshlib.Mesh]  # closed at the end, after the servers have stopped (their spans flushed)
    servers: list[AsgiServer | WsgiServer]  # callers first
    sidecars: list[Sidecar]


def _configs(collector: str) -> dict[str, dict[str, Any]]:
    return {
        "frontend": _traced(_config("fastapi_app"), collector),
        "reviews": _traced(_config("flask_app"), collector),
        "ratings": _traced(_config("ratings_app"), collector),
    }


def _in_process(stack: ExitStack, collector: str) -> _Deployment:
    configs = _configs(collector)
    frontend, v1, v2, ratings = (
        AsgiServer("frontend"),
        WsgiServer("reviews-v1"),
        WsgiServer("reviews-v2"),
        WsgiServer("ratings"),
    )
    servers: list[AsgiServer | WsgiServer] = [frontend, v1, v2, ratings]
    for server in servers:
        stack.callback(server.stop)  # a failed start stops what did start
    configs["reviews"]["clusters"]["ratings"]["endpoints"] = [ratings.url]
    configs["frontend"]["clusters"]["reviews-v1"]["endpoints"] = [v1.url]
    configs["frontend"]["clusters"]["reviews-v2"]["endpoints"] = [v2.url]
    meshes = {
        "frontend": meshlib.Mesh.from_dict(configs["frontend"]),
        "reviews v1": meshlib.Mesh.from_dict(configs["reviews"]),
        "reviews v2": meshlib.Mesh.from_dict(configs["reviews"]),
        "ratings": meshlib.Mesh.from_dict(configs["ratings"]),
    }
    ratings.start(create_ratings(meshes["ratings"]))
    v1.start(create_reviews(meshes["reviews v1"], version="v1", fail_every=FLAKY_EVERY))
    v2.start(create_reviews(meshes["reviews v2"], version="v2"))
    frontend.start(create_frontend(meshes["frontend"]))
    return _Deployment(
        entry=frontend.url,
        scrape={
            # Starlette serves a mount at its path with a slash (and redirects /metrics there).
            "frontend": f"{frontend.url}/metrics/",
            "reviews v1": f"{v1.url}/metrics",
            "reviews v2": f"{v2.url}/metrics",
            "ratings": f"{ratings.url}/metrics",
        },
        services={
            "frontend": {"app": frontend.url},
            "reviews v1": {"app": v1.url},
            "reviews v2": {"app": v2.url},
            "ratings": {"app": ratings.url},
        },
        meshes=list(meshes.values()),
        servers=servers,
        sidecars=[],
    )


def _sidecar(stack: ExitStack, collector: str) -> _Deployment:
    configs = _configs(collector)
    directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bookinfo-")))
    frontend, v1, v2, ratings = (
        AsgiServer("frontend"),
        WsgiServer("reviews-v1"),
        WsgiServer("reviews-v2"),
        WsgiServer("ratings"),
    )
    servers: list[AsgiServer | WsgiServer] = [frontend, v1, v2, ratings]
    for server in servers:
        stack.callback(server.stop)
    sidecars: list[Sidecar] = []

    def start(name: str, config: dict[str, Any], app: str) -> Sidecar:
        sidecar = Sidecar(name, {**config, "sidecar": _listeners(app)}, directory)
        sidecars.append(sidecar)
        stack.callback(_stop_sidecars, [sidecar])
        sidecar.start()
        return sidecar

    # Callees first: a caller's clusters are its callees' inbound listeners.
    ratings_sidecar = start("ratings", configs["ratings"], ratings.url)
    ratings_sidecar.wait_ready()
    reviews = copy.deepcopy(configs["reviews"])
    reviews["clusters"]["ratings"]["endpoints"] = [ratings_sidecar.url("inbound")]
    v1_sidecar = start("reviews-v1", reviews, v1.url)
    v2_sidecar = start("reviews-v2", reviews, v2.url)
    v1_sidecar.wait_ready()
    v2_sidecar.wait_ready()
    front = copy.deepcopy(configs["frontend"])
    front["clusters"]["reviews-v1"]["endpoints"] = [v1_sidecar.url("inbound")]
    front["clusters"]["reviews-v2"]["endpoints"] = [v2_sidecar.url("inbound")]
    frontend_sidecar = start("frontend", front, frontend.url)
    frontend_sidecar.wait_ready()

    # The apps are the same code; their mesh clients send through their own sidecar's outbound listener.
    meshes = {
        "frontend": meshlib.Mesh.from_dict(_unobserved(front)),
        "reviews v1": meshlib.Mesh.from_dict(_unobserved(reviews)),
        "reviews v2": meshlib.Mesh.from_dict(_unobserved(reviews)),
        "ratings": meshlib.Mesh.from_dict(_unobserved(configs["ratings"])),
    }
    ratings.start(create_ratings(meshes["ratings"]))
    v1.start(
        create_reviews(meshes["reviews v1"], version="v1", sidecar=v1_sidecar.url("outbound"), fail_every=FLAKY_EVERY)
    )
    v2.start(create_reviews(meshes["reviews v2"], version="v2", sidecar=v2_sidecar.url("outbound")))
    frontend.start(create_frontend(meshes["frontend"], sidecar=frontend_sidecar.url("outbound")))

    return _Deployment(
        entry=frontend_sidecar.url("inbound"),
        scrape={
            "frontend": f"{frontend_sidecar.url('admin')}/metrics",
            "reviews v1": f"{v1_sidecar.url('admin')}/metrics",
            "reviews v2": f"{v2_sidecar.url('admin')}/metrics",
            "ratings": f"{ratings_sidecar.url('admin')}/metrics",
        },
        services={
            name: {
                "app": app,
                "sidecar inbound": sidecar.url("inbound"),
                "outbound": sidecar.url("outbound"),
                "admin": sidecar.url("admin"),
            }
            for name, app, sidecar in (
                ("frontend", frontend.url, frontend_sidecar),
                ("reviews v1", v1.url, v1_sidecar),
                ("reviews v2", v2.url, v2_sidecar),
                ("ratings", ratings.url, ratings_sidecar),
            )
        },
        meshes=list(meshes.values()),
        servers=servers,
        sidecars=sidecars,
    )


def _stop_sidecars(sidecars: list[Sidecar]) -> None:
    for sidecar in sidecars:  # all drain at once
        sidecar.terminate()
    for sidecar in sidecars:
        sidecar.wait()


# --- the traffic -----------------------------------------------------------------------------------------------------


@contextmanager
def _demo_tracer(collector: str) -> Iterator[trace.Tracer]:
    """The demo is a traced client too: one CLIENT span per request it sends, the root of that request's trace."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: DEMO_SERVICE}), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(ZipkinExporter(endpoint=collector)))
    try:
        yield provider.get_tracer("bookinfo-demo")
    finally:
        provider.shutdown()  # exports what is queued


def _outcome(product: int, trace_id: str, started: float, response: httpx.Response) -> Outcome:
    latency = time.perf_counter() - started
    try:
        body = response.json()
        reviews = body.get("reviews") or {}
        listed = reviews.get("reviews") or []
        return Outcome(
            product,
            trace_id,
            latency,
            response.status_code,
            version=reviews.get("version"),
            rated=bool(listed) and all("rating" in review for review in listed),
            stars=any("stars" in review for review in listed),
            error=None if response.status_code == 200 else str(body.get("error") or body)[:120],
        )
    except (ValueError, AttributeError):
        return Outcome(product, trace_id, latency, response.status_code, error=f"not JSON: {response.text[:80]!r}")


async def _send(entry: str, requests: int, concurrency: int, tracer: trace.Tracer) -> tuple[list[Outcome], float]:
    outcomes: list[Outcome] = []
    numbers = iter(range(requests))  # shared by the workers: each is taken once
    propagator = TraceContextTextMapPropagator()
    deadline = time.monotonic() + SEND_TIME_LIMIT

    async def worker(client: httpx.AsyncClient) -> None:
        for number in numbers:
            product = number % PRODUCTS + 1
            if time.monotonic() > deadline:
                outcomes.append(Outcome(product, "", 0.0, error="not sent: time limit"))
                continue
            with tracer.start_as_current_span("GET /products/{id}", kind=SpanKind.CLIENT) as span:
                headers: dict[str, str] = {}
                propagator.inject(headers)
                trace_id = format(span.get_span_context().trace_id, "032x")
                span.set_attribute("http.request.method", "GET")
                span.set_attribute("url.full", f"{entry}/products/{product}")
                started = time.perf_counter()
                try:
                    response = await client.get(f"/products/{product}", headers=headers)
                except httpx.HTTPError as exc:
                    span.set_status(StatusCode.ERROR, str(exc))
                    outcomes.append(
                        Outcome(product, trace_id, time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
                    )
                    continue
                span.set_attribute("http.response.status_code", response.status_code)
                outcomes.append(_outcome(product, trace_id, started, response))

    started = time.perf_counter()
    async with (
        httpx.AsyncClient(base_url=entry, timeout=CLIENT_TIMEOUT, trust_env=False) as client,
        asyncio.TaskGroup() as tasks,
    ):
        for _ in range(concurrency):
            tasks.create_task(worker(client))
    return outcomes, time.perf_counter() - started


def _scrape(urls: dict[str, str]) -> dict[str, str]:
    pages: dict[str, str] = {}
    with httpx.Client(timeout=CLIENT_TIMEOUT, trust_env=False) as client:
        for service, url in urls.items():
            response = client.get(url)
            response.raise_for_status()
            pages[service] = response.text
    return pages


# --- the checks ------------------------------------------------------------------------------------------------------


def canary_tolerance(n: int) -> float:
    """How far v1's share may be from 90%: four standard deviations of n draws, and at least 3 points."""
    return max(0.03, 4 * math.sqrt(CANARY_SHARE * (1 - CANARY_SHARE) / max(n, 1)))


def _checks(result: Result) -> list[Check]:
    outcomes = result.outcomes
    checks: list[Check] = []
    answered = [o for o in outcomes if o.status == 200]
    failed = Counter(o.error or f"HTTP {o.status}" for o in outcomes if o.status != 200)
    detail = "; ".join(f"{n}× {error}" for error, n in failed.most_common(3))
    checks.append(
        Check(
            len(answered) == len(outcomes),
            f"{len(answered)}/{len(outcomes)} requests answered 200" + (f" ({detail})" if failed else ""),
        )
    )
    versions = result.versions
    n = versions["v1"] + versions["v2"]
    share = versions["v1"] / n if n else 0.0
    tolerance = canary_tolerance(n)
    checks.append(
        Check(
            n > 0 and abs(share - CANARY_SHARE) <= tolerance and versions["v2"] > 0,
            f"canary split: reviews v1 {share:.1%} of {n} (mesh.yaml: {CANARY_SHARE:.0%} ± {tolerance:.1%})",
        )
    )
    rated = sum(1 for o in answered if o.rated)
    stars_right = sum(1 for o in answered if o.stars == (o.version == "v2"))
    checks.append(
        Check(
            bool(answered) and rated == len(answered) and stars_right == len(answered),
            f"reviews → ratings: {rated}/{len(answered)} answers carry the ratings; "
            f"stars on v2's only: {stars_right}/{len(answered)}",
        )
    )
    checks.append(
        Check(
            bool(result.trace),
            "one trace spans "
            + " → ".join(CHAIN)
            + (
                f" ({len(result.trace)} spans, trace id {result.trace[0].trace_id})"
                if result.trace
                else f": none found in {len(result.spans)} spans"
            ),
        )
    )
    missing = [service for service in SERVICES if service not in result.metrics or not result.metrics[service].inbound]
    checks.append(
        Check(
            not missing, "metrics scraped from every service" + (f" (missing: {', '.join(missing)})" if missing else "")
        )
    )
    frontend = result.metrics.get("frontend", ServiceMetrics())
    v1 = result.metrics.get("reviews v1", ServiceMetrics())
    retried = sum(frontend.retries.get("reviews-v1", Counter()).values())
    refused = v1.inbound.get("5xx", 0)
    checks.append(
        Check(
            retried > 0 and retried == refused,
            f"frontend's retries to reviews-v1 ({retried}) = reviews v1's 503s ({refused}), as its metrics count them",
        )
    )
    return checks


# --- the run ---------------------------------------------------------------------------------------------------------


def run(
    mode: Mode = "in-process", requests: int = 200, concurrency: int = 8, say: Callable[[str], None] = print
) -> Result:
    """Deploy the four services (``mode``), send ``requests``, collect what the mesh saw; ``say`` prints progress."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    result = Result(mode)
    with ExitStack() as stack:
        collector = stack.enter_context(Collector())
        deploy = _in_process if mode == "in-process" else _sidecar
        deployment = deploy(stack, collector.endpoint)
        result.entry = deployment.entry
        result.services = deployment.services
        for line in _setup_lines(result, collector.endpoint):
            say(line)
        with _demo_tracer(collector.endpoint) as tracer:
            result.outcomes, result.seconds = asyncio.run(_send(deployment.entry, requests, concurrency, tracer))
        result.pages = _scrape(deployment.scrape)
        result.metrics = {service: parse_metrics(page) for service, page in result.pages.items()}
        # Stop the callers first; closing each mesh (and each sidecar's drain) sends its last spans.
        for server in deployment.servers:
            server.stop()
        for mesh in deployment.meshes:
            mesh.close()
        _stop_sidecars(deployment.sidecars)
        spans = collector.wait(lambda spans: bool(complete_traces(spans, CHAIN)), SPAN_WAIT)
        result.spans = spans
        result.collector_rejected = collector.rejected
    result.trace = _sample_trace(result)
    result.checks = _checks(result)
    return result


def _sample_trace(result: Result) -> list[Span]:
    """A trace of a request that reviews v1 failed and a retry saved, if there is one; else the first whole one."""
    traces = complete_traces(result.spans, CHAIN)
    for spans in traces:
        if any(span.tags.get("meshlib.retry_reason") for span in spans):
            return spans
    return traces[0] if traces else []


# --- what it prints --------------------------------------------------------------------------------------------------


WHAT = {
    "frontend": "FastAPI → reviews: 90% v1, 10% v2; retries, breaker",
    "reviews v1": f"Flask → ratings; 503 to every {FLAKY_EVERY}th request",
    "reviews v2": "Flask → ratings; draws the stars",
    "ratings": "Flask",
}


def _setup_lines(result: Result, collector: str) -> list[str]:
    how = (
        "each app has its mesh inside (meshlib.asgi / meshlib.wsgi middleware, mesh clients)"
        if result.mode == "in-process"
        else "each app behind its own `meshlib proxy`; the apps' mesh clients send through it"
    )
    lines = [f"bookinfo on 127.0.0.1, {result.mode}: {how}"]
    columns = list(next(iter(result.services.values())))
    table = Table(("service", "what", *columns))
    for name, where in result.services.items():
        table.rows.append((name, WHAT[name], *(where[column].removeprefix("http://") for column in columns)))
    lines += [f"  {line}" for line in table.lines()]
    lines.append(f"  spans go to the demo's Zipkin-compatible collector at {collector}")
    lines.append("")
    return lines


def report_lines(result: Result) -> list[str]:
    """The demo's report after the setup lines: where requests went, a trace, the metrics, the checks."""
    lines: list[str] = []
    outcomes = result.outcomes
    statuses = Counter(str(o.status) if o.status else "no answer" for o in outcomes)
    rate = len(outcomes) / result.seconds if result.seconds else 0.0
    lines.append(
        f"sent {len(outcomes)} requests to GET {result.entry}/products/N "
        f"in {result.seconds:.2f} s ({rate:,.0f} req/s): "
        + ", ".join(f"{n} × {status}" for status, n in sorted(statuses.items()))
    )
    lines.append("")
    versions = result.versions
    total = sum(versions.values())
    lines.append("where they went (the reviews version in each answer; frontend's mesh.yaml splits 90/10):")
    for version in ("v1", "v2"):
        count = versions[version]
        share = count / total if total else 0.0
        lines.append(f"  reviews {version}  {count:>5}  {share:6.1%}  {'█' * round(share * 40)}")
    lines.append("")
    if result.trace:
        trace_id = result.trace[0].trace_id
        services = sorted({span.service for span in result.trace} - {DEMO_SERVICE})
        retried = any(span.tags.get("meshlib.retry_reason") for span in result.trace)
        lines.append(
            f"one trace ({trace_id}: {len(result.trace)} spans from {', '.join(services)} and the demo's client"
            + ("; reviews v1 failed it once and a retry saved it" if retried else "")
            + "):"
        )
        lines += [f"  {line}" for line in trace_lines(result.trace)]
    else:
        lines.append(f"no trace spans {' → '.join(CHAIN)} among the {len(result.spans)} spans collected")
    traces = set(by_trace(result.spans))
    sent = {o.trace_id for o in outcomes}
    others = len(traces - sent)
    lines.append(
        f"  (the collector got {len(result.spans)} spans in {len(traces)} traces: {len(traces & sent)} of the demo's "
        f"requests" + (f", {others} of the metrics scrapes)" if others else ")")
    )
    lines.append("")
    where = "each service's /metrics" if result.mode == "in-process" else "each sidecar's admin /metrics"
    lines.append(f"key metrics, scraped from {where} (latency: histogram_quantile over the buckets):")
    lines += [f"  {line}" for line in metrics_table(result.metrics).lines()]
    lines.append("")
    lines.append("checks:")
    lines += [f"  {'ok  ' if check.ok else 'FAIL'}  {check.text}" for check in result.checks]
    return lines
