"""The tracing observer's two shortcuts around OpenTelemetry give exactly what OpenTelemetry gives.

An unsampled span is made without ``Tracer.start_span`` and the trace
headers are formatted without the propagators (each about 5 µs a request
otherwise, see meshlib/_observe/tracing.py); these tests hold both to the
library's own results, so neither can drift from it.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from opentelemetry import context as otel_context, trace
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from meshlib._observe.tracing import Propagation, TracingObserver
from tests.conftest import MakeMesh
from tests.observe.tracing_helpers import tracer_of

TRACE_ID, SPAN_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
STATE = TraceState([("vendor", "opaque"), ("other", "1")])
LIBRARY = {"tracecontext": TraceContextTextMapPropagator(), "b3": B3SingleFormat(), "b3multi": B3MultiFormat()}
CONTEXTS = {
    "sampled": SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(TraceFlags.SAMPLED)),
    "unsampled": SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(0)),
    "random-id-sampled": SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(0x03)),
    "random-id-unsampled": SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(0x02)),
    "with-trace-state": SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(1), STATE),
    "64-bit-trace-id": SpanContext(0xA3CE929D0E0E4736, 1, False, TraceFlags(1)),
}
FORMATS = [["tracecontext"], ["b3"], ["b3multi"], ["tracecontext", "b3", "b3multi"]]


@pytest.mark.parametrize("formats", FORMATS, ids="+".join)
@pytest.mark.parametrize("context", list(CONTEXTS.values()), ids=list(CONTEXTS))
def test_the_headers_written_are_those_the_propagators_write(formats: list[str], context: SpanContext) -> None:
    ours = httpx.Headers({"accept": "*/*"})
    Propagation(formats).inject(ours, context, replace=False)
    theirs = httpx.Headers({"accept": "*/*"})
    carrier = trace.set_span_in_context(trace.NonRecordingSpan(context), otel_context.Context())
    for name in formats:
        LIBRARY[name].inject(theirs, carrier)
    assert ours.multi_items() == theirs.multi_items()


PARENTS: dict[str, SpanContext | None] = {
    "root": None,
    "remote-sampled": SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(0x01), STATE),
    "remote-unsampled": SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(0x00), STATE),
    "remote-unsampled-random-id": SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(0x02)),
    "local-unsampled": SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(0x02), STATE),
    "local-sampled": SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(0x03)),
}


def _parent(context: SpanContext | None) -> otel_context.Context:
    root = otel_context.Context()
    return root if context is None else trace.set_span_in_context(trace.NonRecordingSpan(context), root)


def _shape(span: trace.Span, parent: SpanContext | None) -> dict[str, Any]:
    context = span.get_span_context()
    return {
        "recording": span.is_recording(),
        "valid": context.is_valid,
        "remote": context.is_remote,
        "same_trace": parent is not None and context.trace_id == parent.trace_id,
        "new_span_id": parent is None or context.span_id != parent.span_id,
        "flags": int(context.trace_flags),
        "trace_state": list(context.trace_state.items()),
    }


@pytest.mark.parametrize("sampling", [0.0, 1.0])
@pytest.mark.parametrize("parent", list(PARENTS.values()), ids=list(PARENTS))
def test_a_span_is_made_as_the_sdk_makes_it(make_mesh: MakeMesh, sampling: float, parent: SpanContext | None) -> None:
    observer: TracingObserver = tracer_of(make_mesh({"allow_empty": True, "tracing": {"sampling": sampling}}))
    sdk = TracerProvider(sampler=ParentBased(TraceIdRatioBased(sampling)), shutdown_on_exit=False).get_tracer("sdk")
    ours = observer._start_span("GET", _parent(parent), SpanKind.CLIENT)
    theirs = sdk.start_span("GET", _parent(parent), SpanKind.CLIENT)
    assert _shape(ours, parent) == _shape(theirs, parent)
    ours.end()
    theirs.end()


def test_a_new_trace_is_sampled_by_its_trace_id_as_trace_id_ratio_based_decides(make_mesh: MakeMesh) -> None:
    observer = tracer_of(make_mesh({"allow_empty": True, "tracing": {"sampling": 0.25}}))
    ratio = TraceIdRatioBased(0.25)
    spans = [observer._start_span("GET", otel_context.Context(), SpanKind.SERVER) for _ in range(2000)]
    decisions = []
    for span in spans:
        trace_id = span.get_span_context().trace_id
        decided = ratio.should_sample(None, trace_id, "GET").decision is Decision.RECORD_AND_SAMPLE
        # A sampled root got the very trace id its decision was drawn on (handed to the SDK), an unsampled one too.
        assert span.is_recording() == decided == span.get_span_context().trace_flags.sampled
        decisions.append(decided)
        span.end()
    assert 0.18 < sum(decisions) / len(decisions) < 0.32
