"""What the bookinfo demo prints: a trace drawn as a tree, and a summary of each service's Prometheus metrics."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from examples.bookinfo.zipkin import Span

__all__ = [
    "TRACE_BAR_WIDTH",
    "Histogram",
    "ServiceMetrics",
    "Table",
    "complete_traces",
    "parse_metrics",
    "trace_lines",
]

TRACE_BAR_WIDTH = 24


# --- traces ----------------------------------------------------------------------------------------------------------


def _children(spans: Sequence[Span]) -> tuple[list[Span], dict[str, list[Span]]]:
    """The roots (spans whose parent was not collected) and each span's children, by start time."""
    ids = {span.id for span in spans}
    roots: list[Span] = []
    children: dict[str, list[Span]] = defaultdict(list)
    for span in sorted(spans, key=lambda s: (s.timestamp, s.id)):
        if span.parent_id is not None and span.parent_id in ids and span.parent_id != span.id:
            children[span.parent_id].append(span)
        else:
            roots.append(span)
    return roots, children


def by_trace(spans: Iterable[Span]) -> dict[str, list[Span]]:
    traces: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        traces[span.trace_id].append(span)
    return dict(traces)


def _caller(span: Span, parents: Mapping[str, Span]) -> str | None:
    """The service of the nearest ancestor of ``span`` that belongs to another service (its caller)."""
    seen = {span.id}
    parent = parents.get(span.parent_id or "")
    while parent is not None and parent.id not in seen:
        if parent.service != span.service:
            return parent.service
        seen.add(parent.id)
        parent = parents.get(parent.parent_id or "")
    return None


def spans_chain(spans: Sequence[Span], services: Sequence[str]) -> bool:
    """Whether the spans are one trace (a single root) in which each of ``services`` called the next.

    That is: every service has a server span, and each callee has one whose nearest span of another service
    (the try or request that called it) belongs to its caller.
    """
    roots, _ = _children(spans)
    if len(roots) != 1:
        return False
    parents = {span.id: span for span in spans}
    servers = [span for span in spans if span.kind == "SERVER"]
    if any(not any(s.service == service for s in servers) for service in services):
        return False
    return all(
        any(s.service == callee and _caller(s, parents) == caller for s in servers)
        for caller, callee in itertools.pairwise(services)
    )


def complete_traces(spans: Iterable[Span], services: Sequence[str]) -> list[list[Span]]:
    """The traces in which each of ``services`` called the next (:func:`spans_chain`), e.g. frontend → reviews.

    In order of their roots' start; each trace's spans in start order.
    """
    complete = [
        sorted(trace, key=lambda s: (s.timestamp, s.id))
        for trace in by_trace(spans).values()
        if spans_chain(trace, services)
    ]
    complete.sort(key=lambda trace: trace[0].timestamp)
    return complete


def _describe(span: Span) -> str:
    tags = span.tags
    status = tags.get("http.response.status_code")
    outcome = f" → {status}" if status else ""
    if tags.get("meshlib.error"):
        outcome += f" ({tags['meshlib.error']})"
    if span.kind == "SERVER":
        where = " (sidecar)" if tags.get("meshlib.door") == "sidecar" else ""
        return f"{tags.get('http.request.method', span.name)} {tags.get('url.path', '')}{where}{outcome}"
    if span.kind == "CLIENT":
        return f"{span.name} {tags.get('url.full', '')}".rstrip() + outcome
    if "meshlib.try" in tags:  # a try of a mesh request: where it went
        retry = f", retry after {tags['meshlib.retry_reason']}" if tags.get("meshlib.retry_reason") else ""
        where = " ".join(v for v in (tags.get("meshlib.cluster"), tags.get("meshlib.endpoint")) if v)
        return f"{span.name} → {where}{retry}{outcome}"
    return span.name + outcome


def trace_lines(spans: Sequence[Span]) -> list[str]:
    """The trace as a tree: service, kind and what each span did; its duration, and a bar of when it ran."""
    if not spans:
        return []
    roots, children = _children(spans)
    start = min(span.timestamp for span in spans)
    end = max(span.timestamp + span.duration for span in spans)
    total = max(end - start, 1)
    rows: list[tuple[str, str, str]] = []

    def walk(span: Span, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        kind = (span.kind or "internal").lower()
        rows.append(
            (
                f"{prefix}{branch}{span.service} {kind}: {_describe(span)}",
                f"{span.duration / 1000:.1f} ms",
                _bar(span, start, total),
            )
        )
        below = children.get(span.id, [])
        deeper = prefix + ("" if top else ("   " if last else "│  "))
        for i, child in enumerate(below):
            walk(child, deeper, i == len(below) - 1, False)

    for root in roots:
        walk(root, "", True, True)
    width = max(len(r[0]) for r in rows)
    duration_width = max(len(r[1]) for r in rows)
    return [f"{tree:<{width}}  {duration:>{duration_width}}  {bar}" for tree, duration, bar in rows]


def _bar(span: Span, start: int, total: int) -> str:
    """Where the span ran within the whole trace, on a fixed width."""
    begin = math.floor((span.timestamp - start) / total * TRACE_BAR_WIDTH)
    begin = min(max(begin, 0), TRACE_BAR_WIDTH - 1)
    length = max(1, round(span.duration / total * TRACE_BAR_WIDTH))
    length = min(length, TRACE_BAR_WIDTH - begin)
    return "▕" + " " * begin + "█" * length + " " * (TRACE_BAR_WIDTH - begin - length) + "▏"


# --- metrics ---------------------------------------------------------------------------------------------------------


@dataclass
class Histogram:
    """Cumulative bucket counts (upper bound → count), as a Prometheus histogram has them."""

    buckets: dict[float, float] = field(default_factory=dict)

    def add(self, le: float, count: float) -> None:
        self.buckets[le] = self.buckets.get(le, 0.0) + count

    @property
    def count(self) -> float:
        return self.buckets.get(math.inf, 0.0)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile as Prometheus's ``histogram_quantile`` estimates it (linear within a bucket)."""
        total = self.count
        if total <= 0:
            return None
        rank = q * total
        lower, below = 0.0, 0.0
        for le in sorted(self.buckets):
            cumulative = self.buckets[le]
            if cumulative >= rank:
                if math.isinf(le):
                    return lower  # beyond the highest finite bound: that bound, as Prometheus answers
                if cumulative == below:
                    return le
                return lower + (le - lower) * (rank - below) / (cumulative - below)
            lower, below = le, cumulative
        return lower


@dataclass
class ServiceMetrics:
    """What the demo reads from one service's metrics page."""

    inbound: Counter[str] = field(default_factory=Counter)  # status class → requests
    inbound_latency: Histogram = field(default_factory=Histogram)
    outbound: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))  # cluster → class → n
    outbound_latency: dict[str, Histogram] = field(default_factory=lambda: defaultdict(Histogram))
    retries: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))  # cluster → reason → n
    breaker: dict[str, str] = field(default_factory=dict)  # cluster → state
    families: int = 0


_BREAKER_STATES = ("closed", "open", "half_open", "half-open")


def parse_metrics(text: str) -> ServiceMetrics:
    """The demo's view of a Prometheus text page (meshlib's metric names; see docs/observability.md)."""
    found = ServiceMetrics()
    for family in text_string_to_metric_families(text):
        found.families += 1
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "meshlib_inbound_requests_total":
                found.inbound[labels["status_class"]] += int(sample.value)
            elif sample.name == "meshlib_inbound_request_duration_seconds_bucket":
                found.inbound_latency.add(float(labels["le"]), sample.value)
            elif sample.name == "meshlib_outbound_requests_total":
                found.outbound[labels["cluster"] or "(none)"][labels["status_class"]] += int(sample.value)
            elif sample.name == "meshlib_outbound_request_duration_seconds_bucket":
                found.outbound_latency[labels["cluster"] or "(none)"].add(float(labels["le"]), sample.value)
            elif sample.name == "meshlib_outbound_retries_total":
                found.retries[labels["cluster"]][labels["reason"]] += int(sample.value)
            elif sample.name == "meshlib_cluster_breaker_state" and sample.value == 1:
                state = labels.get("state")
                if state in _BREAKER_STATES:
                    found.breaker[labels["cluster"]] = state
    return found


def _classes(counts: Mapping[str, int]) -> str:
    return "  ".join(f"{klass} {n}" for klass, n in sorted(counts.items()) if n) or "none"


def _ms(histogram: Histogram, q: float) -> str:
    value = histogram.quantile(q)
    return "" if value is None else f"{value * 1000:.1f}"


@dataclass
class Table:
    header: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    right: frozenset[int] = frozenset()

    def lines(self) -> list[str]:
        widths = [max(len(row[i]) for row in [self.header, *self.rows]) for i in range(len(self.header))]

        def line(row: Sequence[str]) -> str:
            cells = [
                c.rjust(w) if i in self.right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            return "  ".join(cells).rstrip()

        return [line(self.header), "─" * len(line(self.header)), *(line(row) for row in self.rows)]


def metrics_table(services: Mapping[str, ServiceMetrics]) -> Table:
    """One row per service's inbound side and per cluster it calls."""
    table = Table(
        ("service", "side", "cluster", "requests by status", "retries (reason)", "breaker", "p50 ms", "p99 ms"),
        right=frozenset({6, 7}),
    )
    for name, found in services.items():
        table.rows.append(
            (
                name,
                "in",
                "",
                _classes(found.inbound),
                "",
                "",
                _ms(found.inbound_latency, 0.5),
                _ms(found.inbound_latency, 0.99),
            )
        )
        for cluster in sorted(found.outbound):
            retries = found.retries.get(cluster, Counter())
            shown = ", ".join(f"{n} ({reason})" for reason, n in sorted(retries.items())) or "0"
            latency = found.outbound_latency.get(cluster, Histogram())
            table.rows.append(
                (
                    "",
                    "out",
                    cluster,
                    _classes(found.outbound[cluster]),
                    shown,
                    found.breaker.get(cluster, ""),
                    _ms(latency, 0.5),
                    _ms(latency, 0.99),
                )
            )
    return table
