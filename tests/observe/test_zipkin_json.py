"""The Zipkin JSON encoder: the stock JsonV2Encoder's output, key for key, without "debug"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import IntEnum
from typing import Any

import pytest
from opentelemetry.exporter.zipkin.encoder import DEFAULT_MAX_TAG_VALUE_LENGTH
from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder
from opentelemetry.exporter.zipkin.node_endpoint import NodeEndpoint
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

import meshlib
from meshlib._observe.tracing import TracingObserver
from meshlib._observe.zipkin_json import ZipkinJsonEncoder
from tests.observe.tracing_helpers import collector, tracing
from tests.zipkin_collector import ZipkinCollector

__all__ = ["collector"]  # a fixture, imported for the tests below


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


class _Code(IntEnum):
    OK = 200


def _spans(service: str = "svc", *, limits: SpanLimits | None = None) -> list[ReadableSpan]:
    keep = _Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": service, "deploy": 3}), span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer("meshlib", "9.9")
    with tracer.start_as_current_span("GET r1", kind=SpanKind.CLIENT) as parent:
        parent.set_attributes(
            {
                "http.request.method": "GET",
                "long": "x" * 300,
                "flag": True,
                "off": False,
                "count": 7,
                "ratio": 0.25,
                "enum": _Code.OK,
                "tries": ["a", "b"],
                "bools": [True, False],
                "service.name": "overridden by the resource",
            }
        )
        parent.add_event("retry", {"reason": "5xx", "try": 2})
        with tracer.start_as_current_span("try 1", kind=SpanKind.INTERNAL) as child:
            child.set_status(Status(StatusCode.ERROR, "upstream reset"))
        with tracer.start_as_current_span("try 2") as child:
            child.set_status(Status(StatusCode.OK))
    with tracer.start_as_current_span("inbound", kind=SpanKind.SERVER) as server:
        server.set_attribute("empty", "")
        server.set_status(Status(StatusCode.ERROR))
    return keep.spans


def _stock(spans: list[ReadableSpan], limit: int | None = DEFAULT_MAX_TAG_VALUE_LENGTH) -> list[dict[str, Any]]:
    encoder = JsonV2Encoder(limit)  # type: ignore[arg-type]  # None (no limit) is what the exporter passes
    out: list[dict[str, Any]] = json.loads(encoder.serialize(spans, NodeEndpoint()))  # type: ignore[arg-type]
    for span in out:
        span.pop("debug", None)
    return out


def _ours(spans: list[ReadableSpan], limit: int | None = DEFAULT_MAX_TAG_VALUE_LENGTH) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(ZipkinJsonEncoder(limit).serialize(spans, NodeEndpoint()))
    return out


def _items(encoded: list[dict[str, Any]]) -> Iterator[list[tuple[str, Any]]]:
    """Each span's keys and values in order, tags in order too: the comparison sees a reordering."""
    for span in encoded:
        yield [(key, list(value.items()) if key == "tags" else value) for key, value in span.items()]


@pytest.mark.parametrize("limit", [DEFAULT_MAX_TAG_VALUE_LENGTH, None, 10, 0, 1])
def test_the_same_json_as_the_stock_encoder_less_debug(limit: int | None) -> None:
    spans = _spans()
    assert list(_items(_ours(spans, limit))) == list(_items(_stock(spans, limit)))


def test_no_limit_keeps_long_values_whole_and_the_default_is_the_stock_default() -> None:
    spans = _spans()
    (client,) = (span for span in _ours(spans, None) if span["name"] == "GET r1")
    assert client["tags"]["long"] == "x" * 300
    assert ZipkinJsonEncoder().max_tag_value_length == JsonV2Encoder().max_tag_value_length == 128


def test_the_mesh_exports_with_this_encoder_and_the_exporters_own_limit() -> None:
    mesh = meshlib.Mesh.from_dict(
        {
            "clusters": {"api": {"endpoints": ["http://127.0.0.1:9"]}},
            "routes": [{"match": {}, "cluster": "api"}],
            "tracing": {"zipkin": {"endpoint": "http://127.0.0.1:9/api/v2/spans"}, "sampling": 1.0},
        }
    )
    try:
        observers = mesh.snapshot.observers
        assert observers is not None
        (tracing,) = (member for member in observers.members if isinstance(member, TracingObserver))
        exporter: Any = tracing._exporter
        encoder = exporter._exporter.encoder
        assert isinstance(encoder, ZipkinJsonEncoder)
        assert encoder.max_tag_value_length is None  # ZipkinExporter's own default: values are not cut
    finally:
        mesh.close()


def test_a_sampled_span_is_not_marked_debug() -> None:
    stock = json.loads(JsonV2Encoder().serialize(_spans(), NodeEndpoint()))  # type: ignore[arg-type]
    assert all(span["debug"] is True for span in stock)  # what the stock encoder does
    assert all("debug" not in span for span in _ours(_spans()))


def test_the_shared_tags_follow_each_spans_own_resource() -> None:
    spans = _spans("first") + _spans("second") + _spans("first")
    encoded = _ours(spans)
    assert [span["tags"]["service.name"] for span in encoded] == ["first"] * 4 + ["second"] * 4 + ["first"] * 4
    assert list(_items(encoded)) == list(_items(_stock(spans)))


def test_dropped_attributes_and_events_are_counted_as_the_stock_encoder_counts_them() -> None:
    spans = _spans(limits=SpanLimits(max_span_attributes=3, max_events=0))
    encoded = _ours(spans)
    (client,) = (span for span in encoded if span["name"] == "GET r1")
    assert client["tags"]["otel.dropped_events_count"] == "1"
    assert client["tags"]["otel.dropped_attributes_count"] == "7"  # 10 set, 3 kept
    assert "annotations" not in client
    assert list(_items(encoded)) == list(_items(_stock(spans)))


def test_a_value_it_cannot_tag_is_left_out_as_the_stock_encoder_leaves_it() -> None:
    class Odd(str):
        pass

    keep = _Keep()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(keep))
    with provider.get_tracer("t").start_as_current_span("s") as span:
        span.set_attributes({"a": "1", "b": ("x",), "c": Odd("kept"), "d": "4"})
    # At a limit of 1 the stock encoder cannot write a sequence (its brackets alone are 2) and leaves the tag out.
    ours = _ours(keep.spans, 1)
    assert list(ours[0]["tags"])[:3] == ["a", "c", "d"]
    assert ours[0]["tags"]["c"] == "k"
    assert list(_items(ours)) == list(_items(_stock(keep.spans, 1)))


def test_an_empty_batch_is_an_empty_list() -> None:
    assert ZipkinJsonEncoder().serialize([], NodeEndpoint()) == b"[]"


TEXT = 'naïve café ☃ 𝄞 \u0000 "quoted" back\\slash'


def test_text_beyond_ascii_is_written_as_utf_8_and_reads_back_as_the_stock_encoder_s() -> None:
    keep = _Keep()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(keep))
    with provider.get_tracer("t").start_as_current_span(TEXT) as span:
        span.set_attributes({"note": TEXT, TEXT: "key"})
    body = ZipkinJsonEncoder().serialize(keep.spans, NodeEndpoint())
    assert isinstance(body, bytes)
    assert "☃".encode() in body  # UTF-8, not \u escapes
    (sent,) = json.loads(body.decode("utf-8"))
    assert (sent["name"], sent["tags"]["note"], sent["tags"][TEXT]) == (TEXT, TEXT, "key")
    assert list(_items(_ours(keep.spans))) == list(_items(_stock(keep.spans)))


def test_a_collector_receives_text_beyond_ascii_intact(collector: ZipkinCollector) -> None:
    """Through the real exporter: the body goes out as the encoder's UTF-8 bytes (a str body would be sent as
    Latin-1, which cannot hold ☃)."""
    mesh = meshlib.Mesh.from_dict({"allow_empty": True, "tracing": tracing(collector.endpoint, sampling=1.0)})
    try:
        observers = mesh.snapshot.observers
        assert observers is not None
        (observer,) = (member for member in observers.members if isinstance(member, TracingObserver))
        span = observer._recorded(TEXT, 0x4BF92F3577B34DA6A3CE929D0E0E4736, None, SpanKind.CLIENT)
        span.set_attributes({"note": TEXT})
        span.end()
        assert observer.flush()
        (sent,) = collector.wait_for_count(1, 10.0)
        assert (sent["name"], sent["tags"]["note"]) == (TEXT, TEXT)
        assert collector.content_types == ["application/json"]
    finally:
        mesh.close()
