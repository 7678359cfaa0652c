"""Outbound tracing through the whole engine (respx under it): spans, attributes, propagation, sampling, reloads.

Spans are read the way a user reads them: exported as Zipkin v2 JSON to a
fake collector on a loopback port (the exporter speaks ``requests``, which
respx does not intercept).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import meshlib
from meshlib._config.models import MeshConfig
from meshlib._observe import registry
from meshlib._observe.exchange import Exchange
from meshlib._observe.observers import Observer
from meshlib.testing import FakeClock
from tests.conftest import Caller, MakeMesh
from tests.observe.tracing_helpers import collector, exported, named, tags, tracer_of, tracing
from tests.zipkin_collector import ZipkinCollector

pytestmark = pytest.mark.anyio
__all__ = ["collector"]  # a fixture, imported for the tests below

ENDPOINT = "http://127.0.0.1:9090"
RETRY = {"attempts": 3, "retry_on": ["5xx", "connect-failure"], "backoff": {"base": "1ms", "max": "2ms"}}
ALL_FORMATS = ["tracecontext", "b3", "b3multi"]
# A parent the caller sends: trace id, span id, sampled.
PARENT_TRACE, PARENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def config(endpoint: str | None, *, retry: dict[str, Any] | None = None, **section: Any) -> dict[str, Any]:
    return {
        "service": "frontend",
        "clusters": {"ratings": {"endpoints": [ENDPOINT]}},
        "routes": [
            {"name": "ratings-route", "match": {"host": "ratings"}, "cluster": "ratings", "retry": retry or RETRY}
        ],
        "tracing": tracing(endpoint, **section),
    }


def sent_contexts(request: httpx.Request) -> dict[str, tuple[str, str, str]]:
    """(trace id, span id, sampled) as each format on ``request`` carries it."""
    headers = request.headers
    found: dict[str, tuple[str, str, str]] = {}
    if "traceparent" in headers:
        _, trace_id, span_id, flags = headers["traceparent"].split("-")
        found["tracecontext"] = (trace_id, span_id, str(int(flags, 16) & 1))
    if "b3" in headers:
        trace_id, span_id, sampled = headers["b3"].split("-")
        found["b3"] = (trace_id, span_id, sampled)
    if "x-b3-traceid" in headers:
        found["b3multi"] = (headers["x-b3-traceid"], headers["x-b3-spanid"], headers["x-b3-sampled"])
    return found


async def test_a_request_is_a_client_span_with_a_child_span_per_try(
    make_mesh: MakeMesh, caller: Caller, collector: ZipkinCollector, respx_mock: respx.MockRouter
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/stars/1").mock(side_effect=[httpx.Response(503), httpx.Response(200)])
    mesh = make_mesh(config(collector.endpoint, propagation=ALL_FORMATS))
    async with caller(mesh) as client:
        response = await client.get("http://ratings/stars/1?full=1", headers={"x-request-id": "req-7"})
    assert response.status_code == 200
    spans = exported(mesh, collector, 3)
    request, first, second = named(spans, "GET ratings-route"), named(spans, "try 1"), named(spans, "try 2")
    assert request["kind"] == "CLIENT"
    assert request["localEndpoint"]["serviceName"] == "frontend"
    assert "parentId" not in request
    assert first["parentId"] == second["parentId"] == request["id"]
    assert {s["traceId"] for s in spans} == {request["traceId"]}
    assert tags(request) == {
        "http.request.method": "GET",
        "url.full": "http://ratings/stars/1?full=1",
        "server.address": "ratings",
        "server.port": "80",
        "meshlib.route": "ratings-route",
        "meshlib.request_id": "req-7",
        "meshlib.cluster": "ratings",
        "meshlib.endpoint": ENDPOINT,
        "meshlib.tries": "2",
        "http.response.status_code": "200",
    }
    assert tags(first) == {
        "http.request.method": "GET",
        "url.full": f"{ENDPOINT}/stars/1?full=1",
        "server.address": "127.0.0.1",
        "server.port": "9090",
        "meshlib.cluster": "ratings",
        "meshlib.endpoint": ENDPOINT,
        "meshlib.try": "1",
        "http.response.status_code": "503",
        "error.type": "503",
        "otel.status_code": "ERROR",
        "error": "HTTP 503",
    }
    assert tags(second)["meshlib.try"] == "2"
    assert tags(second)["meshlib.retry_reason"] == "503"
    assert "otel.status_code" not in tags(second)
    # Each try's request carries that try's own span, in every format, sampled.
    sent = [sent_contexts(call.request) for call in upstream.calls]
    assert sent == [
        dict.fromkeys(ALL_FORMATS, (request["traceId"], first["id"], "1")),
        dict.fromkeys(ALL_FORMATS, (request["traceId"], second["id"], "1")),
    ]


async def test_a_failed_request_is_an_error_span_with_the_mesh_error_code(
    make_mesh: MakeMesh, caller: Caller, collector: ZipkinCollector, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{ENDPOINT}/x").mock(side_effect=httpx.ConnectError("refused"))
    mesh = make_mesh(config(collector.endpoint, retry={"attempts": 1}))
    async with caller(mesh) as client:
        with pytest.raises(meshlib.UpstreamConnectError):
            await client.get("http://ratings/x")
    spans = exported(mesh, collector, 2)
    for span in (named(spans, "GET ratings-route"), named(spans, "try 1")):
        assert tags(span)["meshlib.error"] == "upstream_connect_failure"
        assert tags(span)["error.type"] == "upstream_connect_failure"
        assert tags(span)["otel.status_code"] == "ERROR"
        assert "http.response.status_code" not in tags(span)


async def test_each_try_records_the_breaker_state_it_met(
    make_mesh: MakeMesh, caller: Caller, collector: ZipkinCollector, respx_mock: respx.MockRouter
) -> None:
    clock = FakeClock()
    respx_mock.get(f"{ENDPOINT}/x").mock(side_effect=[httpx.Response(503), httpx.Response(200)])
    settings = config(collector.endpoint, retry={"attempts": 1})
    settings["clusters"]["ratings"]["circuit_breaker"] = {"failure_threshold": 1, "recovery_timeout": "10s"}
    mesh = make_mesh(settings, clock=clock)
    async with caller(mesh) as client:
        assert (await client.get("http://ratings/x")).status_code == 503  # opens the breaker
        with pytest.raises(meshlib.CircuitOpenError):
            await client.get("http://ratings/x")
        clock.advance(10)
        assert (await client.get("http://ratings/x")).status_code == 200  # the recovery trial
    spans = exported(mesh, collector, 5)
    tries = sorted((s for s in spans if s["name"] == "try 1"), key=lambda s: s["timestamp"])
    assert [tags(s)["meshlib.breaker_state"] for s in tries] == ["closed", "half-open"]
    refused = [s for s in spans if s["name"] == "GET ratings-route" and "meshlib.tries" in tags(s)]
    assert sorted(tags(s)["meshlib.tries"] for s in refused) == ["0", "1", "1"]
    [open_span] = [s for s in refused if tags(s)["meshlib.tries"] == "0"]
    assert tags(open_span)["meshlib.error"] == "circuit_open"


@pytest.mark.parametrize(
    "formats", [["tracecontext"], ["b3"], ["b3multi"], ["b3multi", "tracecontext"], ALL_FORMATS], ids="+".join
)
async def test_each_configured_format_is_injected_and_no_other(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, formats: list[str]
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/x").respond(200)
    mesh = make_mesh(config(None, propagation=formats))
    async with caller(mesh) as client:
        await client.get("http://ratings/x")
    sent = sent_contexts(upstream.calls.last.request)
    assert sorted(sent) == sorted(formats)
    assert len(set(sent.values())) == 1  # one context, written in each format
    [(trace_id, _, sampled)] = set(sent.values())
    assert len(trace_id) == 32
    assert sampled == "1"
    headers = upstream.calls.last.request.headers
    assert ("x-b3-parentspanid" in headers, "tracestate" in headers) == (False, False)


async def test_trace_headers_the_caller_sent_are_its_parent_and_are_replaced_not_duplicated(
    make_mesh: MakeMesh, caller: Caller, collector: ZipkinCollector, respx_mock: respx.MockRouter
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/x").respond(200)
    mesh = make_mesh(config(collector.endpoint, propagation=["tracecontext", "b3"]))
    stale = {
        "traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01",
        "tracestate": "vendor=1",
        "b3": f"{PARENT_TRACE}-{PARENT_SPAN}-1",
        "x-b3-traceid": PARENT_TRACE,
        "x-b3-spanid": PARENT_SPAN,
        "x-b3-parentspanid": "1111111111111111",
        "x-b3-sampled": "1",
    }
    async with caller(mesh) as client:
        await client.get("http://ratings/x", headers=stale)
    spans = exported(mesh, collector, 2)
    request, attempt = named(spans, "GET ratings-route"), named(spans, "try 1")
    assert (request["traceId"], request["parentId"]) == (PARENT_TRACE, PARENT_SPAN)
    headers = upstream.calls.last.request.headers
    assert headers.get_list("traceparent") == [f"00-{PARENT_TRACE}-{attempt['id']}-01"]
    assert headers.get_list("tracestate") == ["vendor=1"]  # the parent's trace state, carried on
    assert headers.get_list("b3") == [f"{PARENT_TRACE}-{attempt['id']}-1"]
    # b3multi is not configured: its stale headers are removed, not left pointing at the caller's span.
    assert not [name for name in headers if name.startswith("x-b3-")]


async def test_the_first_configured_format_present_is_the_parent(
    make_mesh: MakeMesh, caller: Caller, collector: ZipkinCollector, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{ENDPOINT}/x").respond(200)
    other_trace, other_span = "a" * 32, "b" * 16
    mesh = make_mesh(config(collector.endpoint, propagation=["b3multi", "tracecontext", "b3"]))
    sent = {
        "traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01",
        "b3": f"{other_trace}-{other_span}-1",  # b3 is listed last: ignored while another format is present
    }
    malformed_b3multi = {"x-b3-traceid": "not-hex", "x-b3-spanid": PARENT_SPAN}
    async with caller(mesh) as client:
        await client.get("http://ratings/x", headers=sent)
        await client.get("http://ratings/x", headers={**sent, **malformed_b3multi})  # malformed: the next one
        await client.get("http://ratings/x", headers={"b3": f"{other_trace}-{other_span}-1"})
    spans = exported(mesh, collector, 6)
    parents = sorted((s["timestamp"], s["traceId"], s["parentId"]) for s in spans if s["kind"] == "CLIENT")
    assert [p[1:] for p in parents] == [(PARENT_TRACE, PARENT_SPAN)] * 2 + [(other_trace, other_span)]


async def test_in_process_the_parent_is_the_current_span_of_the_app_s_own_tracer(
    make_mesh: MakeMesh, caller: Caller, collector: ZipkinCollector, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{ENDPOINT}/x").respond(200)
    mesh = make_mesh(config(collector.endpoint))
    app_tracer = TracerProvider().get_tracer("the-app")  # the app's own provider, not the mesh's
    async with caller(mesh) as client:
        with app_tracer.start_as_current_span("handler") as handler:
            # The current span wins over trace headers the request also carries.
            await client.get("http://ratings/x", headers={"traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"})
    spans = exported(mesh, collector, 2)
    request = named(spans, "GET ratings-route")
    context = handler.get_span_context()
    assert (request["traceId"], request["parentId"]) == (
        trace.format_trace_id(context.trace_id),
        trace.format_span_id(context.span_id),
    )
    # The mesh never took over the global provider.
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)


async def test_sampling_zero_records_nothing_but_still_propagates_an_unsampled_context(
    make_mesh: MakeMesh, caller: Caller, collector: ZipkinCollector, respx_mock: respx.MockRouter
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/x").respond(200)
    mesh = make_mesh(config(collector.endpoint, sampling=0.0))
    async with caller(mesh) as client:
        for _ in range(20):
            await client.get("http://ratings/x")
    assert tracer_of(mesh).flush()
    assert collector.spans == []
    assert tracer_of(mesh).stats()["spans"] == 0
    sent = [sent_contexts(call.request) for call in upstream.calls]
    assert len(sent) == 20
    assert all({sampled for _, _, sampled in s.values()} == {"0"} for s in sent)
    assert len({s["tracecontext"][0] for s in sent}) == 20  # a new trace id per request


@pytest.mark.parametrize(
    ("sampling", "flag", "recorded"),
    [(0.0, "01", True), (1.0, "00", False)],
    ids=["sampled-parent-beats-ratio-0", "unsampled-parent-beats-ratio-1"],
)
async def test_the_parent_s_sampling_decision_is_followed(
    make_mesh: MakeMesh,
    caller: Caller,
    collector: ZipkinCollector,
    respx_mock: respx.MockRouter,
    sampling: float,
    flag: str,
    recorded: bool,
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/x").respond(200)
    mesh = make_mesh(config(collector.endpoint, sampling=sampling))
    async with caller(mesh) as client:
        await client.get("http://ratings/x", headers={"traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-{flag}"})
    assert tracer_of(mesh).flush()
    assert len(collector.spans) == (2 if recorded else 0)
    trace_id, span_id, sampled = sent_contexts(upstream.calls.last.request)["tracecontext"]
    assert (trace_id, sampled) == (PARENT_TRACE, "1" if recorded else "0")
    assert span_id != PARENT_SPAN


class TraceIds(Observer):
    """Keeps the trace id each exchange had when it finished (what an access log prints)."""

    name = "trace-ids"

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def finished(self, exchange: Exchange) -> None:
        self.seen.append(exchange.trace_id)


@pytest.fixture
def trace_ids(monkeypatch: pytest.MonkeyPatch) -> TraceIds:
    """Stands in for the access log (``access_log:`` sections), told after tracing."""
    observer = TraceIds()
    real = registry._factory

    def factory(kind: str) -> Any:
        if kind != "access_log":
            return real(kind)

        def build(section: Any, config: MeshConfig, runtime: Any) -> TraceIds:
            return observer

        return build

    monkeypatch.setattr(registry, "_factory", factory)
    return observer


@pytest.mark.parametrize("sampling", [1.0, 0.0])
async def test_the_exchange_carries_the_trace_id_for_the_access_log(
    make_mesh: MakeMesh,
    caller: Caller,
    respx_mock: respx.MockRouter,
    trace_ids: TraceIds,
    sampling: float,
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/x").respond(200)
    mesh = make_mesh({**config(None, sampling=sampling), "access_log": {"path": "-"}})
    async with caller(mesh) as client:
        await client.get("http://ratings/x")
    [(trace_id, _, _)] = set(sent_contexts(upstream.calls.last.request).values())
    assert trace_ids.seen == [trace_id]


async def test_stats_count_spans_and_exports(
    make_mesh: MakeMesh, caller: Caller, collector: ZipkinCollector, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{ENDPOINT}/x").respond(200)
    mesh = make_mesh(config(collector.endpoint))
    async with caller(mesh) as client:
        for _ in range(3):
            await client.get("http://ratings/x")
    exported(mesh, collector, 6)
    assert mesh.stats()["observability"]["tracing"] == {
        "exporter": "zipkin",
        "sampling": 1.0,
        "spans": 6,
        "exported": 6,
        "dropped": 0,
        "dropped_queue_full": 0,
        "dropped_export_failed": 0,
        "dropped_after_close": 0,
        "queued": 0,
        "last_export_error": None,
    }
    assert collector.content_types == ["application/json"] * collector.posts


def test_without_an_exporter_spans_are_propagated_and_nothing_is_exported(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter
) -> None:
    upstream = respx_mock.get(f"{ENDPOINT}/x").respond(200)
    mesh = make_mesh(config(None))
    with mesh.client() as client:
        client.get("http://ratings/x")
    assert "traceparent" in upstream.calls.last.request.headers
    assert mesh.stats()["observability"]["tracing"] == {"exporter": None, "sampling": 1.0}


@pytest.mark.parametrize(
    ("section", "path", "message"),
    [
        ({"zipkin": {"endpoint": "ftp://127.0.0.1/spans"}}, "tracing.zipkin.endpoint", "is not an http:// or https://"),
        ({"zipkin": {"endpoint": "spans"}}, "tracing.zipkin.endpoint", "is not an http:// or https:// URL with a host"),
        (
            {"zipkin": {"endpoint": "http://127.0.0.1:9411", "timeout": "0s"}},
            "tracing.zipkin.timeout",
            "longer than 0s",
        ),
        ({"sampling": 1.5}, "tracing.sampling", "less than or equal to 1"),
        ({"sampling": -0.1}, "tracing.sampling", "greater than or equal to 0"),
        (
            {"propagation": ["b3", "tracecontext", "b3"]},
            "tracing.propagation",
            "each propagation format may be listed once",
        ),
        ({"propagation": ["jaeger"]}, "tracing.propagation[0]", "'tracecontext', 'b3' or 'b3multi'"),
        ({"propagation": []}, "tracing.propagation", "must not be empty"),
        ({"max_queue_size": 0}, "tracing.max_queue_size", "greater than or equal to 1"),
        ({"zipkin": {"endpoint": "http://127.0.0.1:9411"}, "exporter": "jaeger"}, "tracing.exporter", ""),
    ],
    ids=[
        "endpoint-scheme",
        "endpoint-no-host",
        "timeout-zero",
        "sampling-above-1",
        "sampling-negative",
        "propagation-duplicate",
        "propagation-unknown",
        "propagation-empty",
        "queue-zero",
        "unknown-key",
    ],
)
def test_a_bad_tracing_section_names_the_field_and_the_problem(
    section: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(meshlib.ConfigError) as info:
        meshlib.Mesh.from_dict({"allow_empty": True, "tracing": section})
    [(actual_path, actual_message)] = info.value.errors
    assert actual_path == path
    assert message in actual_message


def test_a_reload_keeps_the_provider_while_tracing_is_unchanged_and_replaces_it_when_it_changes(
    make_mesh: MakeMesh, collector: ZipkinCollector, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{ENDPOINT}/x").respond(200)
    settings = config(collector.endpoint)
    mesh = make_mesh(settings)
    first = tracer_of(mesh)
    with mesh.client() as client:
        client.get("http://ratings/x")
        settings["clusters"]["ratings"]["timeout"] = "3s"  # another change: tracing stays as it is
        mesh.reload(meshlib.MeshConfig.from_dict(settings))
        assert tracer_of(mesh) is first
        assert first.stats()["queued"] == 2  # nothing flushed by that reload
        settings["tracing"]["sampling"] = 0.0
        mesh.reload(meshlib.MeshConfig.from_dict(settings))
        second = tracer_of(mesh)
        assert second is not first
        assert second.provider is not first.provider
        # The replaced provider was shut down, sending what it had queued.
        assert len(collector.wait_for_count(2)) == 2
        assert first.stats()["exported"] == 2
        client.get("http://ratings/x")
    assert second.flush()
    assert len(collector.spans) == 2  # sampling 0 now
    settings.pop("tracing")
    mesh.reload(meshlib.MeshConfig.from_dict(settings))
    assert mesh.stats()["observability"] == {}
    assert second.stats()["dropped_after_close"] == 0
