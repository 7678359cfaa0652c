"""A meshed client keeps cookies exactly as httpx does, and skips the cookie jar for responses that set none.

httpx hands every response to ``client.cookies.extract_cookies``; the mesh's
clients (``mesh.client()``, ``mesh.async_client()``, ``meshlib.wrap()``) keep
the same ``httpx.Cookies`` object, whose ``extract_cookies`` looks for a
``Set-Cookie`` header first and leaves the jar alone when there is none.
"""

from __future__ import annotations

import http.cookiejar

import httpx
import pytest
import respx

import meshlib
from tests.conftest import MakeMesh, Receive, Scope, Send, start_server

pytestmark = pytest.mark.anyio

CONFIG = {"clusters": {"reviews": {"endpoints": ["http://10.0.0.1:80"], "retry": {"attempts": 2}}}}


def _answer(request: httpx.Request) -> httpx.Response:
    """``/login`` sets a cookie (as the header's case says, or as Set-Cookie2); every answer echoes the Cookie sent."""
    headers = {"x-cookie-sent": request.headers.get("cookie", "")}
    if request.url.path == "/login":
        headers["SET-COOKIE"] = "session=abc; Path=/"
    return httpx.Response(200, headers=headers)


@respx.mock
def test_a_sync_meshed_client_stores_and_sends_cookies_as_httpx_does(make_mesh: MakeMesh) -> None:
    respx.route(host="10.0.0.1").mock(side_effect=_answer)
    with make_mesh(CONFIG).client() as client:
        jar = client.cookies.jar
        assert client.get("http://reviews/plain").headers["x-cookie-sent"] == ""
        assert len(jar) == 0  # nothing set, nothing stored
        client.get("http://reviews/login")
        assert dict(client.cookies) == {"session": "abc"}
        assert client.get("http://reviews/next").headers["x-cookie-sent"] == "session=abc"
        assert client.cookies.jar is jar  # the same jar throughout


@respx.mock
async def test_an_async_meshed_client_stores_and_sends_cookies_as_httpx_does(make_mesh: MakeMesh) -> None:
    respx.route(host="10.0.0.1").mock(side_effect=_answer)
    async with make_mesh(CONFIG).async_client() as client:
        await client.get("http://reviews/plain")
        assert dict(client.cookies) == {}
        await client.get("http://reviews/login")
        assert dict(client.cookies) == {"session": "abc"}
        assert (await client.get("http://reviews/next")).headers["x-cookie-sent"] == "session=abc"


@respx.mock
def test_wrap_keeps_the_clients_own_cookies_object_and_what_it_holds(make_mesh: MakeMesh) -> None:
    respx.route(host="10.0.0.1").mock(side_effect=_answer)
    client = httpx.Client(cookies={"theme": "dark"})
    cookies, jar = client.cookies, client.cookies.jar
    meshlib.wrap(client, make_mesh(CONFIG))
    with client:
        assert client.cookies is cookies
        assert cookies.jar is jar
        assert isinstance(client.cookies, httpx.Cookies)
        assert client.get("http://reviews/plain").headers["x-cookie-sent"] == "theme=dark"
        client.get("http://reviews/login")
        assert dict(client.cookies) == {"theme": "dark", "session": "abc"}


@respx.mock
def test_cookies_replaced_by_the_user_still_work(make_mesh: MakeMesh) -> None:
    respx.route(host="10.0.0.1").mock(side_effect=_answer)
    with make_mesh(CONFIG).client() as client:
        client.cookies = {"user": "set"}  # httpx makes a plain Cookies of it
        assert client.get("http://reviews/plain").headers["x-cookie-sent"] == "user=set"
        client.get("http://reviews/login")
        assert dict(client.cookies) == {"user": "set", "session": "abc"}


def test_a_response_without_set_cookie_never_reaches_the_jar(make_mesh: MakeMesh) -> None:
    calls: list[str] = []

    class Jar(http.cookiejar.CookieJar):
        def extract_cookies(self, response: object, request: object) -> None:
            calls.append("extract")
            super().extract_cookies(response, request)  # type: ignore[arg-type]

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2":
            return httpx.Response(200, headers={"Set-Cookie2": 'legacy="1"; Version="1"'})
        return httpx.Response(200, headers={"content-type": "text/plain"})

    with respx.mock:
        respx.route(host="10.0.0.1").mock(side_effect=answer)
        with make_mesh(CONFIG).client(cookies=Jar()) as client:
            client.get("http://reviews/a")
            assert calls == []
            client.get("http://reviews/v2")  # the old RFC 2965 header still goes to the jar, as httpx sends it
            assert calls == ["extract"]


async def _cookie_stub(scope: Scope, receive: Receive, send: Send) -> None:
    """A stand-in sidecar: ``/login`` sets a cookie; every answer echoes the Cookie header it got."""
    headers = dict(scope["headers"])
    head = [(b"x-cookie-sent", headers.get(b"cookie", b""))]
    if scope["raw_path"].startswith(b"/login") or scope["raw_path"].startswith(b"http://reviews/login"):
        head.append((b"set-cookie", b"session=abc; Path=/"))
    await send({"type": "http.response.start", "status": 200, "headers": head})
    await send({"type": "http.response.body", "body": b""})


async def test_sidecar_mode_clients_keep_cookies_as_httpx_does(make_mesh: MakeMesh) -> None:
    server = start_server(_cookie_stub, "cookie-sidecar")
    try:
        mesh = make_mesh({"allow_empty": True})
        with mesh.client(mode="sidecar", sidecar=server.url) as client:
            jar = client.cookies.jar
            client.get("http://reviews/plain")
            assert len(jar) == 0
            client.get("http://reviews/login")
            assert client.get("http://reviews/next").headers["x-cookie-sent"] == "session=abc"
        async with mesh.async_client(mode="sidecar", sidecar=server.url) as aclient:
            await aclient.get("http://reviews/login")
            assert (await aclient.get("http://reviews/next")).headers["x-cookie-sent"] == "session=abc"
    finally:
        server.stop()
