"""The observation plumbing: what the engine and the inbound doors tell observers, in which order, and when.

A recording observer stands in for a kind the config turns on (``access_log``
here), so these tests pin the contract tracing, metrics and the access log
build on, independently of any of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

import meshlib
from meshlib._config.models import MeshConfig
from meshlib._observe import registry
from meshlib._observe.exchange import Exchange, Try, outbound
from meshlib._observe.hooks import try_started
from meshlib._observe.observers import Observer, Observers
from tests.conftest import Caller, MakeMesh

pytestmark = pytest.mark.anyio


class Recorder(Observer):
    """Keeps every call; can be told to fail in one hook."""

    name = "recorder"

    def __init__(self, fail_in: str | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_in = fail_in
        self.closed = False

    def _note(self, hook: str, value: Any) -> None:
        self.calls.append((hook, value))
        if hook == self.fail_in:
            raise RuntimeError(f"recorder fails in {hook}")

    def started(self, exchange: Exchange) -> None:
        self._note("started", exchange)

    def try_started(self, exchange: Exchange, attempt: Try, request: httpx.Request) -> None:
        request.headers["x-observed-try"] = str(attempt.attempt)
        self._note("try_started", attempt)

    def try_ended(self, exchange: Exchange, attempt: Try) -> None:
        self._note("try_ended", attempt)

    def finished(self, exchange: Exchange) -> None:
        self._note("finished", exchange)

    def close(self) -> None:
        self.closed = True

    def hooks(self) -> list[str]:
        return [hook for hook, _ in self.calls]

    def exchange(self) -> Exchange:
        finished = [value for hook, value in self.calls if hook == "finished"]
        assert len(finished) == 1, self.hooks()
        exchange: Exchange = finished[0]
        return exchange


@pytest.fixture
def recorders(monkeypatch: pytest.MonkeyPatch) -> list[Recorder]:
    """Every Recorder made for ``access_log:`` sections, newest last (the real access log is not involved)."""
    made: list[Recorder] = []
    real = registry._factory

    def factory(kind: str) -> Any:
        if kind != "access_log":
            return real(kind)

        def build(section: Any, config: MeshConfig, runtime: Any) -> Recorder:
            made.append(Recorder(fail_in=section.path if section.path.startswith("fail:") else None))
            if made[-1].fail_in:
                made[-1].fail_in = section.path.removeprefix("fail:")
            return made[-1]

        return build

    monkeypatch.setattr(registry, "_factory", factory)
    return made


CONFIG: dict[str, Any] = {
    "clusters": {"ratings": {"endpoints": ["http://127.0.0.1:9090"]}},
    "routes": [
        {
            "name": "ratings",
            "match": {"host": "ratings"},
            "cluster": "ratings",
            "retry": {"attempts": 3, "retry_on": ["5xx", "connect-failure"], "backoff": {"base": "1ms", "max": "2ms"}},
        }
    ],
    "access_log": {"path": "-"},
}


def test_no_observers_unless_a_config_turns_one_on(make_mesh: MakeMesh) -> None:
    plain = dict(CONFIG)
    del plain["access_log"]
    assert make_mesh(plain).snapshot.observers is None
    assert make_mesh(plain).stats()["observability"] == {}


async def test_an_outbound_request_is_told_in_order_with_its_route_cluster_endpoint_and_bytes(
    make_mesh: MakeMesh, caller: Caller, recorders: list[Recorder], respx_mock: respx.MockRouter
) -> None:
    upstream = respx_mock.get("http://127.0.0.1:9090/r").respond(200, content=b"five stars")
    async with caller(make_mesh(CONFIG)) as client:
        response = await client.get("http://ratings/r", headers={"user-agent": "t/1", "x-request-id": "abc"})
    assert response.content == b"five stars"
    [recorder] = recorders
    assert recorder.hooks() == ["started", "try_started", "try_ended", "finished"]
    assert upstream.calls.last.request.headers["x-observed-try"] == "1"  # try_started may add headers
    exchange = recorder.exchange()
    assert (exchange.direction, exchange.door, exchange.method, exchange.authority, exchange.path) == (
        "outbound",
        "client",
        "GET",
        "ratings",
        "/r",
    )
    assert (exchange.route, exchange.cluster, exchange.endpoint) == ("ratings", "ratings", "http://127.0.0.1:9090")
    assert (exchange.status, exchange.error, exchange.bytes_received) == (200, None, len(b"five stars"))
    assert (exchange.user_agent, exchange.request_id) == ("t/1", "abc")
    assert exchange.duration is not None
    assert exchange.duration >= 0
    [attempt] = exchange.tries
    assert (attempt.attempt, attempt.status, attempt.error, attempt.reason) == (1, 200, None, None)


async def test_each_retry_is_a_try_with_the_reason_it_was_made(
    make_mesh: MakeMesh, caller: Caller, recorders: list[Recorder], respx_mock: respx.MockRouter
) -> None:
    respx_mock.get("http://127.0.0.1:9090/r").mock(
        side_effect=[httpx.Response(503), httpx.ConnectError("refused"), httpx.Response(200)]
    )
    async with caller(make_mesh(CONFIG)) as client:
        assert (await client.get("http://ratings/r")).status_code == 200
    exchange = recorders[0].exchange()
    assert [(t.attempt, t.status, t.error, t.reason) for t in exchange.tries] == [
        (1, 503, None, None),
        (2, None, "upstream_connect_failure", "503"),
        (3, 200, None, "upstream_connect_failure"),
    ]
    assert exchange.retries == 2
    assert recorders[0].hooks().count("try_started") == 3


async def test_a_failed_request_ends_with_the_mesh_error_code(
    make_mesh: MakeMesh, caller: Caller, recorders: list[Recorder], respx_mock: respx.MockRouter
) -> None:
    respx_mock.get("http://127.0.0.1:9090/r").mock(side_effect=httpx.ConnectError("refused"))
    async with caller(make_mesh({**CONFIG, "routes": []})) as client:
        with pytest.raises(meshlib.UpstreamConnectError):
            await client.get("http://ratings/r")
    exchange = recorders[0].exchange()
    assert (exchange.status, exchange.error, exchange.route) == (None, "upstream_connect_failure", "cluster:ratings")
    assert exchange.end is not None


async def test_a_streamed_response_ends_when_its_body_is_closed(
    make_mesh: MakeMesh, caller: Caller, recorders: list[Recorder], respx_mock: respx.MockRouter
) -> None:
    chunks = [b"a" * 10, b"b" * 5]

    def stream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_Stream(chunks))

    respx_mock.get("http://127.0.0.1:9090/s").mock(side_effect=stream)
    async with caller(make_mesh(CONFIG)) as client:
        response = await client.open_stream("GET", "http://ratings/s")
        assert "finished" not in recorders[0].hooks()  # the head is here, the body is not
        assert await client.read_response(response) == b"a" * 10 + b"b" * 5
        await client.close_response(response)
    exchange = recorders[0].exchange()
    assert exchange.bytes_received == 15


class _Stream(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks

    async def __aiter__(self) -> Any:
        for chunk in self.chunks:
            yield chunk


@pytest.mark.parametrize("hook", ["started", "try_started", "try_ended", "finished"])
async def test_an_observer_that_raises_never_fails_the_request(
    make_mesh: MakeMesh,
    caller: Caller,
    recorders: list[Recorder],
    respx_mock: respx.MockRouter,
    hook: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    respx_mock.get("http://127.0.0.1:9090/r").respond(200, content=b"ok")
    async with caller(make_mesh({**CONFIG, "access_log": {"path": f"fail:{hook}"}})) as client:
        for _ in range(3):
            assert (await client.get("http://ratings/r")).content == b"ok"
    assert recorders[0].hooks().count("finished") == 3
    warned = [r for r in caplog.records if r.name == "meshlib.observe" and r.levelname == "WARNING"]
    assert len(warned) == 1  # once, not per request
    assert hook in warned[0].getMessage()


def test_a_reload_keeps_an_unchanged_observer_and_closes_a_replaced_one(
    make_mesh: MakeMesh, recorders: list[Recorder], tmp_path: Any
) -> None:
    mesh = make_mesh(CONFIG)
    path = tmp_path / "mesh.yaml"
    import yaml

    path.write_text(yaml.safe_dump(CONFIG))
    mesh.reload(path)
    assert len(recorders) == 1  # same section, same service: kept
    assert not recorders[0].closed
    path.write_text(yaml.safe_dump({**CONFIG, "access_log": {"path": "-", "format": "json"}, "service": "b"}))
    mesh.reload(path)
    assert len(recorders) == 2
    assert recorders[0].closed
    assert not recorders[1].closed
    without = dict(CONFIG)
    del without["access_log"]
    path.write_text(yaml.safe_dump(without))
    mesh.reload(path)
    assert recorders[1].closed
    assert mesh.snapshot.observers is None
    mesh.close()


def test_closing_the_mesh_closes_its_observers(make_mesh: MakeMesh, recorders: list[Recorder]) -> None:
    mesh = make_mesh(CONFIG)
    mesh.close()
    assert recorders[0].closed


INBOUND: dict[str, Any] = {
    "service": "reviews",
    "inbound": {"authorization": [{"name": "no-admin", "action": "deny", "rules": [{"to": {"paths": ["/admin/*"]}}]}]},
    "access_log": {"path": "-"},
}


async def _asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello", "more_body": True})
    await send({"type": "http.response.body", "body": b"!"})


async def test_the_asgi_door_tells_each_request_and_its_denials(make_mesh: MakeMesh, recorders: list[Recorder]) -> None:
    from meshlib.asgi import MeshMiddleware

    app = MeshMiddleware(_asgi_app, mesh=make_mesh(INBOUND))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://reviews") as client:
        assert (await client.get("/books?id=1")).status_code == 201
        assert (await client.get("/admin/x")).status_code == 403
    first, second = [value for hook, value in recorders[0].calls if hook == "finished"]
    assert recorders[0].hooks() == ["started", "finished", "started", "finished"]
    assert (first.direction, first.door, first.path, first.status, first.bytes_sent) == (
        "inbound",
        "asgi",
        "/books?id=1",
        201,
        6,
    )
    assert (second.status, second.error, second.denied_by) == (403, "forbidden", "no-admin")


def test_the_wsgi_door_tells_each_request_when_its_body_is_closed(
    make_mesh: MakeMesh, recorders: list[Recorder]
) -> None:
    from meshlib.wsgi import MeshMiddleware

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("202 Accepted", [("content-type", "text/plain")])
        return [b"queued", b"!"]

    wrapped = MeshMiddleware(app, mesh=make_mesh(INBOUND))
    with httpx.Client(transport=httpx.WSGITransport(app=wrapped), base_url="http://reviews") as client:
        assert client.get("/jobs").status_code == 202
        assert client.get("/admin/y").status_code == 403
    first, second = [value for hook, value in recorders[0].calls if hook == "finished"]
    assert (first.door, first.path, first.status, first.bytes_sent) == ("wsgi", "/jobs", 202, 7)
    assert (second.status, second.denied_by) == (403, "no-admin")


def test_a_reload_whose_new_observer_fails_to_build_changes_no_observer(
    make_mesh: MakeMesh, recorders: list[Recorder], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    mesh = make_mesh(CONFIG)
    kept = recorders[0]

    def failing(kind: str) -> Any:
        # metrics (built first) succeeds, then the access log (a new one: the service changed) fails.
        def build(section: Any, config: MeshConfig, runtime: Any) -> Observer:
            if kind == "access_log":
                raise meshlib.ConfigError([("access_log.path", "cannot open")])
            recorders.append(Recorder())
            return recorders[-1]

        return build

    monkeypatch.setattr(registry, "_factory", failing)
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "service": "renamed", "metrics": {}}))
    with pytest.raises(meshlib.ConfigError):
        mesh.reload(path)
    assert len(recorders) == 2  # the new metrics observer was built, then dropped with the failed reload
    assert recorders[1].closed
    assert not kept.closed
    assert mesh.snapshot.observers is not None
    assert mesh.snapshot.observers.members == (kept,)


async def test_the_protocol_is_what_each_side_spoke(
    make_mesh: MakeMesh, recorders: list[Recorder], respx_mock: respx.MockRouter
) -> None:
    respx_mock.get("http://127.0.0.1:9090/r").respond(200, extensions={"http_version": b"HTTP/1.1"})
    with make_mesh(CONFIG).client() as client:
        client.get("http://ratings/r")
    assert recorders[0].exchange().protocol == "HTTP/1.1"

    from meshlib.asgi import MeshMiddleware as AsgiMiddleware
    from meshlib.wsgi import MeshMiddleware as WsgiMiddleware

    app = AsgiMiddleware(_asgi_app, mesh=make_mesh(INBOUND))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://reviews") as inbound:
        await inbound.get("/")
    assert recorders[1].exchange().protocol == "HTTP/1.1"

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    wsgi = WsgiMiddleware(wsgi_app, mesh=make_mesh(INBOUND))
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_PROTOCOL": "HTTP/1.0", "wsgi.url_scheme": "http"}
    body = wsgi(environ, lambda status, headers, exc_info=None: None)
    list(body)
    body.close()  # type: ignore[attr-defined]
    assert recorders[2].exchange().protocol == "HTTP/1.0"


async def test_request_bodies_are_counted_both_ways(
    make_mesh: MakeMesh, recorders: list[Recorder], respx_mock: respx.MockRouter
) -> None:
    respx_mock.post("http://127.0.0.1:9090/r").respond(200)
    with make_mesh(CONFIG).client() as client:
        client.post("http://ratings/r", content=b"x" * 42)
    assert recorders[0].exchange().bytes_sent == 42  # outbound: what the caller sent

    from meshlib.asgi import MeshMiddleware as AsgiMiddleware
    from meshlib.wsgi import MeshMiddleware as WsgiMiddleware

    async def reading_app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await _asgi_app(scope, receive, send)

    async def chunks() -> Any:
        yield b"a" * 10
        yield b"b" * 7

    app = AsgiMiddleware(reading_app, mesh=make_mesh(INBOUND))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://reviews") as inbound:
        await inbound.post("/upload", content=chunks())  # chunked: no Content-Length
    assert recorders[1].exchange().bytes_received == 17

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    wsgi = WsgiMiddleware(wsgi_app, mesh=make_mesh(INBOUND))
    with httpx.Client(transport=httpx.WSGITransport(app=wsgi), base_url="http://reviews") as client:
        client.post("/upload", content=b"y" * 9)
    assert recorders[2].exchange().bytes_received == 9


def test_what_an_observer_makes_current_in_a_wsgi_request_never_stays_in_the_server_thread(
    make_mesh: MakeMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextvars

    from meshlib.wsgi import MeshMiddleware as WsgiMiddleware

    current: contextvars.ContextVar[str | None] = contextvars.ContextVar("current", default=None)
    seen_by_app: list[str | None] = []

    class Attaching(Observer):
        # As tracing does: make the request's span current in started, restore it in finished.
        def started(self, exchange: Exchange) -> None:
            exchange.slots[self] = current.set(exchange.path)

        def finished(self, exchange: Exchange) -> None:
            current.reset(exchange.slots.pop(self))

    monkeypatch.setattr(registry, "_factory", lambda kind: lambda section, config, runtime: Attaching())

    def app(environ: Any, start_response: Any) -> Any:
        seen_by_app.append(current.get())
        start_response("200 OK", [])
        return iter([b"a", b"b"])

    wsgi = WsgiMiddleware(app, mesh=make_mesh(INBOUND))
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/first", "wsgi.url_scheme": "http"}
    body = wsgi(environ, lambda status, headers, exc_info=None: None)
    chunks = iter(body)
    next(chunks)  # a server that reads part of the body, then stops without close() (the client reset)
    assert seen_by_app == ["/first"]
    assert current.get() is None  # nothing of that request is current in this thread now
    del chunks
    wsgi({**environ, "PATH_INFO": "/second"}, lambda status, headers, exc_info=None: None)
    assert seen_by_app == ["/first", "/second"]


class _Breaking(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Sends one chunk, then the connection breaks."""

    def __iter__(self) -> Iterator[bytes]:
        yield b"12345"
        raise httpx.ReadError("connection reset mid-body")

    async def __aiter__(self) -> Any:
        yield b"12345"
        raise httpx.ReadError("connection reset mid-body")


async def test_a_body_that_breaks_ends_the_request_with_its_error_and_the_bytes_it_gave(
    make_mesh: MakeMesh, caller: Caller, recorders: list[Recorder], respx_mock: respx.MockRouter
) -> None:
    respx_mock.get("http://127.0.0.1:9090/b").mock(side_effect=lambda request: httpx.Response(200, stream=_Breaking()))
    async with caller(make_mesh(CONFIG)) as client:
        response = await client.open_stream("GET", "http://ratings/b")
        with pytest.raises(meshlib.UpstreamResetError):
            await client.read_response(response)
    exchange = recorders[0].exchange()
    assert (exchange.status, exchange.error, exchange.bytes_received) == (200, "upstream_reset", 5)


class Keeper(Observer):
    """A slotted observer: keeps state for the requests under /keep only, so it hears of no other."""

    name = "keeper"
    slotted = True

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def started(self, exchange: Exchange) -> None:
        if exchange.path.startswith("/keep"):
            exchange.slots[self] = "kept"

    def try_started(self, exchange: Exchange, attempt: Try, request: httpx.Request) -> None:
        attempt.slots[self] = exchange.slots[self] + "-try"
        self.seen.append(("try_started", exchange.path))

    def try_ended(self, exchange: Exchange, attempt: Try) -> None:
        self.seen.append(("try_ended", attempt.slots.pop(self)))

    def finished(self, exchange: Exchange) -> None:
        self.seen.append(("finished", exchange.slots.pop(self)))


def test_a_slotted_observer_hears_only_of_the_requests_it_kept_state_for_and_others_make_no_slots() -> None:
    keeper = Keeper()
    observers = Observers([keeper])
    made = {}
    for path in ("/keep", "/skip"):
        request = httpx.Request("GET", f"http://ratings{path}")
        exchange = outbound(request, "r", "client")
        observers.started(exchange)
        attempt = try_started(exchange, observers, request, 1, "ratings", "http://10.0.0.1:80")
        attempt.ended(exchange, httpx.Response(200))
        observers.finished(exchange)
        made[path] = (exchange._slots, attempt._slots)
    assert keeper.seen == [("try_started", "/keep"), ("try_ended", "kept-try"), ("finished", "kept")]
    assert made["/keep"] == ({}, {})  # made when asked, emptied by the observer
    assert made["/skip"] == (None, None)  # never asked: never made
    exchange = outbound(httpx.Request("GET", "http://ratings/"), "r", "client")
    exchange.slots = {"mine": 1}  # an observer may still replace them whole
    assert exchange.slots == {"mine": 1}


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"Host", b"api.internal:8080")],
        [(b"host", b"a"), (b"X-Other", b"1"), (b"HOST", b"b")],  # repeated: joined, as Headers.get joins them
        [(b"Host", "caf\u00e9.example".encode("latin-1"))],  # beyond ASCII: httpx reads it as Latin-1
        [(b"X-Request-Id", b"r-1"), (b"User-Agent", b"t/1"), (b"content-length", b"3")],
    ],
    ids=["none", "one", "repeated", "latin-1", "no-host"],
)
def test_an_exchange_reads_the_request_s_headers_and_authority_as_httpx_gives_them(
    headers: list[tuple[bytes, bytes]],
) -> None:
    request = httpx.Request("GET", "http://svc.local:9000/p?q=1", headers=headers)
    exchange = outbound(request, "r", "client")
    assert exchange.authority == request.headers.get("host")
    assert exchange.headers == list(request.headers.raw)
    assert exchange.request_id == request.headers.get("x-request-id")
    assert exchange.user_agent == request.headers.get("user-agent")
