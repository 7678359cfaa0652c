"""mode="sidecar" clients against a fake sidecar: absolute-form requests out, MeshErrors back from the wire format.

The fake sidecar is a uvicorn app on loopback that answers as ``meshlib proxy``
would (``_wire.error_head``), chosen by the request's host: ``mesh-error``
answers the error named in ``x-stub-code``, ``ratelimited`` a hand-written 429,
``upstream-404`` and ``upstream-503`` an upstream's own answer (no
``x-meshlib-error``), and any other host echoes what arrived.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

import meshlib
from meshlib._errors import MeshError, RequestTimeoutError, TimeoutKind, UpstreamConnectError, UpstreamResetError
from meshlib._frontdoors.sidecar_client import DEFAULT_SIDECAR, SIDECAR_ENV, AsyncSidecarTransport, SidecarTransport
from meshlib._wire import TIMEOUT_HEADER, TIMEOUT_VALUE_HEADER, error_chunk, error_from_chunk, error_head
from tests.conftest import (
    ConnectionHandler,
    MakeMesh,
    MeshCaller,
    Receive,
    Scope,
    Send,
    raw_server,
    read_body,
    read_request_head,
    start_server,
)
from tests.failing_upstreams import reset_on_close

pytestmark = pytest.mark.anyio

ERROR_CLASSES = [
    meshlib.RouteNotFoundError,
    meshlib.NoHealthyUpstreamError,
    meshlib.RateLimitedError,
    meshlib.CircuitOpenError,
    meshlib.OverloadedError,
    meshlib.UpstreamConnectError,
    meshlib.UpstreamResetError,
    meshlib.RequestTimeoutError,
]
CLASSES_BY_CODE = {cls.code: cls for cls in ERROR_CLASSES}
OVERLOADED = {"x-meshlib-error": "overloaded"}


class FakeSidecar:
    """The stub's ASGI app and what it received: ``(method, raw_path, query, headers)`` per request."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = await read_body(receive)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        seen = {
            "method": scope["method"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "headers": headers,
            "body": body.decode("latin-1"),
        }
        with self.lock:
            self.received.append(seen)
        status, head, content = self.answer(headers.get("host", ""), headers, seen)
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": content})

    @staticmethod
    def answer(
        host: str, headers: dict[str, str], seen: dict[str, Any]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if host == "mesh-error":
            code = headers["x-stub-code"]
            cls = CLASSES_BY_CODE.get(code)
            if cls is None:  # a code this client version does not know
                body = f"{code}: something new\n".encode()
                return 500, [(b"x-meshlib-error", code.encode()), (b"content-length", str(len(body)).encode())], body
            error = cls("the stub says so", route="reviews-route", cluster="reviews-v1")
            if isinstance(error, meshlib.RequestTimeoutError):
                error.per_try = headers.get("x-stub-per-try") == "1"
            return error_head(error)
        if host == "ratelimited":
            body = b"rate_limited: rate limit '3/minute' of cluster reviews reached\n"
            head = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"x-meshlib-error", b"rate_limited"),
                (b"x-meshlib-route", b"reviews"),
                (b"x-meshlib-cluster", b"reviews"),
            ]
            return 429, head, body
        if host == "upstream-404":
            return 404, [(b"content-type", b"text/plain"), (b"x-upstream", b"yes")], b"no such review"
        if host == "upstream-503":
            return 503, [(b"content-type", b"text/plain"), (b"retry-after", b"1")], b"upstream is busy"
        return 200, [(b"content-type", b"application/json")], json.dumps(seen).encode()


@pytest.fixture(scope="module")
def fake_sidecar() -> Iterator[tuple[str, FakeSidecar]]:
    app = FakeSidecar()
    server = start_server(app, "fake-sidecar")
    try:
        yield server.url, app
    finally:
        server.stop()


async def get(mode: str, mesh: meshlib.Mesh, url: str, **client_kwargs: Any) -> httpx.Response:
    """One request through a ``mode="sidecar"`` client (``mode`` is the test's sync or async), body read."""
    headers = client_kwargs.pop("request_headers", None)
    if mode == "sync":
        with mesh.client(mode="sidecar", **client_kwargs) as client:
            return client.get(url, headers=headers)
    async with mesh.async_client(mode="sidecar", **client_kwargs) as aclient:
        return await aclient.get(url, headers=headers)


async def test_requests_reach_the_sidecar_in_absolute_form(
    mode: str, make_mesh: MakeMesh, fake_sidecar: tuple[str, FakeSidecar]
) -> None:
    url, stub = fake_sidecar
    response = await get(
        mode,
        make_mesh({"allow_empty": True}),
        "http://reviews/api/reviews/1?v=2",
        sidecar=url,
        request_headers={"x-app": "1"},
    )
    assert response.status_code == 200
    assert str(response.url) == "http://reviews/api/reviews/1?v=2"
    seen = response.json()
    assert (seen["method"], seen["raw_path"], seen["query"]) == ("GET", "http://reviews/api/reviews/1", "v=2")
    assert seen["headers"]["host"] == "reviews"
    assert seen["headers"]["x-app"] == "1"
    assert stub.received[-1] == seen


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.code)
async def test_each_error_answer_raises_its_mesh_error_class(
    mode: str, make_mesh: MakeMesh, fake_sidecar: tuple[str, FakeSidecar], cls: type[MeshError]
) -> None:
    url, _ = fake_sidecar
    with pytest.raises(MeshError) as raised:
        await get(
            mode,
            make_mesh({"allow_empty": True}),
            "http://mesh-error/x",
            sidecar=url,
            request_headers={"x-stub-code": cls.code},
        )
    error = raised.value
    assert type(error) is cls
    assert (error.code, error.route, error.cluster) == (cls.code, "reviews-route", "reviews-v1")
    assert str(error) == "the stub says so"
    assert str(error.request.url) == "http://mesh-error/x"


@pytest.mark.parametrize(("per_try_header", "per_try"), [("1", True), ("0", False)], ids=["per-try", "request"])
async def test_a_timeout_answer_tells_per_try_from_the_whole_request(
    mode: str, make_mesh: MakeMesh, fake_sidecar: tuple[str, FakeSidecar], per_try_header: str, per_try: bool
) -> None:
    url, _ = fake_sidecar
    headers = {"x-stub-code": "timeout", "x-stub-per-try": per_try_header}
    with pytest.raises(meshlib.RequestTimeoutError) as raised:
        await get(mode, make_mesh({"allow_empty": True}), "http://mesh-error/x", sidecar=url, request_headers=headers)
    assert raised.value.per_try is per_try
    assert isinstance(raised.value, httpx.TimeoutException)


async def test_a_hand_written_429_answer_is_rate_limited_error(
    mode: str, make_mesh: MakeMesh, fake_sidecar: tuple[str, FakeSidecar]
) -> None:
    url, _ = fake_sidecar
    with pytest.raises(meshlib.RateLimitedError) as raised:
        await get(mode, make_mesh({"allow_empty": True}), "http://ratelimited/x", sidecar=url)
    assert (raised.value.route, raised.value.cluster) == ("reviews", "reviews")
    assert str(raised.value) == "rate limit '3/minute' of cluster reviews reached"


async def test_an_unknown_error_code_raises_the_base_mesh_error(
    mode: str, make_mesh: MakeMesh, fake_sidecar: tuple[str, FakeSidecar]
) -> None:
    url, _ = fake_sidecar
    with pytest.raises(MeshError) as raised:
        await get(
            mode,
            make_mesh({"allow_empty": True}),
            "http://mesh-error/x",
            sidecar=url,
            request_headers={"x-stub-code": "brand_new"},
        )
    assert type(raised.value) is MeshError
    assert str(raised.value) == "something new"


@pytest.mark.parametrize(
    ("host", "status", "body", "header"),
    [
        ("upstream-404", 404, "no such review", ("x-upstream", "yes")),
        ("upstream-503", 503, "upstream is busy", ("retry-after", "1")),
    ],
)
async def test_upstream_answers_without_the_error_header_pass_through_unchanged(
    mode: str,
    make_mesh: MakeMesh,
    fake_sidecar: tuple[str, FakeSidecar],
    host: str,
    status: int,
    body: str,
    header: tuple[str, str],
) -> None:
    url, _ = fake_sidecar
    response = await get(mode, make_mesh({"allow_empty": True}), f"http://{host}/x", sidecar=url)
    assert (response.status_code, response.text) == (status, body)
    assert response.headers[header[0]] == header[1]


async def test_an_unreachable_sidecar_is_a_connect_error_naming_it(
    mode: str, make_mesh: MakeMesh, free_port: int
) -> None:
    sidecar = f"http://127.0.0.1:{free_port}"
    with pytest.raises(httpx.ConnectError) as raised:
        await get(mode, make_mesh({"allow_empty": True}), "http://reviews/x", sidecar=sidecar)
    assert not isinstance(raised.value, MeshError)
    assert str(raised.value).startswith(f"meshlib sidecar at {sidecar} is not reachable: ")
    assert isinstance(raised.value.__cause__, httpx.ConnectError)
    assert str(raised.value.request.url) == "http://reviews/x"


async def test_the_sidecar_comes_from_the_environment_and_proxy_variables_do_not_override_it(
    mode: str,
    make_mesh: MakeMesh,
    fake_sidecar: tuple[str, FakeSidecar],
    free_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, stub = fake_sidecar
    monkeypatch.setenv(SIDECAR_ENV, url)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port}")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    response = await get(mode, make_mesh({"allow_empty": True}), "http://reviews/from-env")
    assert response.json()["raw_path"] == "http://reviews/from-env"
    assert stub.received[-1]["raw_path"] == "http://reviews/from-env"


def test_the_default_sidecar_is_loopback_15001(make_mesh: MakeMesh, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SIDECAR_ENV, raising=False)
    mesh = make_mesh({"allow_empty": True})
    with mesh.client(mode="sidecar") as client:
        assert isinstance(client._transport, SidecarTransport)
        assert client._transport.sidecar == DEFAULT_SIDECAR == "http://127.0.0.1:15001"
    with mesh.client(mode="sidecar", sidecar="http://[::1]:16001/") as client:
        assert isinstance(client._transport, SidecarTransport)
        assert client._transport.sidecar == "http://[::1]:16001"


async def test_the_async_client_gets_the_async_transport(make_mesh: MakeMesh) -> None:
    async with make_mesh({"allow_empty": True}).async_client(mode="sidecar") as client:
        assert isinstance(client._transport, AsyncSidecarTransport)
        assert client._mounts == {}


async def test_sidecar_mode_runs_no_local_engine(
    mode: str, make_mesh: MakeMesh, fake_sidecar: tuple[str, FakeSidecar]
) -> None:
    # In process this config refuses every host; through the sidecar, the sidecar's config decides.
    url, _ = fake_sidecar
    mesh = make_mesh({"outbound_policy": "registry_only", "allow_empty": True})
    response = await get(mode, mesh, "http://nobody-knows/x", sidecar=url)
    assert response.json()["raw_path"] == "http://nobody-knows/x"


async def test_client_keyword_arguments_still_work(make_mesh: MakeMesh, fake_sidecar: tuple[str, FakeSidecar]) -> None:
    url, _ = fake_sidecar
    mesh = make_mesh({"allow_empty": True})
    kwargs: dict[str, Any] = {
        "sidecar": url,
        "headers": {"x-app": "2"},
        "base_url": "http://reviews/api",
        "trust_env": False,
        "limits": httpx.Limits(max_connections=2),
        "timeout": 3,
    }
    with mesh.client(mode="sidecar", **kwargs) as client:
        assert client.trust_env is False
        assert client.timeout == httpx.Timeout(3)
        seen = client.get("/x").json()
    async with mesh.async_client(mode="sidecar", **kwargs) as aclient:
        aseen = (await aclient.get("/x")).json()
    for got in (seen, aseen):
        assert got["raw_path"] == "http://reviews/api/x"
        assert got["headers"]["x-app"] == "2"


def test_bad_arguments_are_refused(make_mesh: MakeMesh) -> None:
    mesh = make_mesh({"allow_empty": True})
    with pytest.raises(ValueError, match="mode must be"):
        mesh.client(mode="outer-space")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sidecar= needs mode='sidecar'"):
        mesh.async_client(sidecar="http://127.0.0.1:15001")
    refused: list[dict[str, Any]] = [{"transport": httpx.HTTPTransport()}, {"mounts": {}}, {"proxy": "http://h:1"}]
    for kwargs in refused:
        with pytest.raises(TypeError, match="cannot be used with mode='sidecar'"):
            mesh.client(mode="sidecar", **kwargs)
    for bad in ("https://127.0.0.1:15001", "http://127.0.0.1:15001/path", "socks5://127.0.0.1:1", "http://u:p@h:1"):
        with pytest.raises(ValueError, match="invalid sidecar URL"):
            mesh.client(mode="sidecar", sidecar=bad)
    mesh.close()
    with pytest.raises(RuntimeError, match="closed"):
        mesh.client(mode="sidecar")


class HugeBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A 1 MB body that records being closed."""

    def __init__(self) -> None:
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(1024):
            yield b"x" * 1024

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(1024):
            yield b"x" * 1024

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def test_a_huge_error_body_is_read_only_up_to_a_cap() -> None:
    body = HugeBody()
    transport = SidecarTransport(
        inner=httpx.MockTransport(lambda _: httpx.Response(503, headers=OVERLOADED, stream=body))
    )
    with httpx.Client(transport=transport) as client, pytest.raises(meshlib.OverloadedError) as raised:
        client.get("http://reviews/x")
    assert len(str(raised.value)) == 64 * 1024
    assert body.closed


async def test_a_huge_error_body_is_read_only_up_to_a_cap_async() -> None:
    body = HugeBody()
    handler = httpx.MockTransport(lambda _: httpx.Response(503, headers=OVERLOADED, stream=body))
    async with httpx.AsyncClient(transport=AsyncSidecarTransport(inner=handler)) as client:
        with pytest.raises(meshlib.OverloadedError) as raised:
            await client.get("http://reviews/x")
    assert len(str(raised.value)) == 64 * 1024
    assert body.closed


async def test_https_urls_go_to_the_sidecar_as_a_connect_tunnel(mode: str, make_mesh: MakeMesh) -> None:
    heads: list[bytes] = []

    def refuse_tunnel(conn: Any, stop: threading.Event) -> None:
        heads.append(read_request_head(conn))
        conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    with raw_server(refuse_tunnel) as server, pytest.raises(httpx.ProxyError):
        await get(mode, make_mesh({"allow_empty": True}), "https://reviews/x", sidecar=server.url)
    assert heads[0].startswith(b"CONNECT reviews:443 HTTP/1.1\r\n")


# --- which timeout ran out, over the wire ------------------------------------------------------------------------

TRY_1 = "during try 1 of route 'reviews-route', cluster 'reviews-v1' (endpoint http://127.0.0.1:9081)"


def ran_out(
    cls: type[RequestTimeoutError | UpstreamConnectError],
    event: str,
    kind: TimeoutKind | None = None,
    seconds: float | None = None,
    route: str = "reviews-route",
) -> RequestTimeoutError | UpstreamConnectError:
    """An error as the sidecar's engine raises it: ``{event} {TRY_1}``."""
    return cls(f"{event} {TRY_1}", route=route, cluster="reviews-v1", kind=kind, timeout=seconds)


TIMED_OUT = [
    ran_out(RequestTimeoutError, "request timeout (1s) ran out", "request", 1.0),
    ran_out(RequestTimeoutError, "per-try timeout (250ms) ran out", "per_try", 0.25),
    ran_out(RequestTimeoutError, "client timeout (1234ms) ran out", "client", 1.234),
    ran_out(RequestTimeoutError, "timeout ran out"),  # no limit known
    ran_out(UpstreamConnectError, "connect timeout (100ms) ran out", "connect", 0.1),
    ran_out(UpstreamConnectError, "per-try timeout (50ms) ran out", "per_try", 0.05),
    ran_out(UpstreamConnectError, "connection refused"),  # not a timeout
    ran_out(UpstreamConnectError, "connection refused", route="revues d'été"),  # a name beyond ASCII
]


def get_sync(transport: httpx.BaseTransport, url: str) -> httpx.Response:
    with httpx.Client(transport=transport) as client:
        return client.get(url)


async def raise_sidecar_answer(mode: str, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Send one request through a sidecar transport (sync or async) whose sidecar gives this answer."""

    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, content=body)

    if mode == "sync":
        get_sync(SidecarTransport(inner=httpx.MockTransport(answer)), "http://reviews/x")
    else:
        async with httpx.AsyncClient(transport=AsyncSidecarTransport(inner=httpx.MockTransport(answer))) as aclient:
            await aclient.get("http://reviews/x")


@pytest.mark.parametrize("sent", TIMED_OUT, ids=lambda e: f"{e.code}-{e.kind}-{e.route}")
async def test_the_timeout_that_ran_out_and_the_message_survive_the_wire(
    mode: str, sent: RequestTimeoutError | UpstreamConnectError
) -> None:
    """What the sidecar's engine raised is what the client raises: class, message, kind, timeout, per_try."""
    with pytest.raises(MeshError) as raised:
        await raise_sidecar_answer(mode, *error_head(sent))
    got = raised.value
    assert type(got) is type(sent)
    assert isinstance(got, RequestTimeoutError | UpstreamConnectError)
    assert (str(got), got.route, got.kind, got.timeout) == (str(sent), sent.route, sent.kind, sent.timeout)
    assert got.cluster == sent.cluster
    if isinstance(sent, RequestTimeoutError):
        assert isinstance(got, RequestTimeoutError)
        assert got.per_try is sent.per_try is (sent.kind != "request")


def test_the_timeout_headers_name_the_kind_and_the_configured_duration() -> None:
    _, headers, body = error_head(TIMED_OUT[1])
    assert (TIMEOUT_HEADER.encode(), b"per-try") in headers
    assert (TIMEOUT_VALUE_HEADER.encode(), b"250ms") in headers
    assert body == f"timeout: per-try timeout (250ms) ran out {TRY_1}\n".encode()
    _, refused, _ = error_head(TIMED_OUT[6])
    assert not [name for name, _ in refused if name.startswith(TIMEOUT_HEADER.encode())]


@pytest.mark.parametrize(
    ("extra", "kind", "seconds", "per_try"),
    [
        ([(b"x-meshlib-timeout", b"request")], "request", None, False),  # an older sidecar: no value
        ([], None, None, True),  # an older sidecar's per-try timeout, or no kind known
        ([(b"x-meshlib-timeout", b"deadline-of-the-future")], None, None, True),  # a newer sidecar's kind
        ([(b"x-meshlib-timeout", b"per-try"), (b"x-meshlib-timeout-value", b"soon")], "per_try", None, True),
    ],
    ids=["kind-only", "nothing", "unknown-kind", "unreadable-value"],
)
async def test_timeout_headers_this_client_cannot_fully_read_still_give_the_error(
    mode: str, extra: list[tuple[bytes, bytes]], kind: str | None, seconds: float | None, per_try: bool
) -> None:
    headers = [(b"x-meshlib-error", b"timeout"), *extra]
    with pytest.raises(RequestTimeoutError) as raised:
        await raise_sidecar_answer(mode, 504, headers, b"timeout: it took too long\n")
    assert (str(raised.value), raised.value.kind, raised.value.timeout) == ("it took too long", kind, seconds)
    assert raised.value.per_try is per_try


# --- a body that fails after its head (docs/sidecar.md, "When the body fails") -----------------------------------

BODY_TIMEOUT = ran_out(RequestTimeoutError, "per-try timeout (300ms) ran out", "per_try", 0.3, route="revues d'été")
BODY_RESET = UpstreamResetError(f"connection reset by peer {TRY_1}", route="reviews-route", cluster="reviews-v1")


def failing_sidecar(ending: bytes | None, *, reset: bool, heads: list[bytes]) -> ConnectionHandler:
    """A fake sidecar whose answer's body fails: a 200 head and ``hello``, then ``ending`` (an error chunk, the
    head chunked for it) or nothing (a Content-Length head), then the connection closes (FIN) or resets (RST)."""

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        heads.append(read_request_head(conn))
        if ending is None:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
        else:
            head = b"HTTP/1.1 200 OK\r\nx-meshlib-content-length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
            conn.sendall(head + b"5\r\nhello\r\n" + ending)
        time.sleep(0.02)  # the client reads the head first
        if reset:
            reset_on_close(conn)

    return handle


@pytest.mark.parametrize(
    ("ending", "reset", "expected"),
    [
        (error_chunk(BODY_TIMEOUT), False, BODY_TIMEOUT),
        (error_chunk(BODY_RESET), True, BODY_RESET),
        (
            None,
            False,
            RequestTimeoutError(
                "a timeout ran out while the response body was read: peer closed connection without sending"
                " complete message body (received 5 bytes, expected 100)"
            ),
        ),
        (
            None,
            True,
            UpstreamResetError("the upstream failed while the response body was read: connection reset by peer"),
        ),
    ],
    ids=["error-chunk-then-fin", "error-chunk-then-rst", "fin-alone-is-a-timeout", "rst-alone-is-an-upstream-failure"],
)
async def test_a_body_that_fails_raises_what_the_sidecar_says_failed_it(
    mode: str, make_mesh: MakeMesh, ending: bytes | None, reset: bool, expected: MeshError
) -> None:
    heads: list[bytes] = []
    with raw_server(failing_sidecar(ending, reset=reset, heads=heads)) as sidecar:
        async with MeshCaller(mode, make_mesh({"allow_empty": True}), mode="sidecar", sidecar=sidecar.url) as client:
            response = await client.open_stream("GET", "http://reviews/x")
            # The head as the upstream sent it: the sidecar chunked the body only for the error chunk's sake.
            assert (response.status_code, response.headers.get("content-length")) == (200, "100")
            assert "transfer-encoding" not in response.headers
            assert "x-meshlib-content-length" not in response.headers
            with pytest.raises(MeshError) as raised:
                await client.read_response(response)
            await client.close_response(response)
    got = raised.value
    assert (type(got), str(got), got.route, got.cluster) == (
        type(expected),
        str(expected),
        expected.route,
        expected.cluster,
    )
    if isinstance(expected, RequestTimeoutError):
        assert isinstance(got, RequestTimeoutError)
        assert (got.kind, got.timeout, got.per_try) == (expected.kind, expected.timeout, expected.per_try)
    assert str(got.request.url) == "http://reviews/x"
    # The mark reaches the sidecar alone: the caller's request does not carry it.
    assert b"\r\nx-meshlib-client: 1\r\n" in heads[0]
    assert "x-meshlib-client" not in response.request.headers


async def get_through(mode: str, sidecar: str, url: str) -> None:
    """GET ``url`` through a sidecar transport built on a plain httpx transport of the caller's own."""
    if mode == "sync":
        get_sync(SidecarTransport(inner=httpx.HTTPTransport(proxy=sidecar)), url)
        return
    inner = httpx.AsyncHTTPTransport(proxy=sidecar)
    async with httpx.AsyncClient(transport=AsyncSidecarTransport(inner=inner)) as aclient:
        await aclient.get(url)


async def test_a_transport_of_its_own_cannot_read_error_chunks_and_falls_back_on_the_fin(mode: str) -> None:
    with (
        raw_server(failing_sidecar(error_chunk(BODY_RESET), reset=False, heads=[])) as sidecar,
        pytest.raises(RequestTimeoutError) as raised,
    ):
        await get_through(mode, sidecar.url, "http://reviews/x")
    assert str(raised.value).startswith("a timeout ran out while the response body was read")


def test_an_error_chunk_counts_only_as_the_last_line_received() -> None:
    request = httpx.Request("GET", "http://reviews/x")
    chunk = error_chunk(BODY_TIMEOUT)
    assert chunk.startswith(b'1;x-meshlib-error="timeout";')
    assert chunk.endswith(b'"\r\n')
    named = error_from_chunk(b"\r\n\r\n5\r\nhello\r\n" + chunk, request)
    assert isinstance(named, RequestTimeoutError)
    assert (str(named), named.route, named.kind) == (str(BODY_TIMEOUT), "revues d'été", "per_try")
    # Body bytes that look like one, or one followed by more: not the sidecar's last word.
    assert error_from_chunk(b"\r\n\r\n5\r\nhello\r\n" + chunk + b"x\r\n", request) is None
    assert error_from_chunk(b"\r\n\r\n5\r\nhello\r\n" + chunk[:-2], request) is None
    assert error_from_chunk(b"", request) is None
    assert error_from_chunk(b'\r\n1;x-meshlib-error="timeout\r\n', request) is None  # malformed: not the sidecar's
    bare = error_from_chunk(b'\r\n1;x-meshlib-error="upstream_reset"\r\n', request)
    assert isinstance(bare, meshlib.UpstreamResetError)
    assert str(bare) == "the sidecar failed the response body (upstream_reset)"
