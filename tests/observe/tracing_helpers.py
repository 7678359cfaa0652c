"""What the tracing tests share: a collector fixture, the mesh's tracing observer, and reading spans as a tree."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import meshlib
from meshlib._observe.tracing import TracingObserver
from tests.zipkin_collector import ZipkinCollector, running_collector

Span = dict[str, Any]


@pytest.fixture
def collector() -> Iterator[ZipkinCollector]:
    """A fake Zipkin collector on a loopback port, for this test."""
    with running_collector() as running:
        yield running


def tracing(endpoint: str | None, **settings: Any) -> dict[str, Any]:
    """A ``tracing:`` section exporting to ``endpoint`` (None: no exporter)."""
    section: dict[str, Any] = dict(settings)
    if endpoint is not None:
        section["zipkin"] = {"endpoint": endpoint, **section.pop("zipkin", {})}
    return section


def tracer_of(mesh: meshlib.Mesh) -> TracingObserver:
    """The mesh's live tracing observer (the config must have ``tracing:``)."""
    observer = mesh._runtime.observers.get("tracing")
    assert isinstance(observer, TracingObserver), observer
    return observer


def exported(mesh: meshlib.Mesh, collector: ZipkinCollector, count: int, timeout: float = 10.0) -> list[Span]:
    """Export what the mesh queued and wait until the collector holds ``count`` spans (exactly: more fails)."""
    assert tracer_of(mesh).flush()
    spans = collector.wait_for_count(count, timeout)
    assert len(spans) == count, [s["name"] for s in spans]
    return spans


def named(spans: list[Span], name: str) -> Span:
    """The one span called ``name``."""
    found = [s for s in spans if s["name"] == name]
    assert len(found) == 1, (name, [s["name"] for s in spans])
    return found[0]


def tags(span: Span) -> dict[str, str]:
    """The span's tags without the resource and scope ones every span has."""
    return {
        k: v
        for k, v in span.get("tags", {}).items()
        if not k.startswith(("telemetry.", "otel.library.", "otel.scope.", "service."))
    }


def is_one_tree(spans: list[Span]) -> bool:
    """One trace id, one root, and every other span's parent among the spans."""
    ids = {s["id"] for s in spans}
    roots = [s for s in spans if "parentId" not in s]
    return (
        len({s["traceId"] for s in spans}) == 1
        and len(roots) == 1
        and all(s["parentId"] in ids for s in spans if "parentId" in s)
    )


def path_to_root(spans: list[Span], span: Span) -> list[str]:
    """The names from ``span`` up to the root (bounded by the number of spans)."""
    by_id = {s["id"]: s for s in spans}
    names = [span["name"]]
    for _ in range(len(spans)):
        parent = span.get("parentId")
        if parent is None:
            return names
        span = by_id[parent]
        names.append(span["name"])
    raise AssertionError(f"a cycle in the spans' parents: {names}")
