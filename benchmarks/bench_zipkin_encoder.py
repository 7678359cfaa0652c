"""The Zipkin JSON encoding of the mesh's spans: OpenTelemetry's JsonV2Encoder against meshlib's, in the same run.

Run ``python benchmarks/bench_zipkin_encoder.py`` (``--quick`` for a smoke
run). The spans are the mesh's own: bench_observability's engine config
(bench_core's 50 routes over 20 clusters, with a timeout, retries and a
breaker per cluster) with ``tracing: {sampling: 1.0}``, sent over a zero-I/O
transport and kept as the span processor hands them over. Each round encodes
the same batch of 512 spans with each encoder (the order reversed every other
round); the table prints each one's median CPU µs per span and its ratio to
the stock encoder's. The encoders' outputs are compared first: the same JSON,
less the stock encoder's ``"debug": true``.

Why it matters: the export thread runs beside the requests, on the same core
when the process is pinned to one, and the 25 to 55 µs (by the hour) the stock
encoder takes per span here is CPU the requests lose (two spans per sampled request).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_observability  # noqa: E402 - a sibling script, importable once its folder is on the path
from bench_core import ZeroIO, engine_batch  # noqa: E402
from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder  # noqa: E402
from opentelemetry.exporter.zipkin.node_endpoint import NodeEndpoint  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult  # noqa: E402

from meshlib._observe.tracing import TracingObserver  # noqa: E402
from meshlib._observe.zipkin_json import ZipkinJsonEncoder  # noqa: E402

BATCH = 512  # spans per export: the span processor's default batch
LIMIT: Any = None  # the tag value limit ZipkinExporter gives its encoder unless told otherwise: none


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def mesh_spans(count: int) -> list[ReadableSpan]:
    """``count`` spans from the mesh's tracing observer, every request sampled."""
    with bench_observability.ZipkinSink() as sink:
        meshes, requests = bench_observability._engine_meshes(sink.endpoint, sampling=1.0)
        mesh = meshes[bench_observability.BOTH]
        snapshot = mesh.snapshot
        assert snapshot.observers is not None
        (tracing,) = (member for member in snapshot.observers.members if isinstance(member, TracingObserver))
        keep = _Keep()
        tracing.provider.add_span_processor(SimpleSpanProcessor(keep))
        engine_batch(mesh.transport(inner=ZeroIO()), requests, count // 2 + 1, 60.0)
        for each in meshes.values():
            each.close()
    return keep.spans[:count]


def _without_debug(text: str | bytes) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = json.loads(text)
    for span in spans:
        span.pop("debug", None)
    return spans


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few rounds: a smoke run")
    args = parser.parse_args(argv)
    rounds = 4 if args.quick else 30
    spans = mesh_spans(BATCH)
    if len(spans) != BATCH:  # every request sampled: a short batch means the spans were not all seen
        raise SystemExit(f"expected {BATCH} spans from the mesh, got {len(spans)}")
    node = NodeEndpoint()
    node.service_name = "bench"
    encoders: dict[str, Callable[[], str | bytes]] = {}
    for name, encoder in (
        ("OpenTelemetry JsonV2Encoder", JsonV2Encoder(LIMIT)),
        ("meshlib ZipkinJsonEncoder", ZipkinJsonEncoder(LIMIT)),
    ):
        encoders[name] = lambda encoder=encoder: encoder.serialize(spans, node)  # type: ignore[misc]
    stock, ours = (encoder() for encoder in encoders.values())
    same = _without_debug(stock) == json.loads(ours)
    print(f'{len(spans)} spans from the mesh (sampling 1.0); the same JSON less "debug": {"yes" if same else "NO"}')
    cpu: dict[str, list[float]] = {name: [] for name in encoders}
    names = list(encoders)
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            start = time.process_time()
            encoders[name]()
            cpu[name].append((time.process_time() - start) / len(spans) * 1e6)
    base = statistics.median(cpu[names[0]])
    print(f"\n{'encoder':<28} {'CPU µs/span':>12} {'bytes/span':>11} {'÷ stock':>8}")
    print("─" * 62)
    for name, text in zip(names, (stock, ours), strict=True):
        median = statistics.median(cpu[name])
        print(f"{name:<28} {median:>12.1f} {len(text) / len(spans):>11.0f} {median / base:>7.2f}×")
    print(f"\n(median of {rounds} rounds, each encoding the same {len(spans)} spans with both, order alternating)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
