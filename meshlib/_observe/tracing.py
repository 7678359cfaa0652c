"""Tracing: an OpenTelemetry span per request and per try, exported to Zipkin off the request path.

Built only for a config with ``tracing:`` (this is the one module that imports
OpenTelemetry). Each mesh gets its own ``TracerProvider``, never the global
one, so an app's own tracing setup is left alone. Outbound requests get a
CLIENT span with a child per try, and each try's request carries the try's
context in every configured header format; inbound requests get a SERVER
span whose parent is extracted from the first configured format present,
made current while an ASGI/WSGI app runs so the app's own mesh calls become
its children. Ended spans go to a bounded queue that a background thread
exports: a collector that is down or slow costs dropped spans (counted in
``stats()``), never a request's time.
"""

from __future__ import annotations

import atexit
import binascii
import contextvars
import functools
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import httpx
from opentelemetry import context as otel_context, trace
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span as SdkSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

from meshlib.__version__ import __version__
from meshlib._observe.exchange import Exchange, Try
from meshlib._observe.observers import Observer

if TYPE_CHECKING:
    from meshlib._config.models import MeshConfig
    from meshlib._config.observability import TracingConfig
    from meshlib._snapshot.compile import Runtime

__all__ = ["TracingObserver", "build"]

logger = logging.getLogger("meshlib.observe")

# Ids come from the generator the SDK's RandomIdGenerator draws from (the random module's), but for the new outbound
# traces the engine starts without a parent span (see _new_ids).
_random_bits: Final = random.getrandbits
_hexlify: Final = binascii.hexlify


def _bound_digits(bound: int) -> bytes:
    """TraceIdRatioBased's bound as hex digits that compare with a trace id's low 16 (lower-case) digits as the
    numbers do: below 2**64, its 16 digits; at 2**64 (every trace sampled), "g", after every digit."""
    return b"%016x" % bound if bound < 1 << 64 else b"g"


# New traces' ids, drawn ahead _POOLED at a time, each in the form root_entries takes (the traceparent of a new
# trace the sampler dropped). From os.urandom, not the random module the SDK's RandomIdGenerator uses: a batch
# costs one system call and one hexlify, where the random module's big-number draw and its to_bytes cost more than
# the ids' own formatting (about 1,300 instructions an id, by callgrind); W3C trace context's random flag asks for
# random ids, which these are the more. A batch with 8 zero bytes in a row anywhere is drawn again: no id is ever
# all zeros (invalid). A forked child empties the pool: it must not send its parent's ids.
_POOLED: Final = 256
_ZEROS: Final = bytes(8)
_id_pool: Final[list[bytes]] = []
os.register_at_fork(after_in_child=_id_pool.clear)
_urandom: Final = os.urandom


def _new_ids() -> bytes:
    """A new trace's ids: the traceparent ``00-{trace id}-{span id}-02`` of fresh random ids."""
    pool = _id_pool
    while True:
        try:
            return pool.pop()  # atomic: threads never share one
        except IndexError:
            pass
        drawn = _urandom(24 * _POOLED)
        if drawn.find(_ZEROS) >= 0:
            continue
        digits = _hexlify(drawn)
        pool.extend(
            [b"00-%b-%b-02" % (digits[at : at + 32], digits[at + 32 : at + 48]) for at in range(0, 48 * _POOLED, 48)]
        )


# How long close() waits for queued spans to reach the collector: a mesh (or a sidecar's drain) must close promptly.
CLOSE_TIMEOUT: Final = 1.0
_MAX_EXPORT_BATCH: Final = 512  # BatchSpanProcessor's default, capped by the queue size

# Every header a format writes, and those that only go with one (parent span id, flags): all are replaced on
# injection, so a request never carries two contexts (one stale) in different formats.
_FORMAT_HEADERS: Final[dict[str, tuple[str, ...]]] = {
    "tracecontext": ("traceparent", "tracestate"),
    "b3": ("b3",),
    "b3multi": ("x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags"),
}
_TRACE_HEADERS: Final = frozenset(name for names in _FORMAT_HEADERS.values() for name in names)
_TRACE_HEADERS_RAW: Final = frozenset(name.encode() for name in _TRACE_HEADERS)
# The header whose presence says a format was sent (B3 multi needs its trace id; the sampled flag alone is no context).
_PRESENCE: Final = {"tracecontext": "traceparent", "b3": "b3", "b3multi": "x-b3-traceid"}

# OpenTelemetry HTTP semantic conventions: methods other than these are recorded as _OTHER.
_KNOWN_METHODS: Final = frozenset(("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"))
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

_ROOT: Final = otel_context.Context()  # no parent: a new trace
# What the SDK gives a root span its sampler dropped: not sampled, its trace id random (W3C trace context level 2).
_UNSAMPLED_ROOT: Final = TraceFlags(TraceFlags.RANDOM_TRACE_ID)
# A SpanContext is a tuple (trace id, span id, is remote, flags, trace state, is valid), and its properties read it
# by index: a Python call each, where the index is one C step. A sampled request reads a dozen of them.
_TRACE_ID: Final = 0
_SPAN_ID: Final = 1
_FLAGS: Final = 3
_STATE: Final = 4


def _span_id() -> int:
    """A span id as RandomIdGenerator draws one (its method is a Python call per span)."""
    span_id = _random_bits(64)
    while span_id == trace.INVALID_SPAN_ID:
        span_id = _random_bits(64)
    return span_id


def _context_getter() -> Callable[[], otel_context.Context]:
    """otel_context.get_current without its two Python calls: the default runtime context's contextvar's own get
    (a C method), else (OTEL_PYTHON_CONTEXT names another runtime context) that context's get_current."""
    runtime = otel_context._RUNTIME_CONTEXT
    var = getattr(runtime, "_current_context", None)
    if isinstance(var, contextvars.ContextVar):
        getter: Callable[[], otel_context.Context] = var.get
        return getter
    return runtime.get_current


_current_context: Final = _context_getter()
CLIENT: Final = SpanKind.CLIENT
SERVER: Final = SpanKind.SERVER
# Set with the attached context in an inbound door: finished() detaches only in the context it attached in.
_ATTACHED: contextvars.ContextVar[object] = contextvars.ContextVar("meshlib_trace_attached")


def _has_trace_header(entries: list[tuple[bytes, bytes, bytes]]) -> bool:
    """Whether httpx's header entries hold a trace header (compiled: a loop, cheaper than a set test of a map)."""
    return any(entry[1] in _TRACE_HEADERS_RAW for entry in entries)


def _propagator(name: str) -> TextMapPropagator:
    if name == "tracecontext":
        return TraceContextTextMapPropagator()
    if name == "b3":
        return B3SingleFormat()
    return B3MultiFormat()


def _host_port(authority: str, scheme: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets) → host and port, the scheme's default port when none is given."""
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit() and (not host.startswith("[") or host.endswith("]")):
        return host.strip("[]"), int(port)
    return authority.strip("[]"), _DEFAULT_PORTS.get(scheme)


def _method_attributes(method: str) -> dict[str, Any]:
    if method in _KNOWN_METHODS:
        return {"http.request.method": method}
    return {"http.request.method": "_OTHER", "http.request.method_original": method}


def trace_headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str] | None:
    """The trace headers among raw ``headers`` (lower-case names; the first of a repeated one), None if none."""
    found: dict[str, str] | None = None
    for name, value in headers:
        lowered = name.lower()
        if lowered in _TRACE_HEADERS_RAW:
            if found is None:
                found = {}
            # A repeated header: the first one counts, as OpenTelemetry's getters read it.
            found.setdefault(lowered.decode("ascii"), value.decode("latin-1"))
    return found


class Propagation:
    """The configured header formats: all injected on a try's request, the first one present extracted."""

    __slots__ = ("_default", "_formats", "_names")

    def __init__(self, names: Sequence[str]) -> None:
        self._names = tuple(names)
        self._default = self._names == ("tracecontext", "b3")  # the config's default: root_entries in one step
        self._formats = tuple((_PRESENCE[name], _FORMAT_HEADERS[name], _propagator(name)) for name in names)

    def extract(self, found: dict[str, str] | None) -> otel_context.Context | None:
        """The remote parent in the first configured format present in ``found`` and well formed, else None."""
        if found is None:
            return None
        for presence, names, propagator in self._formats:
            if presence not in found:
                continue
            # Only this format's headers: B3 multi's extractor would otherwise prefer a single b3 header.
            carrier = {key: found[key] for key in names if key in found}
            ctx = propagator.extract(carrier, _ROOT)
            if trace.get_current_span(ctx).get_span_context().is_valid:
                return ctx
        return None

    def inject(self, headers: httpx.Headers, context: SpanContext, *, replace: bool) -> None:
        """Write ``context`` into ``headers`` in every configured format; ``replace`` first removes trace headers there.

        The values are those OpenTelemetry's propagators write (tests/observe/test_tracing_fast_paths.py compares them
        for every format), formatted here: through the propagators, two formats cost about 8 µs a request, most of
        the unsampled request's share of the observability budget. They go straight into the headers' list
        (httpx's ``(raw name, lower-case name, value)`` entries, what ``Headers.__setitem__`` appends after its
        search for an existing name): the trace headers were just removed, so there is none to find.
        """
        entries: list[tuple[bytes, bytes, bytes]] = headers._list
        if replace:
            kept = [entry for entry in entries if entry[1] not in _TRACE_HEADERS_RAW]
            if len(kept) != len(entries):
                entries[:] = kept
        # SpanContext's fields by index (see _TRACE_ID): its properties are Python calls.
        trace_id = b"%032x" % context[_TRACE_ID]
        span_id = b"%016x" % context[_SPAN_ID]
        flags = context[_FLAGS]
        sampled = b"1" if flags & TraceFlags.SAMPLED else b"0"
        for name in self._names:
            if name == "tracecontext":
                entries.append((b"traceparent", b"traceparent", b"00-%b-%b-%02x" % (trace_id, span_id, flags)))
                trace_state = context[_STATE]
                # Most contexts hold the API's shared empty state: no Python __len__ call to tell.
                if trace_state is not DEFAULT_TRACE_STATE and trace_state:
                    state = trace_state.to_header().encode("latin-1")
                    entries.append((b"tracestate", b"tracestate", state))
            elif name == "b3":
                entries.append((b"b3", b"b3", b"%b-%b-%b" % (trace_id, span_id, sampled)))
            else:
                entries.append((b"x-b3-traceid", b"x-b3-traceid", trace_id))
                entries.append((b"x-b3-spanid", b"x-b3-spanid", span_id))
                entries.append((b"x-b3-sampled", b"x-b3-sampled", sampled))

    def root_entries(self, ids: bytes) -> tuple[tuple[bytes, bytes, bytes], ...]:
        """The header entries of a new trace the sampler dropped, in every configured format: ``ids``, its
        traceparent ``00-{trace id}-{span id}-02`` (as :func:`_new_ids` draws them).

        What :meth:`inject` writes for flags 02 (the W3C random-trace-id flag, not sampled: what the SDK gives a root
        span its sampler dropped), sliced from ``ids`` rather than formatted: this runs on most requests at a low
        ratio. B3's single header is ``{trace id}-{span id}-0``: ``ids`` less its first 3 and last character.
        """
        if self._default:
            return ((b"traceparent", b"traceparent", ids), (b"b3", b"b3", ids[3:-1]))
        entries: list[tuple[bytes, bytes, bytes]] = []
        for name in self._names:
            if name == "tracecontext":
                entries.append((b"traceparent", b"traceparent", ids))
            elif name == "b3":
                entries.append((b"b3", b"b3", ids[3:-1]))
            else:
                entries.append((b"x-b3-traceid", b"x-b3-traceid", ids[3:35]))
                entries.append((b"x-b3-spanid", b"x-b3-spanid", ids[36:52]))
                entries.append((b"x-b3-sampled", b"x-b3-sampled", b"0"))
        return tuple(entries)


class _ExportCounter(SpanExporter):
    """Wraps the Zipkin exporter: counts what it exported and what it failed, and never lets it raise."""

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter
        self._lock = threading.Lock()
        self.exported = 0
        self.failed = 0
        self.last_error: str | None = None
        self._stop_at: float | None = None
        # Called with the size of each batch taken from the queue (the queue's own count goes down by that).
        self.on_batch: Callable[[int], None] | None = None

    def stop_after(self, deadline: float) -> None:
        """Past ``deadline`` (monotonic), batches still queued are failed at once: close() must not wait for them."""
        self._stop_at = deadline

    def _fail(self, count: int, why: str) -> SpanExportResult:
        with self._lock:
            self.failed += count
            first = self.last_error is None
            self.last_error = why
        # The first failure is worth a warning; a collector that stays down must not flood the log.
        logger.log(logging.WARNING if first else logging.DEBUG, "tracing: %d spans not exported: %s", count, why)
        return SpanExportResult.FAILURE

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        count = len(spans)
        if self.on_batch is not None:
            self.on_batch(count)
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            return self._fail(count, "the mesh closed before they were exported")
        try:
            result = self._exporter.export(spans)
        except Exception as exc:  # requests' ConnectionError, Timeout, ...: the collector is down or slow
            return self._fail(count, f"{type(exc).__name__}: {exc}")
        if result is not SpanExportResult.SUCCESS:
            return self._fail(count, "the collector refused them (see the exporter's log)")
        with self._lock:
            self.exported += count
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _BoundedProcessor(SpanProcessor):
    """A BatchSpanProcessor whose queue bound is kept (and its overflow counted) here.

    The count of queued spans goes up as a span is handed over and down as
    the exporter takes a batch, so it is never below the real queue's length:
    a span is refused (and counted dropped) before the batch processor would
    have to drop one itself, and nothing is dropped uncounted.
    """

    def __init__(self, exporter: _ExportCounter, max_queue_size: int) -> None:
        self._exporter = exporter
        self._max = max_queue_size
        self._lock = threading.Lock()
        self.queued = 0
        self.ended = 0
        self.dropped_queue_full = 0
        self.dropped_closed = 0
        self._closed = False
        exporter.on_batch = self._taken
        self._batch = BatchSpanProcessor(
            exporter, max_queue_size=max_queue_size, max_export_batch_size=min(_MAX_EXPORT_BATCH, max_queue_size)
        )
        # BatchSpanProcessor.on_end tests the sampled flag again (Python property reads) before its queue's emit: a
        # span that passed the test here goes to that emit when the SDK has it.
        inner = getattr(self._batch, "_batch_processor", None)
        self._emit: Callable[[Any], object] = getattr(inner, "emit", None) or self._batch.on_end

    def _taken(self, count: int) -> None:
        with self._lock:
            self.queued -= count

    def on_start(self, span: SdkSpan, parent_context: otel_context.Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled:
            return
        self.queue(span)

    def queue(self, span: ReadableSpan | _Recorded) -> None:
        """Queue a span known to be sampled (the tracing observer's records), or count it dropped."""
        with self._lock:
            self.ended += 1
            if self._closed:
                self.dropped_closed += 1
                return
            if self.queued >= self._max:
                self.dropped_queue_full += 1
                return
            self.queued += 1
        self._emit(span)

    def shutdown(self, timeout: float = CLOSE_TIMEOUT) -> None:
        with self._lock:
            self._closed = True
        deadline = time.monotonic() + timeout
        self._exporter.stop_after(deadline)
        # BatchSpanProcessor.shutdown waits up to 30 s for its worker (and one slow export can take the exporter's
        # whole timeout): run it aside and wait only until the deadline. Whatever is still queued then is dropped.
        worker = threading.Thread(target=self._batch.shutdown, name="meshlib-tracing-shutdown", daemon=True)
        try:
            worker.start()
        except RuntimeError:  # interpreter shutdown (3.12+ starts no threads): wait here, for one export at most
            self._batch.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated
            return
        worker.join(max(deadline - time.monotonic(), 0.0))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._batch.force_flush(timeout_millis)


class _DrawnIds(RandomIdGenerator):
    """The SDK's random ids, except that a trace id drawn ahead to decide sampling is the one the SDK then uses."""

    def __init__(self) -> None:
        self._drawn = threading.local()

    def draw(self, trace_id: int) -> None:
        self._drawn.trace_id = trace_id

    def generate_trace_id(self) -> int:
        drawn: int | None = getattr(self._drawn, "trace_id", None)
        if drawn is None:
            return super().generate_trace_id()
        self._drawn.trace_id = None
        return drawn


_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_SAMPLED_RANDOM: Final = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
_UNSET_STATUS: Final = Status(StatusCode.UNSET)


class _Recorded(trace.Span):
    """An outbound span of a sampled request, kept as plain data while the request runs; ending it hands one SDK
    ``ReadableSpan`` to the provider's span processors, or (the export's processor alone, the usual case) itself.

    What ``Tracer.start_span`` would make for the same sampled span (ids, flags, trace state, parent, resource,
    scope, attributes, status, times: tests/observe/test_tracing_fast_paths.py compares them), without the SDK's
    live span on the request path: its lock, its attribute checks one value at a time, its tracer metrics. A
    request sampled at a low ratio runs that path rarely, and cold it cost about three times what it costs in a
    loop (docs/performance.md, Observability). Attribute values here are the tracing observer's own: strings and
    numbers, within the SDK's limits.

    Ended, it reads as the ``ReadableSpan`` it stands for (``context``, ``name``, ``attributes``, ``resource``...:
    what the Zipkin exporter and its encoder read), so the export's queue takes it as it is: making that
    ``ReadableSpan`` was a Python constructor of a dozen arguments per span on the request path.
    """

    def __init__(
        self, observer: TracingObserver, name: str, context: SpanContext, parent: SpanContext | None, kind: SpanKind
    ) -> None:
        self._observer = observer
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes: dict[str, Any] = {}
        self._events: list[Any] = []
        self._status = _UNSET_STATUS
        self._start = time.time_ns()
        self._end: int | None = None

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end is None

    def set_attributes(self, attributes: Any) -> None:
        if self._end is None:
            self._attributes.update(attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        if self._end is None:
            self._attributes[key] = value

    def add_event(self, name: str, attributes: Any = None, timestamp: int | None = None) -> None:
        from opentelemetry.sdk.trace import Event

        if self._end is None:
            self._events.append(Event(name, attributes, timestamp if timestamp is not None else time.time_ns()))

    def update_name(self, name: str) -> None:
        if self._end is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK's span: OK is final, and UNSET changes nothing.
        if self._end is not None or self._status.status_code is StatusCode.OK:
            return
        found = status if isinstance(status, Status) else Status(status, description)
        if found.status_code is not StatusCode.UNSET:
            self._status = found

    def record_exception(
        self, exception: BaseException, attributes: Any = None, timestamp: int | None = None, escaped: bool = False
    ) -> None:
        found = {"exception.type": type(exception).__name__, "exception.message": str(exception)}
        self.add_event("exception", {**found, **(attributes or {})}, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end is not None:
            return
        self._end = end_time if end_time is not None else time.time_ns()
        self._observer._ended(self)

    # ReadableSpan's reads, for the export (the ended span's fields; the resource and scope are the provider's).

    @property
    def context(self) -> SpanContext:
        return self._context

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> SpanKind:
        return self._kind

    @property
    def parent(self) -> SpanContext | None:
        return self._parent

    @property
    def start_time(self) -> int:
        return self._start

    @property
    def end_time(self) -> int | None:
        return self._end

    @property
    def attributes(self) -> dict[str, Any]:
        return self._attributes

    @property
    def events(self) -> tuple[Any, ...]:
        return tuple(self._events)

    @property
    def links(self) -> tuple[Any, ...]:
        return ()

    @property
    def status(self) -> Status:
        return self._status

    @property
    def resource(self) -> Resource:
        return self._observer._resource

    @property
    def instrumentation_scope(self) -> Any:
        return self._observer._scope

    @property
    def dropped_attributes(self) -> int:
        return 0

    @property
    def dropped_events(self) -> int:
        return 0

    @property
    def dropped_links(self) -> int:
        return 0

    def readable(self, resource: Resource, scope: Any) -> ReadableSpan:
        """The SDK's record of this span, as its own span's ``end()`` would give the processor."""
        return ReadableSpan(
            name=self._name,
            context=self._context,
            parent=self._parent,
            resource=resource,
            attributes=self._attributes,
            events=tuple(self._events),
            kind=self._kind,
            status=self._status,
            start_time=self._start,
            end_time=self._end,
            instrumentation_scope=scope,
        )


class _Outbound:
    """An outbound request's span, or for a new trace the sampler dropped no span at all but the ids its tries'
    headers carry (``ids``, as :func:`_new_ids` draws them; ``span`` None: only where the caller's trace headers must
    be replaced on each try); and whether the caller's request may have come with trace headers (to be replaced)."""

    __slots__ = ("caller_headers", "ids", "span")

    def __init__(self, span: trace.Span | None, caller_headers: bool, ids: bytes = b"") -> None:
        self.span = span
        self.caller_headers = caller_headers
        self.ids = ids


class TracingObserver(Observer):
    """Makes the spans of each request with one mesh's own tracer provider, and propagates their context."""

    name = "tracing"
    # try_started, try_ended and finished only for what holds an _Outbound: a new trace the sampler dropped (most
    # requests at a low ratio) has its headers added once by the engine (Exchange.inject), and costs no more calls.
    slotted = True

    def __init__(self, section: TracingConfig, config: MeshConfig, runtime: Runtime) -> None:
        self.section = section
        self.service_name = section.service_name or config.service
        self._registry = runtime.registry
        self.propagation = Propagation(section.propagation)
        self._processor: _BoundedProcessor | None = None
        self._exporter: _ExportCounter | None = None
        self._ratio = TraceIdRatioBased(section.sampling)
        self._bound_digits = _bound_digits(self._ratio.bound)  # a property: read once
        self._bound_lead = self._bound_digits[0]
        self._ids = _DrawnIds()
        # Never registered as the global provider, and not shut down at exit by OpenTelemetry: Mesh.close() does it.
        self.provider = TracerProvider(
            sampler=ParentBased(self._ratio),
            resource=Resource.create({SERVICE_NAME: self.service_name}),
            shutdown_on_exit=False,
            id_generator=self._ids,
        )
        if section.zipkin is not None:
            import requests
            from opentelemetry.exporter.zipkin.json import ZipkinExporter

            from meshlib._observe.zipkin_json import ZipkinJsonEncoder

            # Straight to the configured endpoint: an HTTP_PROXY meant for the app's own calls (a sidecar, say)
            # must not carry the mesh's spans, which that proxy would trace in turn.
            session = requests.Session()
            session.trust_env = False
            # The timeout goes to requests, which takes fractions of a second (the annotation says int).
            timeout: Any = section.zipkin.timeout
            zipkin = ZipkinExporter(endpoint=section.zipkin.endpoint, timeout=timeout, session=session)
            # The same JSON (less the stock "debug": true) at a fraction of the export thread's CPU: zipkin_json.py.
            stock: Any = zipkin.encoder  # typed as the V1 encoder, whose int limit is None here (no limit)
            zipkin.encoder = ZipkinJsonEncoder(stock.max_tag_value_length)  # type: ignore[assignment]
            self._exporter = _ExportCounter(zipkin)
            self._processor = _BoundedProcessor(self._exporter, section.max_queue_size)
            self.provider.add_span_processor(self._processor)
        self.tracer = self.provider.get_tracer("meshlib", __version__)
        # Where the provider's own spans go when they end (SynchronousMultiSpanProcessor): recorded spans go there too.
        self._active: Any = getattr(self.provider, "_active_span_processor", None)
        # The scope and resource the SDK's own spans carry: an outbound span made here carries the same objects.
        self._scope: Any = getattr(self.tracer, "_instrumentation_scope", None)
        self._resource = self.provider.resource
        self._closed = False
        # A mesh never closed still sends its last spans when the process exits. The exit hook holds the span
        # processor weakly (no leak until then); not this observer, which compiled (mypyc) takes no weak reference.
        self._at_exit: functools.partial[None] | None = None
        if self._processor is not None:
            self._at_exit = functools.partial(_close_at_exit, weakref.ref(self._processor))
            atexit.register(self._at_exit)

    def _start_span(self, name: str, parent: otel_context.Context, kind: SpanKind) -> trace.Span:
        """``tracer.start_span``, except that a span the sampler drops is made here, as the SDK would make it.

        An unsampled span is most requests' (at ``sampling: 0.01``) and the SDK takes about 6 µs to make one; the
        decisions stay the sampler's: ParentBased follows a valid parent's flag, and a root's trace id is drawn
        here and tested with TraceIdRatioBased's own bound, then handed to the SDK (``_DrawnIds``) when sampled.
        tests/observe/test_tracing_fast_paths.py checks both paths against a plain SDK tracer.
        """
        parent_context = trace.get_current_span(parent).get_span_context()
        if parent_context.is_valid:
            if parent_context.trace_flags.sampled:
                return self.tracer.start_span(name, parent, kind)
            flags = TraceFlags(parent_context.trace_flags & TraceFlags.RANDOM_TRACE_ID)
            return NonRecordingSpan(
                SpanContext(parent_context[_TRACE_ID], _span_id(), False, flags, parent_context[_STATE])
            )
        # RandomIdGenerator's ids, drawn here: through the generator (a thread-local and a super() call) they
        # cost a microsecond more, on every request a ratio below 1 leaves unsampled.
        trace_id = _random_bits(128)
        while trace_id == trace.INVALID_TRACE_ID:
            trace_id = _random_bits(128)
        if trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < self._ratio.bound:
            self._ids.draw(trace_id)
            return self.tracer.start_span(name, parent, kind)
        return NonRecordingSpan(SpanContext(trace_id, _span_id(), False, _UNSAMPLED_ROOT))

    # Outbound: a CLIENT span per request, an INTERNAL child per try whose context each try's request carries.

    def _recorded(
        self, name: str, trace_id: int, parent: SpanContext | None, kind: SpanKind = SpanKind.INTERNAL
    ) -> _Recorded:
        """A sampled outbound span (the sampler's decision already taken): a new root when ``parent`` is None."""
        span_id = _span_id()
        if parent is None:
            # A root on a trace id drawn at random (RandomIdGenerator's): the W3C random flag, as the SDK sets it.
            return _Recorded(self, name, SpanContext(trace_id, span_id, False, _SAMPLED_RANDOM), None, kind)
        # ParentBased follows the sampled parent and keeps its trace state; the random flag is the parent's.
        flags = _SAMPLED_RANDOM if parent[_FLAGS] & TraceFlags.RANDOM_TRACE_ID else _SAMPLED
        return _Recorded(self, name, SpanContext(trace_id, span_id, False, flags, parent[_STATE]), parent, kind)

    def _ended(self, span: _Recorded) -> None:
        # The provider's span processors, as an SDK span's end() tells them: the export's alone (the usual case)
        # is called straight, and one added to the provider (a test's, say) hears of the span too.
        active, processor = self._active, self._processor
        processors: tuple[Any, ...] = (processor,) if active is None else active._span_processors
        if len(processors) == 1 and processor is not None and processors[0] is processor:
            processor.queue(span)  # it reads as the ReadableSpan it stands for: see _Recorded
        elif processors and active is not None:
            active.on_end(span.readable(self._resource, self._scope))

    def _start_outbound(self, name: str, parent: otel_context.Context) -> trace.Span:
        """An outbound request's CLIENT span under ``parent``: recorded when sampled, as :meth:`_start_span` decides."""
        parent_context = trace.get_current_span(parent).get_span_context()
        if parent_context.is_valid and parent_context.trace_flags.sampled:
            return self._recorded(name, parent_context.trace_id, parent_context, CLIENT)
        return self._start_span(name, parent, CLIENT)  # an unsampled one, or a new trace: the sampler decides

    def _outbound_parent(self, exchange: Exchange) -> tuple[otel_context.Context, bool]:
        """The parent of an outbound request's span, and whether the request may carry trace headers to replace."""
        if exchange.door != "sidecar":
            current = _current_context()
            # An empty context (most callers') has no span: no need to ask it for one.
            if current and trace.get_current_span(current).get_span_context().is_valid:
                # The caller's headers are not read here (an exchange reads them only when asked): the first try
                # looks for trace headers to replace instead.
                return current, True
        # The sidecar's task has no context of the app's: the app propagated its trace in the headers, or none.
        # In process, a caller without a current span may have forwarded the trace headers it received.
        if not exchange.has_any_header(_TRACE_HEADERS_RAW):
            return _ROOT, False
        sent = trace_headers(exchange.headers)
        return self.propagation.extract(sent) or _ROOT, sent is not None

    def _start_client(self, exchange: Exchange, drawn: int = 0) -> None:
        """An outbound request's span; ``drawn``: started() found no parent and drew this (sampled) trace id."""
        if drawn:
            # Recorded on the very trace id the decision was taken on.
            self._client_span(
                exchange, self._recorded(f"{exchange.method} {exchange.route}", drawn, None, CLIENT), False
            )
            return
        parent, caller_headers = self._outbound_parent(exchange)
        if parent is _ROOT:
            # A new trace: the sampler's decision first (as _start_span takes it), and for most requests at a
            # low ratio, no span at all: its tries carry fresh ids with the sampled flag off, as the SDK's
            # NonRecordingSpan would (tests/observe/test_tracing_fast_paths.py compares them).
            # The ids started() draws, and its decision on them.
            ids = _new_ids()
            if not self._samples(ids):
                exchange._trace_id = ids
                if caller_headers:
                    # The caller's trace headers held no valid context: each try's request replaces them.
                    exchange.slots[self] = _Outbound(None, True, ids)
                else:
                    exchange.inject = self.propagation.root_entries(ids)
                return
            span: trace.Span = self._recorded(f"{exchange.method} {exchange.route}", int(ids[3:35], 16), None, CLIENT)
        else:
            span = self._start_outbound(f"{exchange.method} {exchange.route}", parent)
        self._client_span(exchange, span, caller_headers)

    def _client_span(self, exchange: Exchange, span: trace.Span, caller_headers: bool) -> None:
        exchange.slots[self] = _Outbound(span, caller_headers)
        exchange.trace_id = f"{span.get_span_context()[_TRACE_ID]:032x}"
        if span.is_recording():
            host, port = _host_port(exchange.authority, exchange.scheme)
            attributes = _method_attributes(exchange.method)
            attributes["url.full"] = f"{exchange.scheme}://{exchange.authority}{exchange.path}"
            attributes["server.address"] = host
            if port is not None:
                attributes["server.port"] = port
            if exchange.route is not None:
                attributes["meshlib.route"] = exchange.route
            if exchange.request_id is not None:
                attributes["meshlib.request_id"] = exchange.request_id
            span.set_attributes(attributes)

    def try_started(self, exchange: Exchange, attempt: Try, request: httpx.Request) -> None:
        # Called only for an exchange holding an _Outbound (slotted): a new trace the sampler dropped without
        # trace headers from the caller had its headers added once, to the request every try is made from.
        outbound: _Outbound | None = exchange.slots.get(self)
        if outbound is None:
            return
        span = outbound.span
        replace = outbound.caller_headers or len(exchange.tries) > 1
        if span is None:  # a new trace the sampler dropped, replacing the caller's trace headers
            entries: list[tuple[bytes, bytes, bytes]] = request.headers._list
            if replace:
                entries[:] = [entry for entry in entries if entry[1] not in _TRACE_HEADERS_RAW]
            entries.extend(self.propagation.root_entries(outbound.ids))
            return
        if not span.is_recording():
            # An unsampled trace records nothing: its tries carry the request span's context (trace id, sampled=0).
            self.propagation.inject(request.headers, span.get_span_context(), replace=replace)
            return
        parent = span.get_span_context()
        child = self._recorded(f"try {attempt.attempt}", parent[_TRACE_ID], parent)
        attempt.slots[self] = child
        url = request.url
        attributes = _method_attributes(request.method)
        attributes["url.full"] = str(url)
        attributes["server.address"] = url.host
        attributes["meshlib.try"] = attempt.attempt
        port = url.port or _DEFAULT_PORTS.get(url.scheme)
        if port is not None:
            attributes["server.port"] = port
        if attempt.cluster is not None:
            attributes["meshlib.cluster"] = attempt.cluster
            breaker = self._registry.get("circuit_breaker", attempt.cluster)
            # A shared (Redis) breaker's state is a network read: not worth a round trip on the request path.
            if breaker is not None and not breaker.shared:
                attributes["meshlib.breaker_state"] = breaker.state
        if attempt.endpoint is not None:
            attributes["meshlib.endpoint"] = attempt.endpoint
        if attempt.reason is not None:
            attributes["meshlib.retry_reason"] = attempt.reason
        child.set_attributes(attributes)
        self.propagation.inject(request.headers, child.get_span_context(), replace=replace)

    def try_ended(self, exchange: Exchange, attempt: Try) -> None:
        child = attempt.slots.pop(self, None)
        if child is None:
            return
        _set_outcome(child, attempt.status, attempt.error, server=False)
        child.end()

    # Inbound: a SERVER span, current while an ASGI/WSGI app runs.

    def _start_server(self, exchange: Exchange) -> None:
        parent = self.propagation.extract(trace_headers(exchange.headers)) or _ROOT
        span = self._start_span(exchange.method, parent, SERVER)
        exchange.trace_id = f"{span.get_span_context().trace_id:032x}"
        token = mark = None
        if exchange.door != "sidecar":
            # The app's own mesh calls, made in this context, become this span's children.
            token = otel_context.attach(trace.set_span_in_context(span, _ROOT))
            mark = _ATTACHED.set(token)
        exchange.slots[self] = (span, token, mark)
        if span.is_recording():
            host, port = _host_port(exchange.authority, exchange.scheme)
            path, _, query = exchange.path.partition("?")
            attributes = _method_attributes(exchange.method)
            attributes["url.scheme"] = exchange.scheme
            attributes["url.path"] = path
            if query:
                attributes["url.query"] = query
            attributes["server.address"] = host
            if port is not None:
                attributes["server.port"] = port
            if exchange.user_agent is not None:
                attributes["user_agent.original"] = exchange.user_agent
            if exchange.request_id is not None:
                attributes["meshlib.request_id"] = exchange.request_id
            attributes["meshlib.door"] = exchange.door
            span.set_attributes(attributes)

    def forwarding(self, exchange: Exchange, request: httpx.Request) -> None:
        # The sidecar's inbound door passes the request on: the app's own calls become this server span's children,
        # as behind Envoy (it writes its span into the request it forwards).
        found = exchange.slots.get(self)
        if found is not None:
            self.propagation.inject(request.headers, found[0].get_span_context(), replace=True)

    def _samples(self, ids: bytes) -> bool:
        """TraceIdRatioBased's decision on the new trace ``ids`` (from _new_ids), taken on the trace id's low 16 hex
        digits: lower-case hex digits sort as their numbers do. The first digit alone rules most out (at 1%, 15 in
        16) without slicing out all 16: an int, no bytes made."""
        return ids[19] <= self._bound_lead and ids[19:35] < self._bound_digits

    def started(self, exchange: Exchange) -> None:
        if exchange.direction != "outbound":
            self._start_server(exchange)
            return
        # Most requests: no current span (an empty context, or the sidecar's), no trace headers from the caller,
        # and at a low ratio, not sampled. Their decision is taken here first, on a fresh random trace id, with
        # TraceIdRatioBased's own bound; nothing else is made: their tries carry the ids in their headers with the
        # sampled flag off, as an SDK NonRecordingSpan's would (tests/observe/test_tracing_fast_paths.py compares
        # them). Every step counts here: this runs on each
        # request, where a bytecode costs about three times what it does in a micro-benchmark.
        if exchange.door != "sidecar" and _current_context():
            self._start_client(exchange)  # a current context may hold a span: the general path
            return
        request = exchange._request
        if request is None or exchange._headers is not None:
            if exchange.has_any_header(_TRACE_HEADERS_RAW):
                self._start_client(exchange)
                return
        elif _has_trace_header(request.headers._list):
            self._start_client(exchange)
            return
        # Fresh random ids, drawn ahead in batches (_new_ids), tested as their hex digits: the trace id's low 16, what
        # TraceIdRatioBased tests (lower-case hex digits sort as their numbers do).
        ids = _new_ids()
        if self._samples(ids):
            self._start_client(exchange, int(ids[3:35], 16))
            return
        exchange.inject = self.propagation.root_entries(ids)  # the try hook adds them: no call here per try
        exchange._trace_id = ids  # decoded only if read (the access log's): see Exchange.trace_id

    def finished(self, exchange: Exchange) -> None:
        held = exchange.slots.pop(self, None)
        if held is None:
            return
        if exchange.direction == "outbound":
            span = held.span
            if span is None:  # a new trace the sampler dropped: nothing was made
                return
            for attempt in exchange.tries:  # a try never told its end (cancelled with its request)
                child = attempt.slots.pop(self, None)
                if child is not None:
                    _set_outcome(child, attempt.status, attempt.error or "cancelled", server=False)
                    child.end()
        else:
            span, token, mark = held
            if token is not None:
                _detach(token, mark)
        if span.is_recording():
            attributes: dict[str, Any] = {}
            if exchange.direction == "outbound":
                if exchange.cluster is not None:
                    attributes["meshlib.cluster"] = exchange.cluster
                if exchange.endpoint is not None:
                    attributes["meshlib.endpoint"] = exchange.endpoint
                attributes["meshlib.tries"] = len(exchange.tries)
            else:
                if exchange.peer is not None:
                    attributes["meshlib.peer"] = exchange.peer
                if exchange.denied_by is not None:
                    attributes["meshlib.denied_by"] = exchange.denied_by
            span.set_attributes(attributes)
            _set_outcome(span, exchange.status, exchange.error, server=exchange.direction == "inbound")
        span.end()

    # The exporter's side.

    def flush(self, timeout: float = 5.0) -> bool:
        """Export what is queued now (a test's or a demo's convenience; the background thread does it anyway)."""
        return self.provider.force_flush(int(timeout * 1000))

    def stats(self) -> dict[str, Any]:
        """Spans recorded, exported, dropped (queue full, export failed, after close) and still queued."""
        processor, exporter = self._processor, self._exporter
        if processor is None or exporter is None:
            return {"exporter": None, "sampling": self.section.sampling}
        queue_full, closed = processor.dropped_queue_full, processor.dropped_closed
        return {
            "exporter": "zipkin",
            "sampling": self.section.sampling,
            "spans": processor.ended,
            "exported": exporter.exported,
            "dropped": queue_full + exporter.failed + closed,
            "dropped_queue_full": queue_full,
            "dropped_export_failed": exporter.failed,
            "dropped_after_close": closed,
            "queued": max(processor.queued, 0),
            "last_export_error": exporter.last_error,
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._at_exit is not None:
            atexit.unregister(self._at_exit)
        if self._processor is not None:
            self._processor.shutdown(CLOSE_TIMEOUT)


def _close_at_exit(processor: weakref.ref[_BoundedProcessor]) -> None:
    live = processor()
    if live is not None:
        live.shutdown(CLOSE_TIMEOUT)


def _set_outcome(span: trace.Span, status: int | None, error: str | None, *, server: bool) -> None:
    """The response status and error of a span; ERROR for a 5xx or a failure (a server's 4xx is the client's)."""
    if not span.is_recording():
        return
    attributes: dict[str, Any] = {}
    if status is not None:
        attributes["http.response.status_code"] = status
    failed = status is None or status >= 500 or (error is not None and not server)
    if error is not None:
        attributes["meshlib.error"] = error
    if failed:
        attributes["error.type"] = error or (str(status) if status is not None else "_OTHER")
        span.set_status(Status(StatusCode.ERROR, error or (f"HTTP {status}" if status is not None else None)))
    span.set_attributes(attributes)


def _detach(token: contextvars.Token[otel_context.Context], mark: contextvars.Token[object] | None) -> None:
    """Restore the context an inbound door's started() replaced, when this is that context; else leave it be."""
    if mark is None:
        return
    try:
        _ATTACHED.reset(mark)  # raises when this is another context (or a copy): OpenTelemetry's detach would log
    except (ValueError, RuntimeError):
        return
    otel_context.detach(token)


def build(section: TracingConfig, config: MeshConfig, runtime: Runtime) -> TracingObserver:
    """The tracing observer of a mesh whose config has ``tracing:`` (called by the observer registry)."""
    return TracingObserver(section, config, runtime)
