"""The tracing observer's two shortcuts around OpenTelemetry give exactly what OpenTelemetry gives.

An unsampled span is made without ``Tracer.start_span`` and the trace
headers are formatted without the propagators (each about 5 µs a request
otherwise, see meshlib/_observe/tracing.py); these tests hold both to the
library's own results, so neither can drift from it.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Any

import anyio
import httpx
import pytest
import respx
from hypothesis import given, strategies as st
from opentelemetry import context as otel_context, trace
from opentelemetry.exporter.zipkin.node_endpoint import NodeEndpoint
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.sdk.trace import Span as SdkSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from meshlib._observe.exchange import Exchange, Try, outbound
from meshlib._observe.observers import Observers
from meshlib._observe.tracing import (
    _TRACE_HEADERS_RAW,
    Propagation,
    TracingObserver,
    _bound_digits,
    _has_trace_header,
    _id_pool,
    _new_ids,
    _Recorded,
)
from meshlib._observe.zipkin_json import ZipkinJsonEncoder
from tests.conftest import MakeMesh
from tests.observe.tracing_helpers import collector, tracer_of
from tests.zipkin_collector import ZipkinCollector

__all__ = ["collector"]  # a fixture, imported for the tests below

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
FORMATS = [["tracecontext"], ["b3"], ["b3multi"], ["tracecontext", "b3"], ["tracecontext", "b3", "b3multi"]]


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


SAMPLED_PARENTS = {name: context for name, context in PARENTS.items() if context is None or context.trace_flags.sampled}


@pytest.mark.parametrize("parent", list(SAMPLED_PARENTS.values()), ids=list(SAMPLED_PARENTS))
def test_a_sampled_outbound_span_is_recorded_as_the_sdk_makes_it(
    make_mesh: MakeMesh, parent: SpanContext | None
) -> None:
    """A sampled request's CLIENT span and its try's child are plain records until they end; what they hand the span
    processor then is what the SDK's own spans would: ids, flags, trace state, parent, resource, scope, attributes,
    status and times."""
    observer = tracer_of(make_mesh({"allow_empty": True, "tracing": {"sampling": 1.0}}))
    ours: trace.Span
    if parent is None:
        ours = observer._recorded("GET r", TRACE_ID, None, SpanKind.CLIENT)
    else:
        ours = observer._start_outbound("GET r", _parent(parent))
    theirs = observer.tracer.start_span("GET r", _parent(parent), SpanKind.CLIENT)
    assert isinstance(ours, _Recorded)
    assert _shape(ours, parent) == _shape(theirs, parent)
    ours_try = observer._recorded("try 1", ours.get_span_context().trace_id, ours.get_span_context())
    theirs_try = observer.tracer.start_span("try 1", trace.set_span_in_context(theirs, otel_context.Context()))
    assert _shape(ours_try, ours.get_span_context()) == _shape(theirs_try, theirs.get_span_context())
    for span in (ours, theirs, ours_try, theirs_try):
        span.set_attributes({"http.request.method": "GET", "server.port": 80, "meshlib.route": "r"})
        span.set_attribute("http.response.status_code", 503)
        span.set_status(Status(StatusCode.ERROR, "HTTP 503"))
        span.set_status(Status(StatusCode.UNSET))  # changes nothing, as in the SDK
    for ours_span, theirs_span in ((ours_try, theirs_try), (ours, theirs)):
        theirs_span.end()
        assert isinstance(theirs_span, SdkSpan)
        expected = theirs_span._readable_span()
        got = ours_span.readable(observer._resource, observer._scope)
        if ours_span is ours_try:  # each under its own client span
            assert (got.parent, expected.parent) == (ours.get_span_context(), theirs.get_span_context())
        else:
            assert got.parent == expected.parent == parent
        assert (got.name, got.kind) == (expected.name, expected.kind)
        assert dict(got.attributes or {}) == dict(expected.attributes or {})
        assert got.resource is expected.resource
        assert got.instrumentation_scope == expected.instrumentation_scope
        assert (got.status.status_code, got.status.description) == (StatusCode.ERROR, "HTTP 503")
        assert (expected.status.status_code, expected.status.description) == (StatusCode.ERROR, "HTTP 503")
        assert got.end_time is None  # not ended yet: readable() is what end() will hand on
        assert ours_span.is_recording()
    ours_try.end()
    ours.end()
    assert not ours.is_recording()
    ours.set_attribute("late", 1)  # an ended span takes no more, as the SDK's
    assert "late" not in (ours.readable(observer._resource, observer._scope).attributes or {})


def test_an_ended_recorded_span_reaches_the_exporter_with_its_times(
    make_mesh: MakeMesh, collector: ZipkinCollector
) -> None:
    mesh = make_mesh(_config(collector, sampling=1.0))
    observer = tracer_of(mesh)
    span = observer._recorded("GET r", TRACE_ID, None, SpanKind.CLIENT)
    span.set_attributes({"meshlib.route": "r"})
    span.end()
    span.end()  # a second end changes nothing and sends nothing
    assert observer.flush()
    [sent] = collector.wait_for_count(1, 10.0)
    assert (sent["traceId"], sent["name"], sent["kind"]) == (f"{TRACE_ID:032x}", "GET r", "CLIENT")
    assert sent["tags"]["meshlib.route"] == "r"
    assert sent["duration"] >= 0
    assert observer.stats()["spans"] == 1


@pytest.mark.parametrize("status", [None, Status(StatusCode.ERROR, "HTTP 503"), Status(StatusCode.OK)])
def test_an_ended_recorded_span_encodes_as_the_readable_span_it_stands_for(
    make_mesh: MakeMesh, status: Status | None
) -> None:
    """The export's queue takes a recorded span as it is: what the Zipkin exporter and its encoder read of it is what
    they read of its ReadableSpan, for a root and for a try under it."""
    observer = tracer_of(make_mesh({"allow_empty": True, "tracing": {"sampling": 1.0}}))
    root = observer._recorded("GET r", TRACE_ID, None, SpanKind.CLIENT)
    child = observer._recorded("try 1", TRACE_ID, root.get_span_context())
    for span in (root, child):
        span.set_attributes({"http.request.method": "GET", "server.port": 8080, "meshlib.route": "r", "ok": True})
        if status is not None:
            span.set_status(status)
        span.end()
    node = NodeEndpoint()
    node.service_name = "svc"
    encoder = ZipkinJsonEncoder(None)
    readable = [span.readable(observer._resource, observer._scope) for span in (root, child)]
    assert json.loads(encoder.serialize([root, child], node)) == json.loads(encoder.serialize(readable, node))
    for span, theirs in zip((root, child), readable, strict=True):
        assert span.resource is theirs.resource
        assert span.instrumentation_scope == theirs.instrumentation_scope
        assert (span.context, span.parent, span.name, span.kind) == (
            theirs.context,
            theirs.parent,
            theirs.name,
            theirs.kind,
        )
        assert (span.start_time, span.end_time, span.events, span.links) == (
            theirs.start_time,
            theirs.end_time,
            theirs.events,
            theirs.links,
        )
        assert (span.dropped_attributes, span.dropped_events, span.dropped_links) == (0, 0, 0)


@pytest.mark.parametrize("exported", [False, True], ids=["no-exporter", "zipkin"])
def test_a_processor_added_to_the_provider_hears_of_recorded_spans_as_of_the_sdk_s(
    make_mesh: MakeMesh, collector: ZipkinCollector, exported: bool
) -> None:
    """A recorded span ends as an SDK span does: every span processor of the mesh's provider is told, not only the
    export's; with the export's alone, it alone is (and still exports)."""
    config = _config(collector, sampling=1.0) if exported else {"allow_empty": True, "tracing": {"sampling": 1.0}}
    observer = tracer_of(make_mesh(config))
    seen: list[Any] = []

    class Keep(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            seen.extend(spans)
            return SpanExportResult.SUCCESS

    observer.provider.add_span_processor(SimpleSpanProcessor(Keep()))
    span = observer._recorded("GET r", TRACE_ID, None, SpanKind.CLIENT)
    span.end()
    theirs = observer.tracer.start_span("GET sdk", otel_context.Context(), SpanKind.CLIENT)
    theirs.end()
    assert [(each.name, each.context.trace_id) for each in seen] == [
        ("GET r", TRACE_ID),
        ("GET sdk", theirs.get_span_context().trace_id),
    ]
    if exported:
        assert observer.flush()
        assert sorted(sent["name"] for sent in collector.wait_for_count(2, 10.0)) == ["GET r", "GET sdk"]
        assert observer.stats()["spans"] == 2


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


@pytest.mark.parametrize("rate", [0.25, 0.01, 0.0, 1.0])
def test_a_new_outbound_trace_is_sampled_by_its_trace_id_as_trace_id_ratio_based_decides(
    make_mesh: MakeMesh, rate: float
) -> None:
    """The outbound fast path decides on the trace id's low hex digits (its first one alone, when that rules it out):
    each decision must be TraceIdRatioBased's on the same id, sampled or not."""
    observer = tracer_of(make_mesh({"allow_empty": True, "tracing": {"sampling": rate}}))
    ratio = TraceIdRatioBased(rate)
    decisions = []
    for _ in range(3000 if 0 < rate < 1 else 200):
        request = _request()
        exchange = outbound(request, "r", "sidecar")
        observer.started(exchange)
        trace_id = exchange.trace_id
        assert trace_id is not None
        decided = ratio.should_sample(None, int(trace_id, 16), "GET").decision is Decision.RECORD_AND_SAMPLE
        assert (exchange.inject is None) is decided  # a dropped trace's headers go on its tries, a sampled one's span
        decisions.append(decided)
        Observers([observer]).finished(exchange)
    if 0 < rate < 1:
        assert rate / 3 < sum(decisions) / len(decisions) < rate * 3
    else:
        assert all(decisions) is (rate == 1.0)
        assert any(decisions) is (rate == 1.0)


# A new trace the sampler drops makes no span at all: its tries carry fresh ids, flags 02 (random trace id, not
# sampled), formatted by the observer itself. These hold its headers to the propagators' for those ids.


def _config(collector: ZipkinCollector, **tracing: Any) -> dict[str, Any]:
    return {"allow_empty": True, "tracing": {**tracing, "zipkin": {"endpoint": collector.endpoint}}}


def _request(**headers: str) -> httpx.Request:
    return httpx.Request("GET", "http://ratings/x", headers={"accept": "*/*", **headers})


def _start(observer: TracingObserver, exchange: Exchange, request: httpx.Request) -> None:
    """``started``, then what the engine does next: the headers it asks for go on the request tries are made from."""
    observer.started(exchange)
    if exchange.inject is not None:
        request.headers._list.extend(exchange.inject)


def _send_try(observer: TracingObserver, exchange: Exchange, request: httpx.Request) -> None:
    attempt = Try(len(exchange.tries) + 1, "c", "http://10.0.0.1:80")
    exchange.tries.append(attempt)
    observer.try_started(exchange, attempt, request)


@pytest.mark.parametrize("formats", FORMATS, ids="+".join)
def test_a_dropped_new_trace_s_tries_carry_fresh_unsampled_ids_as_the_propagators_write_them(
    make_mesh: MakeMesh, collector: ZipkinCollector, formats: list[str]
) -> None:
    observer = tracer_of(make_mesh(_config(collector, sampling=0.0, propagation=formats)))
    seen = set()
    for _ in range(20):
        request = _request()
        exchange = outbound(request, "r", "client")
        _start(observer, exchange, request)
        _send_try(observer, exchange, request)
        _send_try(observer, exchange, request)  # a retry resends the request, headers and all
        trace_id = exchange.trace_id
        assert trace_id is not None
        assert len(trace_id) == 32
        found = dict(request.headers)
        if "traceparent" in found:
            span_id = found["traceparent"].split("-")[2]
        elif "b3" in found:
            span_id = found["b3"].split("-")[1]
        else:
            span_id = found["x-b3-spanid"]
        context = SpanContext(int(trace_id, 16), int(span_id, 16), False, TraceFlags(0x02))
        theirs = _request().headers
        carrier = trace.set_span_in_context(trace.NonRecordingSpan(context), otel_context.Context())
        for name in formats:
            LIBRARY[name].inject(theirs, carrier)
        assert request.headers.multi_items() == theirs.multi_items()
        assert context.is_valid
        seen.add(trace_id)
        Observers([observer]).finished(exchange)
    assert len(seen) == 20  # a new trace id per request
    assert observer.flush()
    assert observer.stats()["spans"] == 0


@pytest.mark.parametrize("rate", [0.3, 0.0, 1.0])  # 0.3: ids whose first low digit is the bound's take both tests
def test_trace_headers_without_a_valid_context_start_a_new_trace_decided_and_replaced_on_each_try(
    make_mesh: MakeMesh, collector: ZipkinCollector, rate: float
) -> None:
    """A caller's trace headers that hold no valid context (malformed) start a new trace, as no headers would: the
    decision is TraceIdRatioBased's on the new trace id, and every try's request carries the new context in place
    of the caller's headers, once per format."""
    observer = tracer_of(make_mesh(_config(collector, sampling=rate, propagation=["tracecontext", "b3"])))
    ratio = TraceIdRatioBased(rate)
    decisions = []
    for _ in range(400 if 0 < rate < 1 else 40):
        request = _request(traceparent="00-not-a-context-01", b3="garbage")
        exchange = outbound(request, "r", "sidecar")
        _start(observer, exchange, request)
        trace_id = exchange.trace_id
        assert trace_id is not None
        assert re.fullmatch("[0-9a-f]{32}", trace_id)
        assert int(trace_id, 16) != 0
        decided = ratio.should_sample(None, int(trace_id, 16), "GET").decision is Decision.RECORD_AND_SAMPLE
        decisions.append(decided)
        for _try in range(2):  # a retry resends the request: its headers are replaced again, never added twice
            _send_try(observer, exchange, request)
            [traceparent], [b3] = request.headers.get_list("traceparent"), request.headers.get_list("b3")
            version, sent_trace, span_id, flags = traceparent.split("-")
            assert (version, sent_trace) == ("00", trace_id)
            assert b3 == f"{trace_id}-{span_id}-{'1' if decided else '0'}"
            assert flags == ("03" if decided else "02")  # the W3C random flag, sampled or not
        Observers([observer]).finished(exchange)
    if 0 < rate < 1:
        assert rate / 3 < sum(decisions) / len(decisions) < rate * 3
    else:
        assert set(decisions) == {rate == 1.0}
    assert observer.flush()
    assert observer.stats()["spans"] == sum(decisions) * 3  # each sampled request: its span and two tries'


_LOW_BITS = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, 2**64 - 2, 2**64 - 1]))


@given(low=_LOW_BITS, rate=st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.5, 1.0])))
def test_a_trace_id_s_low_digits_compare_with_the_bound_as_its_number_does(low: int, rate: float) -> None:
    """A new trace's decision is taken on hex digits: they must agree with TraceIdRatioBased's test on numbers, up to
    a bound of 2**64 (sampling 1.0), which no 16 digits can hold."""
    bound = TraceIdRatioBased(rate).bound
    assert (b"%016x" % low < _bound_digits(bound)) is (low < bound)


_IDS = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-02")


def test_new_traces_ids_are_drawn_ahead_well_formed_valid_and_never_twice() -> None:
    """Ids come in batches; each is well formed, neither id is zero, and none is handed out twice across refills."""
    _id_pool.clear()
    drawn = [_new_ids() for _ in range(700)]  # more than two batches
    assert len(set(drawn)) == len(drawn)
    for ids in drawn:
        assert _IDS.fullmatch(ids), ids
        assert int(ids[3:35], 16) != 0
        assert int(ids[36:52], 16) != 0
    # Every digit of both ids is random (the batch is copied into place digit by digit): across 700 ids each of the
    # 48 places takes all 16 values, and each value about a sixteenth of the time (700/16 ≈ 44; far from it, a digit
    # would be missing or stuck).
    for place in [*range(3, 35), *range(36, 52)]:
        counts = Counter(ids[place] for ids in drawn)
        assert len(counts) == 16, (place, counts)
        assert max(counts.values()) < 100, (place, counts)
    assert len({ids[3:35] for ids in drawn}) == len({ids[36:52] for ids in drawn}) == len(drawn)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_sends_its_parent_s_drawn_ids() -> None:
    """Ids drawn ahead in the parent stay the parent's: the child starts with none (and the random module reseeds)."""
    _new_ids()
    pending = list(_id_pool)
    assert pending
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it has and what it draws, then leave without running pytest's exit
        try:
            os.write(write, b"%d " % len(_id_pool) + b" ".join(_new_ids() for _ in range(len(pending))))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        left, *theirs = pipe.read().split(b" ")
    os.waitpid(pid, 0)
    assert left == b"0"
    assert len(theirs) == len(pending)
    assert not set(theirs) & set(pending)


def test_a_new_trace_s_sampled_share_is_the_ratio_and_each_decision_is_trace_id_ratio_based_s(
    make_mesh: MakeMesh, collector: ZipkinCollector
) -> None:
    observer = tracer_of(make_mesh(_config(collector, sampling=0.25)))
    ratio = TraceIdRatioBased(0.25)
    decisions = []
    for _ in range(2000):
        request = _request()
        exchange = outbound(request, "r", "client")
        _start(observer, exchange, request)
        _send_try(observer, exchange, request)
        trace_id, _, flags = request.headers["traceparent"].split("-")[1:]
        decided = ratio.should_sample(None, int(trace_id, 16), "GET").decision is Decision.RECORD_AND_SAMPLE
        assert decided == (flags in ("01", "03"))
        assert trace_id == exchange.trace_id
        decisions.append(decided)
        Observers([observer]).finished(exchange)
    assert 0.2 < sum(decisions) / len(decisions) < 0.3
    assert observer.flush()
    assert observer.stats()["spans"] == 2 * sum(decisions)  # a client span and a try span each, no more


@pytest.mark.parametrize(
    ("headers", "formats"),
    [
        ({"traceparent": f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-00"}, ["tracecontext", "b3"]),
        ({"b3": f"{TRACE_ID:032x}-{SPAN_ID:016x}-0"}, ["b3", "tracecontext"]),
        ({"x-b3-traceid": f"{TRACE_ID:032x}", "x-b3-spanid": f"{SPAN_ID:016x}", "x-b3-sampled": "0"}, ["b3multi"]),
    ],
    ids=["traceparent-00", "b3-0", "b3multi-0"],
)
def test_an_unsampled_parent_s_trace_goes_on_unsampled(
    make_mesh: MakeMesh, collector: ZipkinCollector, headers: dict[str, str], formats: list[str]
) -> None:
    observer = tracer_of(make_mesh(_config(collector, sampling=1.0, propagation=formats)))
    request = _request(**headers)
    exchange = outbound(request, "r", "sidecar")
    _start(observer, exchange, request)
    _send_try(observer, exchange, request)
    assert exchange.trace_id == f"{TRACE_ID:032x}"
    sent = dict(request.headers)
    if "traceparent" in sent:
        assert sent["traceparent"].startswith(f"00-{TRACE_ID:032x}-")
        assert sent["traceparent"][-2:] in ("00", "02")
    if "b3" in sent:
        assert sent["b3"].startswith(f"{TRACE_ID:032x}-")
        assert sent["b3"].endswith("-0")
    if "x-b3-traceid" in sent:
        assert (sent["x-b3-traceid"], sent["x-b3-sampled"]) == (f"{TRACE_ID:032x}", "0")
    assert f"{SPAN_ID:016x}" not in str(request.headers.multi_items())  # a span id of its own
    assert len(request.headers.get_list("traceparent") + request.headers.get_list("b3")) <= 2  # replaced
    Observers([observer]).finished(exchange)
    assert observer.flush()
    assert observer.stats()["spans"] == 0


@pytest.mark.anyio
async def test_every_try_of_a_dropped_new_trace_carries_its_headers_once(
    make_mesh: MakeMesh, collector: ZipkinCollector, respx_mock: respx.MockRouter
) -> None:
    """Through the engine: a retry resends its request and a hedge copies the route's; each carries one set."""
    sent: list[httpx.Request] = []
    slow = "127.0.0.1:9101"

    async def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.netloc.decode() == slow:
            await anyio.sleep(0.5)  # outrun by the hedge, then cancelled
        return httpx.Response(503 if request.url.path == "/fail" else 200)

    respx_mock.route(host="127.0.0.1").mock(side_effect=answer)
    config = {
        **_config(collector, sampling=0.0, propagation=["tracecontext", "b3"]),
        "clusters": {
            "retrying": {"endpoints": ["http://127.0.0.1:9102"], "retry": {"attempts": 3, "retry_on": ["5xx"]}},
            "hedged": {"endpoints": [f"http://{slow}", "http://127.0.0.1:9103"], "hedge": {"after": "20ms"}},
        },
    }
    mesh = make_mesh(config)
    async with mesh.async_client() as client:
        assert (await client.get("http://retrying/fail")).status_code == 503
        retried, sent[:] = list(sent), []
        assert (await client.get("http://hedged/ok")).status_code == 200
        hedged = list(sent)
    for tries in (retried, hedged):
        assert len(tries) >= 2
        ids = set()
        for request in tries:
            assert len(request.headers.get_list("traceparent")) == len(request.headers.get_list("b3")) == 1
            trace_id = request.headers["traceparent"].split("-")[1]
            assert request.headers["traceparent"].endswith("-02")
            assert request.headers["b3"] == f"{trace_id}-{request.headers['traceparent'].split('-')[2]}-0"
            ids.add(trace_id)
        assert len(ids) == 1  # one trace: every try of the request


@given(st.lists(st.sampled_from([b"host", b"accept", b"b3x", b"tracer", b"x-b3", b"x-request-id", b""]), max_size=6))
def test_a_trace_header_is_found_among_a_request_s_headers_whatever_else_it_carries(others: list[bytes]) -> None:
    for name in _TRACE_HEADERS_RAW:
        for at in (0, len(others)):
            names = [*others[:at], name, *others[at:]]
            assert _has_trace_header([(n.upper(), n, b"v") for n in names])
    assert not _has_trace_header([(n.upper(), n, b"v") for n in others])
