"""meshlib._httpx_shortcuts builds what httpx's own constructors build.

The sidecar's request read off the wire, the engine's upstream copy of a
request, and the upstream client's response skip ``httpx.Request.__init__``
and ``httpx.Response.__init__`` for speed. If an httpx release adds or
renames an attribute those constructors set, these tests fail, rather than
a request in production.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from meshlib._httpx_shortcuts import copy_request, request_from_wire, response_from_wire

RAW = [(b"Content-Type", b"application/json"), (b"X-Twice", b"1"), (b"x-twice", b"2"), (b"Set-Cookie", b"a=b")]


class Body(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"ok": true}'


@pytest.mark.parametrize(
    "request_",
    [
        httpx.Request("get", "http://reviews:9080/api/v1?x=1&y=%20", headers={"a": "1", "B": "2"}),
        httpx.Request("POST", "http://reviews/", content=b"body", extensions={"timeout": {"read": 1.0}}),
        httpx.Request("PUT", "https://[::1]:8443/p", headers=[("x", "1"), ("x", "2")], stream=Body()),
    ],
)
def test_the_upstream_copy_of_a_request_is_httpx_s_own(request_: httpx.Request) -> None:
    copied = copy_request(request_)
    expected = httpx.Request(
        request_.method, request_.url, headers=request_.headers, stream=request_.stream, extensions=request_.extensions
    )
    assert sorted(vars(copied)) == sorted(vars(expected))
    for name in vars(expected):
        if name not in ("headers", "extensions"):
            assert getattr(copied, name) == getattr(expected, name), name
    assert copied.headers.raw == expected.headers.raw
    assert vars(copied.headers) == vars(expected.headers)  # the same fields (the encoding not yet worked out)
    assert copied.headers.encoding == expected.headers.encoding
    assert copied.headers.multi_items() == expected.headers.multi_items()
    assert copied.extensions == expected.extensions
    # The caller's request stays untouched: its own headers and extensions.
    copied.headers["added"] = "yes"
    copied.extensions["added"] = True
    assert "added" not in request_.headers
    assert "added" not in request_.extensions


@pytest.mark.anyio
async def test_a_response_from_the_wire_is_httpx_s_own() -> None:
    stream = Body()
    extensions = {"http_version": b"HTTP/1.1", "reason_phrase": b"OK"}
    built = response_from_wire(200, list(RAW), stream, dict(extensions))
    expected = httpx.Response(200, headers=list(RAW), stream=stream, extensions=dict(extensions))
    assert sorted(vars(built)) == sorted(vars(expected))
    assert sorted(vars(built.headers)) == sorted(vars(expected.headers))
    assert built.headers.raw == expected.headers.raw
    assert built.headers.get_list("x-twice") == ["1", "2"]
    assert built.headers["content-type"] == "application/json"
    assert built.headers.encoding == expected.headers.encoding
    assert built.extensions == expected.extensions
    assert (built.status_code, built.reason_phrase, built.http_version) == (200, "OK", "HTTP/1.1")
    assert built.is_closed is expected.is_closed is False
    assert await built.aread() == b'{"ok": true}'
    assert built.json() == {"ok": True}
    assert built.num_bytes_downloaded == len(b'{"ok": true}')
    assert built.is_closed


@pytest.mark.parametrize("method", ["GET", "post", "M-SEARCH"])
def test_a_request_from_the_wire_is_httpx_s_own(method: str) -> None:
    stream = Body()
    url = httpx.URL("http://reviews:9080/api/v1/items/../x?q=%2F")
    built = request_from_wire(method, url, list(RAW), stream)
    expected = httpx.Request(method, url, headers=list(RAW), stream=stream)
    assert sorted(vars(built)) == sorted(vars(expected))
    assert sorted(vars(built.headers)) == sorted(vars(expected.headers))
    assert (built.method, built.url, built.stream) == (expected.method, expected.url, expected.stream)
    assert built.headers.raw == expected.headers.raw
    assert built.headers.multi_items() == expected.headers.multi_items()
    assert built.headers.get_list("x-twice") == ["1", "2"]
    assert built.extensions == expected.extensions == {}
