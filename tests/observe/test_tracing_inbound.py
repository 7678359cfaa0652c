"""Inbound tracing in the ASGI and WSGI middleware: a SERVER span per request, current while the app runs.

The apps are called through httpx's ASGI and WSGI transports (no server);
the app's own calls go through the same mesh to a respx mock, so the spans
show whether an in-process call became the inbound span's child.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

import httpx
import pytest
import respx
from opentelemetry import trace

import meshlib
from meshlib._observe.exchange import Exchange
from meshlib.asgi import MeshMiddleware as AsgiMiddleware
from meshlib.wsgi import MeshMiddleware as WsgiMiddleware
from tests.conftest import MakeMesh
from tests.observe.tracing_helpers import collector, exported, named, tags, tracer_of, tracing
from tests.zipkin_collector import ZipkinCollector

pytestmark = pytest.mark.anyio
__all__ = ["collector"]  # a fixture, imported for the tests below

RATINGS = "http://127.0.0.1:9090"
FRONTEND = "spiffe://cluster.local/ns/default/sa/frontend"
XFCC = f"By=spiffe://cluster.local/ns/default/sa/reviews;URI={FRONTEND}"
PARENT_TRACE, PARENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
DOORS = ["asgi", "wsgi"]


def config(endpoint: str | None, **section: Any) -> dict[str, Any]:
    return {
        "service": "reviews",
        "clusters": {"ratings": {"endpoints": [RATINGS]}},
        "inbound": {
            "authorization": [{"name": "no-admin", "action": "deny", "rules": [{"to": {"paths": ["/admin/*"]}}]}]
        },
        "tracing": tracing(endpoint, **section),
    }


class Seen:
    """What the app saw of the trace while it ran."""

    def __init__(self) -> None:
        self.current: list[trace.SpanContext] = []


def asgi_app(mesh: meshlib.Mesh, seen: Seen) -> Any:
    """Calls ratings through the mesh, then answers; /boom raises before answering."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.current.append(trace.get_current_span().get_span_context())
        if scope["path"] == "/boom":
            raise RuntimeError("the app failed")
        async with mesh.async_client() as client:
            stars = (await client.get("http://ratings/stars")).text
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": stars.encode()})

    return AsgiMiddleware(app, mesh=mesh)


def wsgi_app(mesh: meshlib.Mesh, seen: Seen) -> Any:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        seen.current.append(trace.get_current_span().get_span_context())
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("the app failed")
        with mesh.client() as client:
            stars = client.get("http://ratings/stars").text
        start_response("200 OK", [("content-type", "text/plain")])
        return [stars.encode()]

    return WsgiMiddleware(app, mesh=mesh)


async def call(door: str, mesh: meshlib.Mesh, seen: Seen, path: str, headers: dict[str, str]) -> httpx.Response:
    if door == "asgi":
        transport = httpx.ASGITransport(app=asgi_app(mesh, seen), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://reviews:9080") as client:
            return await client.get(path, headers=headers)
    return call_wsgi(mesh, seen, path, headers)


def call_wsgi(mesh: meshlib.Mesh, seen: Seen, path: str, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(transport=httpx.WSGITransport(app=wsgi_app(mesh, seen)), base_url="http://reviews:9080") as sync:
        try:
            return sync.get(path, headers=headers)
        except RuntimeError:  # WSGITransport raises what the app raised
            return httpx.Response(500)


@pytest.mark.parametrize("door", DOORS)
async def test_a_request_is_a_server_span_and_the_app_s_mesh_calls_are_its_children(
    door: str, make_mesh: MakeMesh, collector: ZipkinCollector, respx_mock: respx.MockRouter
) -> None:
    ratings = respx_mock.get(f"{RATINGS}/stars").respond(200, text="5")
    mesh = make_mesh(config(collector.endpoint))
    seen = Seen()
    headers = {
        "traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01",
        "user-agent": "curl/8",
        "x-forwarded-client-cert": XFCC,
    }
    response = await call(door, mesh, seen, "/reviews/1?lang=en", headers)
    assert (response.status_code, response.text) == (200, "5")
    spans = exported(mesh, collector, 3)
    server, client, attempt = named(spans, "GET"), named(spans, "GET cluster:ratings"), named(spans, "try 1")
    assert server["kind"] == "SERVER"
    assert (server["traceId"], server["parentId"]) == (PARENT_TRACE, PARENT_SPAN)
    assert client["parentId"] == server["id"]
    assert attempt["parentId"] == client["id"]
    assert {s["traceId"] for s in spans} == {PARENT_TRACE}
    assert tags(server) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/reviews/1",
        "url.query": "lang=en",
        "server.address": "reviews",
        "server.port": "9080",
        "user_agent.original": "curl/8",
        "meshlib.door": door,
        "meshlib.peer": FRONTEND,
        "http.response.status_code": "200",
    }
    # The app ran with the server span current, and ratings got the try's context.
    assert [trace.format_span_id(c.span_id) for c in seen.current] == [server["id"]]
    assert ratings.calls.last.request.headers["traceparent"] == f"00-{PARENT_TRACE}-{attempt['id']}-01"


@pytest.mark.parametrize("door", DOORS)
async def test_a_denied_request_records_the_policy_and_is_no_server_error(
    door: str, make_mesh: MakeMesh, collector: ZipkinCollector
) -> None:
    mesh = make_mesh(config(collector.endpoint))
    seen = Seen()
    response = await call(door, mesh, seen, "/admin/users", {})
    assert response.status_code == 403
    [server] = exported(mesh, collector, 1)
    assert "parentId" not in server
    assert {k: v for k, v in tags(server).items() if k.startswith(("meshlib.", "http.response", "error", "otel."))} == {
        "meshlib.door": door,
        "meshlib.denied_by": "no-admin",
        "meshlib.error": "forbidden",
        "http.response.status_code": "403",
    }
    assert seen.current == []


@pytest.mark.parametrize("door", DOORS)
async def test_an_app_that_raises_is_an_error_span(door: str, make_mesh: MakeMesh, collector: ZipkinCollector) -> None:
    mesh = make_mesh(config(collector.endpoint))
    response = await call(door, mesh, Seen(), "/boom", {})
    assert response.status_code == 500
    [server] = exported(mesh, collector, 1)
    assert tags(server)["http.response.status_code"] == "500"
    assert tags(server)["otel.status_code"] == "ERROR"
    assert tags(server)["error.type"] == "internal_error"
    # The caller's context is as it was: the span made current for the app was detached.
    assert not trace.get_current_span().get_span_context().is_valid


@pytest.mark.parametrize("door", DOORS)
async def test_the_first_configured_format_present_is_extracted_and_its_decision_followed(
    door: str, make_mesh: MakeMesh, collector: ZipkinCollector, respx_mock: respx.MockRouter
) -> None:
    ratings = respx_mock.get(f"{RATINGS}/stars").respond(200, text="5")
    mesh = make_mesh(config(collector.endpoint, propagation=["b3", "tracecontext"], sampling=1.0))
    headers = {
        "traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01",
        "b3": f"{'a' * 32}-{'b' * 16}-0",  # listed first in the config: this parent, unsampled
    }
    await call(door, mesh, Seen(), "/reviews/1", headers)
    assert tracer_of(mesh).flush()
    assert collector.spans == []
    sent = ratings.calls.last.request.headers
    assert sent["b3"].startswith("a" * 32)
    assert sent["b3"].endswith("-0")
    # Both formats go on, carrying the same (b3's) context, not the tracecontext parent the caller also sent.
    assert sent["traceparent"] == f"00-{'a' * 32}-{sent['b3'].split('-')[1]}-00"
    assert tracer_of(mesh).stats()["spans"] == 0


def test_a_context_detached_from_another_context_is_left_alone(
    make_mesh: MakeMesh, caplog: pytest.LogCaptureFixture
) -> None:
    """An inbound door whose finished() runs in another context (a copied one) must not break either context."""
    mesh = make_mesh(config(None))
    tracer = tracer_of(mesh)
    exchange = Exchange("inbound", "asgi", "GET", "http", "reviews", "/", [])

    def start() -> trace.SpanContext:
        tracer.started(exchange)
        return trace.get_current_span().get_span_context()

    started_in = contextvars.copy_context()
    span_context = started_in.run(start)
    assert span_context.is_valid
    caplog.set_level(logging.DEBUG)
    contextvars.copy_context().run(tracer.finished, exchange)  # another context: nothing to detach there
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert exchange.slots == {}
    # The context it was attached in still has it (that context's owner discards it); this one never had it.
    assert started_in.run(trace.get_current_span).get_span_context() == span_context
    assert not trace.get_current_span().get_span_context().is_valid
