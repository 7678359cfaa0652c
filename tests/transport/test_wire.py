"""The request head encoder (wire.encode_request) and the shared empty body it knows without iterating."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from meshlib._config.resilience import RetryConfig
from meshlib._httpx_shortcuts import EMPTY_BODY
from meshlib._policies.retry import RetryPolicy
from meshlib._transport.wire import encode_request


@pytest.fixture
def no_byte_stream_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: httpx.ByteStream) -> Iterator[bytes]:
        raise AssertionError("a ByteStream was iterated")

    monkeypatch.setattr(httpx.ByteStream, "__iter__", refuse)


def _request(method: str, stream: httpx.ByteStream, **headers: str) -> httpx.Request:
    # A stream given: httpx adds no header of its own (as the sidecar's requests, which carry the client's).
    headers = {"Host": "upstream.internal:8080", **headers}
    return httpx.Request(method, "http://upstream.internal:8080/a?b=1", headers=headers, stream=stream)


@pytest.mark.usefixtures("no_byte_stream_iteration")
def test_the_shared_empty_body_is_sent_as_none_without_being_iterated() -> None:
    payload, stream, length, keep_alive = encode_request(_request("GET", EMPTY_BODY))
    assert payload == b"GET /a?b=1 HTTP/1.1\r\nHost: upstream.internal:8080\r\n\r\n"
    assert (stream, length, keep_alive) == (None, -1, True)


@pytest.mark.usefixtures("no_byte_stream_iteration")
def test_the_shared_empty_body_is_replayable_without_being_iterated() -> None:
    policy = RetryPolicy.from_config(RetryConfig(buffer_limit_bytes=0))
    assert policy.replayable(_request("POST", EMPTY_BODY))


def test_another_empty_body_encodes_the_same() -> None:
    shared = encode_request(_request("GET", EMPTY_BODY))
    assert encode_request(_request("GET", httpx.ByteStream(b""))) == shared


def test_a_body_in_memory_goes_with_the_head_and_gets_its_length() -> None:
    payload, stream, length, _ = encode_request(_request("POST", httpx.ByteStream(b"hello")))
    assert payload.endswith(b"Content-Length: 5\r\n\r\nhello")
    assert (stream, length) == (None, -1)


def test_a_body_that_contradicts_its_content_length_is_refused() -> None:
    request = _request("POST", httpx.ByteStream(b"hello"), **{"Content-Length": "3"})
    with pytest.raises(httpx.LocalProtocolError, match="does not match"):
        encode_request(request)


def test_a_buffer_limit_still_refuses_a_large_body() -> None:
    policy = RetryPolicy.from_config(RetryConfig(buffer_limit_bytes=4))
    assert not policy.replayable(_request("POST", httpx.ByteStream(b"hello")))
    assert policy.replayable(_request("POST", httpx.ByteStream(b"hell")))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"X-Split", b"a\r\nX-Injected: 1"),  # a whole header smuggled in
        (b"X-Cr", b"a\rb"),  # a bare CR
        (b"X-Lf", b"a\nb"),  # a bare LF
        (b"X-Nul", b"a\0b"),
        (b"X-Bad\r\nName", b"v"),
    ],
)
def test_a_head_with_cr_lf_or_nul_inside_a_line_is_refused(name: bytes, value: bytes) -> None:
    request = _request("GET", httpx.ByteStream(b""))
    request.headers._list.append((name, name.lower(), value))  # past httpx's own checks, as a hook could add it
    with pytest.raises(httpx.LocalProtocolError, match="Illegal characters in the request head"):
        encode_request(request)


def test_a_clean_head_with_many_headers_and_a_body_passes_the_check() -> None:
    request = _request("POST", httpx.ByteStream(b"x\r\n\0y"), **{f"X-H{i}": f"value {i}" for i in range(20)})
    payload, stream, _, keep_alive = encode_request(request)
    assert payload.endswith(b"Content-Length: 5\r\n\r\nx\r\n\0y")  # the body may hold anything
    assert stream is None
    assert keep_alive
    assert payload.count(b"\r\n") == 1 + 1 + 20 + 1 + 1 + 1  # request line, Host, 20, Content-Length, end, body's
