"""Interop: a real Envoy with its Zipkin tracer between two meshlib services keeps one trace.

frontend (a mesh client) → Envoy (HTTP connection manager with
``envoy.tracers.zipkin``, exporting to the same fake collector) → ratings
(an ASGI app under uvicorn with meshlib's middleware). Envoy 1.40 reads B3
(multi or single header) and writes its own span back in the B3 format it
read (multi by default); W3C ``traceparent`` it reads and writes only with
``trace_context_option: USE_B3_WITH_W3C_PROPAGATION`` and otherwise passes
on unchanged. So the service behind Envoy lists the B3 formats first, or a
stale ``traceparent`` would make Envoy's span be skipped over.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

import meshlib
from meshlib.asgi import MeshMiddleware
from tests.conftest import ASGIApp, MakeMesh, RunningServer, start_server
from tests.envoy_process import HCM, ROUTER, running_envoy
from tests.observe.tracing_helpers import Span, collector, is_one_tree, tracer_of
from tests.zipkin_collector import SPANS_PATH, ZipkinCollector

__all__ = ["collector"]  # a fixture, imported for the tests below

TRACE_HEADERS = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled")


def _static_cluster(name: str, port: int) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def envoy_config(upstream_port: int, collector: ZipkinCollector, trace_context_option: str | None) -> dict[str, Any]:
    zipkin: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
        "collector_cluster": "zipkin",
        "collector_endpoint": SPANS_PATH,
        "collector_endpoint_version": "HTTP_JSON",
        "trace_id_128bit": True,
        "shared_span_context": False,  # a span of its own, the child of meshlib's try: one tree, no shared ids
    }
    if trace_context_option is not None:
        zipkin["trace_context_option"] = trace_context_option
    hcm = {
        "@type": HCM,
        "stat_prefix": "ingress",
        "codec_type": "HTTP1",
        "generate_request_id": True,
        "tracing": {
            "provider": {"name": "envoy.tracers.zipkin", "typed_config": zipkin},
            "random_sampling": {"value": 100},
        },
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "ratings"}}],
                }
            ]
        },
        "http_filters": [ROUTER],
    }
    listener = {
        "name": "ingress",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
    return {
        # Envoy's Zipkin reporter sends every 5 s or 5 spans by default: at once here.
        "layered_runtime": {
            "layers": [
                {
                    "name": "static",
                    "static_layer": {"tracing.zipkin.min_flush_spans": 1, "tracing.zipkin.flush_interval_ms": 50},
                }
            ]
        },
        "static_resources": {
            "listeners": [listener],
            "clusters": [_static_cluster("ratings", upstream_port), _static_cluster("zipkin", collector.port)],
        },
    }


@pytest.fixture
def ratings(
    collector: ZipkinCollector, make_mesh: MakeMesh
) -> Iterator[tuple[RunningServer, meshlib.Mesh, list[dict[str, str]]]]:
    """ratings behind meshlib's middleware (tracing on, B3 read first); the trace headers each request had."""
    received: list[dict[str, str]] = []
    config = {
        "service": "ratings",
        "allow_empty": True,
        "tracing": {"zipkin": {"endpoint": collector.endpoint}, "propagation": ["b3multi", "b3", "tracecontext"]},
    }

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        received.append({k: v for k, v in headers.items() if k in TRACE_HEADERS})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"5 stars"})

    mesh = make_mesh(config)
    server = start_server(cast(ASGIApp, MeshMiddleware(app, mesh=mesh)), "ratings")
    try:
        yield server, mesh, received
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("option", "propagation"),
    [
        (None, ["b3multi"]),  # Envoy's default: B3 only
        (None, ["b3"]),  # the single b3 header, which Envoy reads too
        (None, ["tracecontext", "b3multi"]),  # a traceparent Envoy does not read is still replaced downstream
        ("USE_B3_WITH_W3C_PROPAGATION", ["tracecontext"]),  # W3C only, which Envoy then reads and writes
    ],
    ids=["b3multi", "b3-single", "w3c-and-b3", "w3c-only"],
)
def test_meshlib_envoy_meshlib_is_one_trace(
    collector: ZipkinCollector,
    ratings: tuple[RunningServer, meshlib.Mesh, list[dict[str, str]]],
    tmp_path: Path,
    option: str | None,
    propagation: list[str],
) -> None:
    server, ratings_mesh, received = ratings
    port = int(server.url.rsplit(":", 1)[1])
    with running_envoy(envoy_config(port, collector, option), tmp_path) as envoy:
        frontend = {
            "service": "frontend",
            "clusters": {"ratings": {"endpoints": [f"http://127.0.0.1:{envoy.ports['ingress']}"]}},
            "tracing": {"zipkin": {"endpoint": collector.endpoint}, "propagation": propagation},
        }
        with meshlib.Mesh.from_dict(frontend) as mesh, mesh.client() as client:
            assert client.get("http://ratings/ratings/1").text == "5 stars"
        assert tracer_of(ratings_mesh).flush()
        # frontend: client + try (sent when its mesh closed); ratings: server; Envoy: its own.
        spans = collector.wait_for_count(4)
    assert len(spans) == 4, spans
    [headers] = received
    assert is_one_tree(spans), spans
    by_service: dict[str, list[Span]] = {}
    for span in spans:
        by_service.setdefault(span["localEndpoint"].get("serviceName", "envoy"), []).append(span)
    [envoy_span] = by_service["envoy"]
    [try_span] = [s for s in by_service["frontend"] if s["name"] == "try 1"]
    [ratings_span] = by_service["ratings"]
    # Envoy continued meshlib's trace under the try, and ratings continued it under Envoy's span.
    assert (envoy_span["kind"], envoy_span["parentId"]) == ("SERVER", try_span["id"])
    assert ratings_span["parentId"] == envoy_span["id"]
    # What Envoy sent on: its own span, in the B3 format it was sent (and in traceparent too when told to write W3C).
    if "b3" in propagation:
        assert headers["b3"].split("-")[:2] == [try_span["traceId"], envoy_span["id"]]
    else:
        assert (headers["x-b3-traceid"], headers["x-b3-spanid"]) == (try_span["traceId"], envoy_span["id"])
    if option is not None:
        assert headers["traceparent"].split("-")[1:3] == [try_span["traceId"], envoy_span["id"]]
    elif "tracecontext" in propagation:
        # Passed on as meshlib wrote it: a parent that skips Envoy, which is why ratings lists B3 first.
        assert headers["traceparent"].split("-")[2] == try_span["id"]
