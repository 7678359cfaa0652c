"""frontend → reviews → ratings is one trace, each hop in process (real uvicorn and werkzeug) or through sidecars.

In process, each service has its own mesh with tracing: the inbound
middleware's SERVER span is current while the app runs, so the app's mesh
client makes its CLIENT span a child without the app doing anything. Through
``meshlib proxy`` sidecars, the apps know nothing of tracing and only forward
the trace headers they received, as Istio asks of apps.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from flask import Flask
from werkzeug.serving import make_server

import meshlib
from meshlib.asgi import MeshMiddleware as AsgiMiddleware
from meshlib.wsgi import MeshMiddleware as WsgiMiddleware
from tests.conftest import ASGIApp, MakeMesh, start_server
from tests.observe.tracing_helpers import Span, collector, is_one_tree
from tests.sidecar import proxy_process
from tests.zipkin_collector import ZipkinCollector

__all__ = ["collector"]  # a fixture, imported for the tests below

TRACE_HEADERS = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled")


# The spans from the ratings server span up to the frontend's client span, hop by hop: (name, service, kind).
RATINGS_TO_FRONTEND = [
    ("GET", "ratings", "SERVER"),
    ("try 1", "reviews", None),
    ("GET cluster:ratings", "reviews", "CLIENT"),
    ("GET", "reviews", "SERVER"),
    ("try 1", "frontend", None),
    ("GET cluster:reviews", "frontend", "CLIENT"),
]


@contextmanager
def flask_server(app: Any) -> Iterator[str]:
    """``app`` under werkzeug's threaded server on a loopback port; its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def ratings_flask() -> Flask:
    app = Flask("ratings")

    @app.get("/ratings/<int:book>")
    def ratings(book: int) -> dict[str, int]:
        return {"book": book, "stars": 5}

    return app


def tracing(collector: ZipkinCollector) -> dict[str, Any]:
    return {"zipkin": {"endpoint": collector.endpoint}, "propagation": ["tracecontext", "b3", "b3multi"]}


def chain(spans: list[Span], leaf_service: str) -> list[tuple[str, str, str | None]]:
    """From the leaf service's SERVER span up to the root: (name, service, kind) of each span."""
    by_id = {s["id"]: s for s in spans}
    [leaf] = [s for s in spans if s["localEndpoint"]["serviceName"] == leaf_service and s.get("kind") == "SERVER"]
    out = []
    span: Span | None = leaf
    for _ in range(len(spans)):
        if span is None:
            break
        out.append((span["name"], span["localEndpoint"]["serviceName"], span.get("kind")))
        span = by_id.get(span["parentId"]) if "parentId" in span else None
    return out


def test_in_process_each_hop_s_spans_are_one_trace(collector: ZipkinCollector) -> None:
    with meshlib.Mesh.from_dict({"service": "ratings", "allow_empty": True, "tracing": tracing(collector)}) as ratings:
        ratings_app = ratings_flask()
        ratings_app.wsgi_app = WsgiMiddleware(ratings_app.wsgi_app, mesh=ratings)  # type: ignore[method-assign]
        with flask_server(ratings_app) as ratings_url:
            reviews_config = {
                "service": "reviews",
                "clusters": {"ratings": {"endpoints": [ratings_url]}},
                "tracing": tracing(collector),
            }
            with meshlib.Mesh.from_dict(reviews_config) as reviews:

                async def reviews_app(scope: Any, receive: Any, send: Any) -> None:
                    async with reviews.async_client() as client:
                        stars = (await client.get("http://ratings/ratings/1")).json()["stars"]
                    await send({"type": "http.response.start", "status": 200, "headers": []})
                    await send({"type": "http.response.body", "body": f"{stars} stars".encode()})

                reviews_server = start_server(cast(ASGIApp, AsgiMiddleware(reviews_app, mesh=reviews)), "reviews")
                try:
                    frontend_config = {
                        "service": "frontend",
                        "clusters": {"reviews": {"endpoints": [reviews_server.url]}},
                        "tracing": tracing(collector),
                    }
                    with meshlib.Mesh.from_dict(frontend_config) as frontend, frontend.client() as client:
                        answers = [client.get("http://reviews/reviews/1").text for _ in range(2)]
                finally:
                    reviews_server.stop()
    # Closing each mesh flushed its spans: 2 requests × (frontend client + try, reviews server + client + try, ratings).
    assert answers == ["5 stars"] * 2
    spans = collector.wait_for_count(12)
    traces: dict[str, list[Span]] = {}
    for span in spans:
        traces.setdefault(span["traceId"], []).append(span)
    assert len(traces) == 2
    for one in traces.values():
        assert is_one_tree(one), one
        assert chain(one, "ratings") == RATINGS_TO_FRONTEND


def test_through_sidecars_each_hop_s_spans_are_one_trace(
    collector: ZipkinCollector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_mesh: MakeMesh
) -> None:
    # The sidecars export every 50 ms instead of OpenTelemetry's default 5 s (read by the BatchSpanProcessor).
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    reviews_outbound: list[str] = []

    async def reviews_app(scope: Any, receive: Any, send: Any) -> None:
        # The app's one duty: forward the trace headers it received on the calls it makes.
        forwarded = [(k, v) for k, v in scope["headers"] if k.decode("latin-1") in TRACE_HEADERS]
        async with httpx.AsyncClient(proxy=reviews_outbound[0], trust_env=False) as client:
            stars = (await client.get("http://ratings/ratings/1", headers=forwarded)).json()["stars"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": f"{stars} stars".encode()})

    def inbound(app: str) -> dict[str, Any]:
        return {"inbound": {"listen": f"127.0.0.1:{proxy_process.free_port()}", "app": app}}

    reviews_server = start_server(reviews_app, "reviews-app")
    try:
        with flask_server(ratings_flask()) as ratings_url:
            ratings_config: dict[str, Any] = {
                "service": "ratings",
                "allow_empty": True,
                "sidecar": inbound(ratings_url),
                "tracing": tracing(collector),
            }
            ratings_inbound = f"http://{ratings_config['sidecar']['inbound']['listen']}"
            reviews_config: dict[str, Any] = {
                "service": "reviews",
                "sidecar": inbound(reviews_server.url),
                "clusters": {"ratings": {"endpoints": [ratings_inbound]}},
                "tracing": tracing(collector),
            }
            reviews_inbound = f"http://{reviews_config['sidecar']['inbound']['listen']}"
            frontend_config = {
                "service": "frontend",
                "clusters": {"reviews": {"endpoints": [reviews_inbound]}},
                "tracing": tracing(collector),
            }
            with (
                proxy_process.running(tmp_path / "ratings", ratings_config),
                proxy_process.running(tmp_path / "reviews", reviews_config) as reviews_sidecar,
                proxy_process.running(tmp_path / "frontend", frontend_config) as frontend_sidecar,
            ):
                reviews_outbound.append(reviews_sidecar.proxy_url)
                app_mesh = make_mesh({"allow_empty": True})  # sidecar mode only: its config is unused
                with app_mesh.client(mode="sidecar", sidecar=frontend_sidecar.proxy_url) as client:
                    answer = client.get("http://reviews/reviews/1")
                # frontend: client + try; reviews: server, client + try; ratings: server.
                spans = collector.wait_for_count(6)
    finally:
        reviews_server.stop()
    assert (answer.status_code, answer.text) == (200, "5 stars")
    assert len(spans) == 6
    assert is_one_tree(spans), spans
    # Each sidecar's inbound door writes its server span into the request it forwards (as Envoy does): the
    # app's onward call is that span's child, so the chain runs hop by hop up to the frontend's client span.
    assert chain(spans, "ratings") == RATINGS_TO_FRONTEND
    assert {(s["name"], s["localEndpoint"]["serviceName"], s.get("kind")) for s in spans} == {
        ("GET cluster:reviews", "frontend", "CLIENT"),
        ("try 1", "frontend", None),
        ("GET", "reviews", "SERVER"),
        ("GET cluster:ratings", "reviews", "CLIENT"),
        ("try 1", "reviews", None),
        ("GET", "ratings", "SERVER"),
    }
    assert {s["tags"]["meshlib.door"] for s in spans if s.get("kind") == "SERVER"} == {"sidecar"}
