"""Metrics in process: the values after scripted traffic through respx-mocked upstreams, and the mountable apps.

Every page is read back with prometheus_client's parser (what Prometheus
itself reads), and the richest one is checked by ``promtool check metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import respx
import time_machine
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.utils import floatToGoString

import meshlib
import meshlib.asgi
import meshlib.wsgi
from meshlib._observe import metrics
from meshlib._observe.exchange import Exchange
from meshlib.testing import FakeClock
from tests.conftest import Caller, MakeMesh, eventually, outcomes
from tests.observe.metrics_helpers import promtool_check, series, value
from tests.tls.pki import Pki

pytestmark = pytest.mark.anyio

A, B = "http://127.0.0.1:9081", "http://127.0.0.1:9082"
ROUTE = "ratings"


def _config(cluster: dict[str, Any] | None = None, route: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {
        "clusters": {"ratings": {"endpoints": [A], **(cluster or {})}},
        "routes": [{"name": ROUTE, "match": {"host": "ratings"}, "cluster": "ratings", **(route or {})}],
        "metrics": {"enabled": True},
        **top,
    }


def page(mesh: meshlib.Mesh) -> str:
    status, body = metrics.scrape(mesh)
    assert status == 200, body
    return body.decode()


async def test_requests_by_status_class_latency_and_active_until_the_body_ends(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{A}/r").mock(
        side_effect=[httpx.Response(200), httpx.Response(201), httpx.Response(404), httpx.Response(503)]
    )
    respx_mock.get(f"{A}/stream").respond(200, content=b"x" * 1000)
    mesh = make_mesh(_config())
    async with caller(mesh) as client:
        assert [(await client.get("http://ratings/r")).status_code for _ in range(4)] == [200, 201, 404, 503]
        text = page(mesh)
        where = {"route": ROUTE, "cluster": "ratings", "endpoint": A}
        assert value(text, "meshlib_outbound_requests_total", **where, status_class="2xx", error="") == 2
        assert value(text, "meshlib_outbound_requests_total", **where, status_class="4xx") == 1
        assert value(text, "meshlib_outbound_requests_total", **where, status_class="5xx") == 1
        assert value(text, "meshlib_outbound_request_duration_seconds_count", **where) == 4
        assert value(text, "meshlib_outbound_request_duration_seconds_bucket", **where, le="+Inf") == 4
        assert 0 < value(text, "meshlib_outbound_request_duration_seconds_sum", **where) < 5
        assert value(text, "meshlib_outbound_requests_active", route=ROUTE) == 0
        # Live state, read at scrape time: tries sent to the endpoint.
        assert value(text, "meshlib_endpoint_requests_total", cluster="ratings", endpoint=A) == 4

        response = await client.open_stream("GET", "http://ratings/stream")
        open_page = page(mesh)
        assert value(open_page, "meshlib_outbound_requests_active", route=ROUTE) == 1  # the body is not read yet
        assert value(open_page, "meshlib_endpoint_requests_active", cluster="ratings", endpoint=A) == 1
        assert value(open_page, "meshlib_outbound_request_duration_seconds_count") == 4
        await client.read_response(response)
        await client.close_response(response)
    closed = page(mesh)
    assert value(closed, "meshlib_outbound_requests_active", route=ROUTE) == 0
    assert value(closed, "meshlib_outbound_requests_total", status_class="2xx") == 3
    assert value(closed, "meshlib_outbound_request_duration_seconds_count") == 5


async def test_retries_are_counted_by_the_reason_they_were_made(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{A}/r").mock(side_effect=[httpx.Response(503), httpx.ConnectError("refused"), httpx.Response(200)])
    retry = {"attempts": 3, "retry_on": ["5xx", "connect-failure"], "backoff": {"base": "1ms", "max": "2ms"}}
    mesh = make_mesh(_config(route={"retry": retry}))
    async with caller(mesh) as client:
        assert (await client.get("http://ratings/r")).status_code == 200
    text = page(mesh)
    retries = "meshlib_outbound_retries_total"
    assert value(text, retries, route=ROUTE, cluster="ratings", endpoint=A, reason="503") == 1
    assert value(text, retries, route=ROUTE, reason="upstream_connect_failure") == 1
    assert value(text, retries) == 2
    assert value(text, "meshlib_cluster_retries_total", cluster="ratings") == 2  # the policy's own count agrees
    assert value(text, "meshlib_cluster_retried_requests_total", cluster="ratings") == 1
    # One request, whatever its tries: it ended 2xx.
    assert value(text, "meshlib_outbound_requests_total") == 1
    assert value(text, "meshlib_outbound_requests_total", status_class="2xx") == 1


async def test_a_tripped_breaker_shows_open_and_its_refusals_count_as_local_errors(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{A}/r").respond(503)
    clock = FakeClock()
    mesh = make_mesh(_config({"circuit_breaker": {"failure_threshold": 2, "recovery_timeout": "30s"}}), clock=clock)
    before = page(mesh)
    assert value(before, "meshlib_cluster_breaker_state", cluster="ratings", state="closed") == 1
    assert value(before, "meshlib_cluster_breaker_state", cluster="ratings", state="open") == 0
    async with caller(mesh) as client:
        assert await outcomes(client, "http://ratings/r", 5) == [503, 503] + ["circuit_open"] * 3
    text = page(mesh)
    assert value(text, "meshlib_cluster_breaker_state", cluster="ratings", state="open") == 1
    assert value(text, "meshlib_cluster_breaker_state", cluster="ratings", state="closed") == 0
    assert value(text, "meshlib_cluster_breaker_state", cluster="ratings", state="half-open") == 0
    assert value(text, "meshlib_cluster_breaker_open_total", cluster="ratings") == 1
    assert value(text, "meshlib_cluster_breaker_rejected_total", cluster="ratings") == 3
    # Refused before any endpoint: the class of the 503 the sidecar answers, with the error code.
    assert value(text, "meshlib_outbound_requests_total", status_class="5xx", error="circuit_open") == 3
    assert value(text, "meshlib_outbound_requests_total", status_class="5xx", error="") == 2
    [refused] = [s for s in series(text, "meshlib_outbound_requests_total") if s["error"] == "circuit_open"]
    assert (refused["route"], refused["cluster"], refused["endpoint"]) == (ROUTE, "ratings", "")  # no endpoint tried


async def test_connect_failures_count_by_code_in_the_class_the_sidecar_answers(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{A}/r").mock(side_effect=httpx.ConnectError("refused"))
    mesh = make_mesh(_config())
    async with caller(mesh) as client:
        assert await outcomes(client, "http://ratings/r", 2) == ["upstream_connect_failure"] * 2
    text = page(mesh)
    where = {"cluster": "ratings", "endpoint": A}
    refused = {"status_class": "5xx", "error": "upstream_connect_failure"}
    assert value(text, "meshlib_outbound_requests_total", **where, **refused) == 2
    assert value(text, "meshlib_outbound_request_duration_seconds_count", **where) == 2
    assert value(text, "meshlib_outbound_requests_active") == 0


async def test_an_upstreams_own_error_codes_cannot_mint_label_values(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    codes = ["circuit_open", "made-up-1", "made-up-2"]
    respx_mock.get(f"{A}/r").mock(side_effect=[httpx.Response(503, headers={"x-meshlib-error": c}) for c in codes])
    mesh = make_mesh(_config())
    async with caller(mesh) as client:
        assert [(await client.get("http://ratings/r")).status_code for _ in codes] == [503] * 3
    text = page(mesh)
    # An upstream sidecar's refusal keeps its code; anything else an upstream writes there is "other".
    assert value(text, "meshlib_outbound_requests_total", status_class="5xx", error="circuit_open") == 1
    assert value(text, "meshlib_outbound_requests_total", status_class="5xx", error="other") == 2
    assert {s["error"] for s in series(text, "meshlib_outbound_requests_total")} == {"circuit_open", "other"}


async def test_outlier_ejection_shows_per_endpoint_and_in_the_cluster_count(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{A}/r").respond(503)
    respx_mock.get(f"{B}/r").respond(200)
    outlier = {"consecutive_5xx": 2, "base_ejection_time": "30s", "max_ejection_percent": 50}
    mesh = make_mesh(_config({"endpoints": [A, B], "outlier_detection": outlier}), clock=FakeClock())
    async with caller(mesh) as client:
        # Round robin: A answers 503 twice (requests 1 and 3), then only B is picked.
        assert [(await client.get("http://ratings/r")).status_code for _ in range(6)] == [503, 200, 503, 200, 200, 200]
    text = page(mesh)
    assert value(text, "meshlib_cluster_ejections_total", cluster="ratings") == 1
    assert value(text, "meshlib_endpoint_ejected", cluster="ratings", endpoint=A) == 1
    assert value(text, "meshlib_endpoint_ejected", cluster="ratings", endpoint=B) == 0
    assert value(text, "meshlib_endpoint_healthy", cluster="ratings", endpoint=A) == 1  # no health checks: healthy
    assert value(text, "meshlib_outbound_requests_total", endpoint=A, status_class="5xx") == 2
    assert value(text, "meshlib_outbound_requests_total", endpoint=B, status_class="2xx") == 4


async def test_a_hedge_is_a_try_made_for_the_reason_hedge(make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    first: list[int | None] = []

    async def stall_the_first_endpoint(request: httpx.Request) -> httpx.Response:
        if not first:
            first.append(request.url.port)
        if request.url.port == first[0]:
            await anyio.sleep(0.5)  # cancelled once the hedge has answered
        return httpx.Response(200)

    respx_mock.route(host="127.0.0.1").mock(side_effect=stall_the_first_endpoint)
    mesh = make_mesh(_config({"endpoints": [A, B], "hedge": {"after": "20ms"}}))
    async with mesh.async_client() as client:
        assert (await client.get("http://ratings/r")).status_code == 200
    await eventually(lambda: value(page(mesh), "meshlib_endpoint_requests_active") == 0)
    text = page(mesh)
    [hedge] = series(text, "meshlib_outbound_retries_total")
    assert (hedge["reason"], hedge["route"], hedge["cluster"]) == ("hedge", ROUTE, "ratings")
    assert hedge["endpoint"] != f"http://127.0.0.1:{first[0]}"  # the hedge went to the other endpoint
    assert value(text, "meshlib_cluster_hedges_total", cluster="ratings") == 1
    assert value(text, "meshlib_cluster_hedge_wins_total", cluster="ratings") == 1
    assert value(text, "meshlib_outbound_requests_total", status_class="2xx", endpoint=hedge["endpoint"]) == 1
    assert value(text, "meshlib_outbound_requests_active") == 0


@pytest.fixture
def frozen_clock() -> Iterator[time_machine.Traveller]:
    """limits reads the wall clock: frozen on a minute, so a window never rolls over mid-test."""
    with time_machine.travel(datetime(2030, 1, 1, tzinfo=UTC), tick=False) as traveller:
        yield traveller


async def test_rate_limited_requests_count_in_the_cluster_and_as_local_429s(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, frozen_clock: time_machine.Traveller
) -> None:
    respx_mock.get(f"{A}/r").respond(200)
    mesh = make_mesh(_config({"rate_limit": {"rate": "2/minute"}}))
    async with caller(mesh) as client:
        assert await outcomes(client, "http://ratings/r", 4) == [200, 200, "rate_limited", "rate_limited"]
    text = page(mesh)
    assert value(text, "meshlib_cluster_rate_limited_total", cluster="ratings") == 2
    assert value(text, "meshlib_outbound_requests_total", status_class="4xx", error="rate_limited") == 2
    assert value(text, "meshlib_outbound_requests_total", status_class="2xx") == 2


async def test_every_headline_cluster_counter_is_there_before_it_first_counts(make_mesh: MakeMesh) -> None:
    text = page(make_mesh(_config()))
    for name in ("retries", "retry_budget_exhausted", "rate_limited", "breaker_open", "ejections", "hedges"):
        assert series(text, f"meshlib_cluster_{name}_total") == [{"cluster": "ratings"}], name
    assert series(text, "meshlib_cluster_breaker_state") == []  # no breaker configured
    assert value(text, "meshlib_config_version") == 1


def test_certificate_expiry_per_certificate(make_mesh: MakeMesh, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    client = pki.issue("frontend", ttl=3600.0)
    mesh = make_mesh(_config({"tls": client.client_tls()}))
    text = page(mesh)
    where = "clusters.ratings.tls.cert_file"
    assert 3500 < value(text, "meshlib_certificate_expires_in_seconds", certificate=where) <= 3600
    expiry = value(text, "meshlib_certificate_expiry_timestamp_seconds", certificate=where)
    assert abs(expiry - (datetime.now(UTC).timestamp() + 3600)) < 120
    assert {s["certificate"] for s in series(text, "meshlib_certificate_expires_in_seconds")} >= {
        where,
        "clusters.ratings.tls.ca_file",
    }


# --- inbound: the ASGI and WSGI middleware ---------------------------------------------------------------------------

INBOUND = {
    "authorization": [
        {"name": "no-admin", "action": "deny", "rules": [{"to": {"paths": ["/admin/*"]}}]},
    ]
}


async def _asgi_ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    status = 500 if scope["path"] == "/boom" else 200
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


def _wsgi_ok(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    status = "500 Internal Server Error" if environ["PATH_INFO"] == "/boom" else "200 OK"
    start_response(status, [("Content-Type", "text/plain")])
    return [b"hello"]


def _inbound_checks(text: str) -> None:
    assert value(text, "meshlib_inbound_requests_total", status_class="2xx", error="") == 2
    assert value(text, "meshlib_inbound_requests_total", status_class="4xx", error="forbidden") == 1
    assert value(text, "meshlib_inbound_requests_total", status_class="5xx") == 1
    assert value(text, "meshlib_inbound_denied_total", policy="no-admin", error="forbidden") == 1
    assert value(text, "meshlib_inbound_denied_total") == 1
    assert value(text, "meshlib_inbound_request_duration_seconds_count") == 4
    assert value(text, "meshlib_inbound_requests_active") == 0
    assert value(text, "meshlib_outbound_requests_total") == 0  # nothing went out


async def test_inbound_requests_and_denials_by_policy_through_the_asgi_middleware(make_mesh: MakeMesh) -> None:
    mesh = make_mesh({"inbound": INBOUND, "metrics": {"enabled": True}})
    app = meshlib.asgi.MeshMiddleware(_asgi_ok, mesh=mesh)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://reviews") as client:
        assert [(await client.get(p)).status_code for p in ("/a", "/b", "/admin/x", "/boom")] == [200, 200, 403, 500]
    _inbound_checks(page(mesh))


def test_inbound_requests_and_denials_by_policy_through_the_wsgi_middleware(make_mesh: MakeMesh) -> None:
    mesh = make_mesh({"inbound": INBOUND, "metrics": {"enabled": True}})
    app = meshlib.wsgi.MeshMiddleware(_wsgi_ok, mesh=mesh)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://reviews") as client:
        assert [client.get(p).status_code for p in ("/a", "/b", "/admin/x", "/boom")] == [200, 200, 403, 500]
    _inbound_checks(page(mesh))


# --- the page as a whole ---------------------------------------------------------------------------------------------


async def test_promtool_accepts_a_page_with_every_kind_of_metric(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter, tmp_path: Path
) -> None:
    respx_mock.get(f"{A}/r").mock(side_effect=[httpx.Response(503), httpx.Response(200)] + [httpx.Response(503)] * 9)
    pki = Pki(tmp_path / "pki")
    cluster = {
        "circuit_breaker": {"failure_threshold": 3},
        "tls": pki.issue("frontend").client_tls(),
        "outlier_detection": {"consecutive_5xx": 50},
    }
    route = {"retry": {"attempts": 2, "retry_on": ["5xx"], "backoff": {"base": "1ms", "max": "1ms"}}}
    mesh = make_mesh(_config(cluster, route, inbound=INBOUND))
    with mesh.client() as client:
        for _ in range(5):
            with contextlib.suppress(meshlib.MeshError):
                client.get("http://ratings/r")
    app = meshlib.asgi.MeshMiddleware(_asgi_ok, mesh=mesh)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://reviews") as inbound:
        await inbound.get("/admin/x")
        await inbound.get("/ok")
    text = page(mesh)
    for name in (
        "meshlib_outbound_retries_total",
        "meshlib_cluster_breaker_state",
        "meshlib_certificate_expires_in_seconds",
        "meshlib_inbound_denied_total",
    ):
        assert series(text, name), name
    assert value(text, "meshlib_outbound_requests_total", error="circuit_open") >= 1
    promtool_check(text)


def test_counters_survive_a_reload_and_metrics_turned_off_answer_404(make_mesh: MakeMesh) -> None:
    mesh = make_mesh(_config())
    with respx.mock:
        respx.get(f"{A}/r").respond(200)
        respx.get(f"{B}/r").respond(200)
        with mesh.client() as client:
            client.get("http://ratings/r")
            mesh.reload(_config({"endpoints": [A, B]}, {"timeout": "2s"}))  # metrics: unchanged
            client.get("http://ratings/r")
            client.get("http://ratings/r")
    text = page(mesh)
    assert value(text, "meshlib_outbound_requests_total", endpoint=A) == 2
    assert value(text, "meshlib_outbound_requests_total", endpoint=B) == 1
    assert value(text, "meshlib_config_version") == 2
    assert value(text, "meshlib_config_reloads_total", result="accepted") == 1

    plain = _config()
    del plain["metrics"]
    mesh.reload(plain)
    assert metrics.scrape(mesh) == (404, metrics.NOT_ENABLED.encode() + b"\n")
    mesh.reload(_config())  # on again: a new observer, counting from zero
    assert value(page(mesh), "meshlib_outbound_requests_total") == 0


def test_enabled_false_is_off(make_mesh: MakeMesh) -> None:
    config = _config()
    config["metrics"] = {"enabled": False}
    mesh = make_mesh(config)
    assert mesh.snapshot.observers is None
    assert metrics.scrape(mesh)[0] == 404


# --- the mountable apps ----------------------------------------------------------------------------------------------


async def test_the_asgi_app_serves_the_page_head_and_refuses_other_methods(
    make_mesh: MakeMesh, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(f"{A}/r").respond(200)
    mesh = make_mesh(_config())
    with mesh.client() as client:
        client.get("http://ratings/r")
    transport = httpx.ASGITransport(app=mesh.metrics_asgi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as scraper:
        response = await scraper.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert value(response.text, "meshlib_outbound_requests_total", status_class="2xx") == 1
        head = await scraper.head("/")
        assert (head.status_code, head.content) == (200, b"")
        assert int(head.headers["content-length"]) > 0
        post = await scraper.post("/metrics")
        assert (post.status_code, post.headers["allow"]) == (405, "GET, HEAD")


def test_the_wsgi_app_serves_the_page(make_mesh: MakeMesh, respx_mock: respx.MockRouter) -> None:
    respx_mock.get(f"{A}/r").respond(503)
    mesh = make_mesh(_config())
    with mesh.client() as client:
        client.get("http://ratings/r")
    with httpx.Client(transport=httpx.WSGITransport(app=mesh.metrics_wsgi_app()), base_url="http://app") as scraper:
        response = scraper.get("/")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert value(response.text, "meshlib_outbound_requests_total", status_class="5xx") == 1
        assert scraper.delete("/").status_code == 405


def test_the_apps_answer_404_saying_how_to_enable_metrics_until_a_reload_does(make_mesh: MakeMesh) -> None:
    mesh = make_mesh({"clusters": {"ratings": {"endpoints": [A]}}})
    asgi = httpx.Client(transport=_SyncAsgi(mesh.metrics_asgi_app()), base_url="http://app")
    wsgi = httpx.Client(transport=httpx.WSGITransport(app=mesh.metrics_wsgi_app()), base_url="http://app")
    with asgi, wsgi:
        for response in (asgi.get("/"), wsgi.get("/")):
            assert response.status_code == 404
            assert "metrics: {enabled: true}" in response.text
            assert response.headers["content-type"] == "text/plain; charset=utf-8"
        mesh.reload(_config())
        assert asgi.get("/").status_code == 200
        assert wsgi.get("/").status_code == 200


class _SyncAsgi(httpx.BaseTransport):
    """httpx's ASGITransport for a sync client: each request runs in a new event loop."""

    def __init__(self, app: Any) -> None:
        self._transport = httpx.ASGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def send() -> httpx.Response:
            response = await self._transport.handle_async_request(request)
            return httpx.Response(response.status_code, headers=response.headers, content=await response.aread())

        return asyncio.run(send())


# --- units -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (200, None, "2xx"),
        (302, None, "3xx"),
        (404, None, "4xx"),
        (503, "circuit_open", "5xx"),  # an upstream sidecar's local answer
        (None, "rate_limited", "4xx"),
        (None, "timeout", "5xx"),
        (None, "route_not_found", "4xx"),
        (None, "cancelled", "none"),
        (200, "timeout", "2xx"),  # the head came, the body timed out
    ],
)
def test_status_class(status: int | None, error: str | None, expected: str) -> None:
    assert metrics.status_class(status, error) == expected


def _exchange(**fields: Any) -> Exchange:
    exchange = Exchange(direction="outbound", door="client", method="GET", scheme="http", authority="r", path="/")
    for name, field_value in fields.items():
        setattr(exchange, name, field_value)
    return exchange


# (status, error, seconds): plain statuses, error codes known and unknown, an empty code, no status, durations on a
# bucket's bound, between bounds, past the last one, and none (a request that never ended its clock).
_OUTCOMES: list[tuple[int | None, str | None, float | None]] = [
    (200, None, 0.0005),
    (204, None, 0.0007),
    (503, None, 0.001),
    (200, "", 0.002),
    (None, "timeout", 0.005),
    (502, "upstream_reset", 0.3),
    (503, "made_up_by_an_upstream", 7200.0),
    (None, "cancelled", None),
    (None, None, 0.0),
    (99, None, 0.02),
    (200, None, 0.0005),
]


def test_outbound_counts_match_prometheus_clients_own_counter_and_histogram() -> None:
    """The observer's hand-kept counts render as prometheus_client's Counter and Histogram would, series in order."""
    registry = CollectorRegistry()
    where = ("route", "cluster", "endpoint")
    counter = Counter("c", "", (*where, "status_class", "error"), registry=registry)
    histogram = Histogram("h", "", where, buckets=metrics.LATENCY_BUCKETS, registry=registry)
    observer = metrics.MetricsObserver()
    for status, error, seconds in _OUTCOMES:
        exchange = _exchange(route="r", cluster="c", endpoint=A)
        observer.started(exchange)
        exchange.status, exchange.error = status, error
        exchange.end = None if seconds is None else exchange.start + seconds
        observer.finished(exchange)
        klass = metrics.status_class(status, error)
        code = "" if not error else error if error in ("timeout", "upstream_reset", "cancelled") else "other"
        counter.labels("r", "c", A, klass, code).inc()
        if exchange.end is not None:
            histogram.labels("r", "c", A).observe(exchange.end - exchange.start)
    ours = metrics.exposition(observer, {}).decode()
    theirs = generate_latest(registry).decode()
    expected = series(theirs, "c_total")
    assert series(ours, "meshlib_outbound_requests_total") == expected  # the same series, in the same order
    for labels in expected:
        assert value(ours, "meshlib_outbound_requests_total", **labels) == value(theirs, "c_total", **labels)
    assert value(ours, "meshlib_outbound_requests_total", status_class="2xx", error="") == 4  # "" counts as no code
    for bound in (*metrics.LATENCY_BUCKETS, float("inf")):
        le = floatToGoString(bound)  # type: ignore[no-untyped-call]
        ours_le = value(ours, "meshlib_outbound_request_duration_seconds_bucket", le=le)
        assert ours_le == value(theirs, "h_bucket", le=le)
    assert value(ours, "meshlib_outbound_request_duration_seconds_count") == len(_OUTCOMES) - 1
    assert value(ours, "meshlib_outbound_request_duration_seconds_sum") == pytest.approx(value(theirs, "h_sum"))
    assert value(ours, "meshlib_outbound_requests_active") == 0


def test_requests_from_many_threads_are_each_counted_once_and_scrapes_meanwhile_stay_whole() -> None:
    """With threads recording requests and another scraping all along, no request is lost or counted twice, a
    scrape's histogram count is its +Inf bucket and its request count, and the counts only grow."""
    observer = metrics.MetricsObserver()
    threads, each = 8, 401
    statuses = (200, 503)
    barrier = threading.Barrier(threads + 1)
    done = threading.Event()
    scrapes: list[str] = []

    def record() -> None:
        barrier.wait()
        for n in range(each):
            exchange = _exchange(route="r", cluster="c", endpoint=A if n % 2 else B)
            observer.started(exchange)
            exchange.status, exchange.end = statuses[n % 3 == 0], exchange.start + 0.003
            observer.finished(exchange)

    def scrape() -> None:
        barrier.wait()
        while not done.is_set() and len(scrapes) < 200:
            scrapes.append(metrics.exposition(observer, {}).decode())

    workers = [threading.Thread(target=record) for _ in range(threads)]
    scraper = threading.Thread(target=scrape)
    for thread in (*workers, scraper):
        thread.start()
    for thread in workers:
        thread.join(30)
    done.set()
    scraper.join(30)
    final = metrics.exposition(observer, {}).decode()
    total = threads * each
    assert value(final, "meshlib_outbound_requests_total") == total
    assert value(final, "meshlib_outbound_requests_total", status_class="5xx") == threads * len(range(0, each, 3))
    assert value(final, "meshlib_outbound_request_duration_seconds_count") == total
    assert value(final, "meshlib_outbound_request_duration_seconds_bucket", le="0.005") == total
    assert value(final, "meshlib_outbound_requests_active") == 0
    seen = 0.0
    assert scrapes  # the scraper ran while the threads recorded
    for text in [*scrapes, final]:
        count = value(text, "meshlib_outbound_request_duration_seconds_count")
        assert count == value(text, "meshlib_outbound_request_duration_seconds_bucket", le="+Inf")
        assert count == value(text, "meshlib_outbound_requests_total")  # every end has its duration here
        assert value(text, "meshlib_outbound_requests_active") >= 0
        assert count >= seen
        seen = count


def test_requests_nobody_scrapes_are_counted_in_batches_as_they_end() -> None:
    """The request path only records a request's start and end; they are counted a batch at a time, so a mesh that
    is never scraped holds at most a batch of records, and a read (stats, a page) counts what is left first."""
    observer = metrics.MetricsObserver()
    held = [_exchange(route="r", cluster="c", endpoint=A) for _ in range(3)]
    for exchange in held:  # in flight all along
        observer.started(exchange)
    for n in range(1000):
        exchange = _exchange(route="r" if n % 2 else "s", cluster="c", endpoint=A if n % 3 else B)
        observer.started(exchange)
        exchange.status, exchange.end = 200, exchange.start + 0.002
        observer.finished(exchange)
        pending = observer._outbound
        assert len(pending.ends) < metrics._BATCH
        assert len(pending.starts) < metrics._BATCH + len(held) + 1
    assert observer.stats() == {"series": 4 + 4 + 2}  # (r|s) × (A|B): requests and histograms; 2 routes' gauges
    page = metrics.exposition(observer, {}).decode()
    assert value(page, "meshlib_outbound_requests_total", route="r") == 500
    assert value(page, "meshlib_outbound_requests_total", route="s", endpoint=B) == len(range(0, 1000, 6))
    assert value(page, "meshlib_outbound_request_duration_seconds_bucket", le="0.005") == 1000
    assert value(page, "meshlib_outbound_requests_active", route="r") == 3
    assert value(page, "meshlib_outbound_requests_active", route="s") == 0


def test_endpoint_credentials_never_reach_a_label() -> None:
    observer = metrics.MetricsObserver()
    exchange = _exchange(route="r", cluster="c", endpoint="http://user:s3cret@10.0.0.1:80")
    observer.started(exchange)
    exchange.status, exchange.end = 200, exchange.start + 0.01
    observer.finished(exchange)
    text = metrics.exposition(observer, {}).decode()
    assert "s3cret" not in text
    assert value(text, "meshlib_outbound_requests_total", endpoint="http://[redacted]@10.0.0.1:80") == 1
    assert observer.stats() == {"series": 3}  # requests, duration, active


def _worker_page(statuses: list[int], endpoint: str = A) -> str:
    observer = metrics.MetricsObserver()
    for status in statuses:
        exchange = _exchange(route="r", cluster="c", endpoint=endpoint)
        observer.started(exchange)
        exchange.status, exchange.end = status, exchange.start + 0.02
        observer.finished(exchange)
    stats = {"clusters": {"c": {"counters": {"retries": 7}, "endpoints": {}}}}
    return metrics.exposition(observer, stats).decode()


def test_workers_pages_add_up_and_their_live_state_is_left_to_stats() -> None:
    own = metrics.MetricsObserver()
    exchange = _exchange(route="r", cluster="c", endpoint=A)
    own.started(exchange)  # in flight at worker 0
    others = [_worker_page([200, 200, 503]), _worker_page([200], endpoint=B)]
    merged_stats = {"clusters": {"c": {"counters": {"retries": 3}, "endpoints": {}}}}
    text = metrics.exposition(own, merged_stats, others).decode()
    assert value(text, "meshlib_outbound_requests_total", endpoint=A, status_class="2xx") == 2
    assert value(text, "meshlib_outbound_requests_total", endpoint=A, status_class="5xx") == 1
    assert value(text, "meshlib_outbound_requests_total", endpoint=B) == 1  # a series only one worker has
    assert value(text, "meshlib_outbound_request_duration_seconds_count") == 4
    assert value(text, "meshlib_outbound_request_duration_seconds_bucket", le="0.025") == 4
    assert value(text, "meshlib_outbound_request_duration_seconds_bucket", le="0.01") == 0
    assert value(text, "meshlib_outbound_requests_active", route="r") == 1
    # The cluster counters come from the merged /stats only, not from each worker's page again.
    assert value(text, "meshlib_cluster_retries_total", cluster="c") == 3
    assert "_created" not in text
    promtool_check(text)
