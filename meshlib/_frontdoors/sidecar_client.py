"""Sidecar front door: httpx transports that send every request through a running ``meshlib proxy``.

The sidecar is an HTTP forward proxy on loopback, so the inner transport is
httpx's own with the sidecar as its proxy: a request goes out in absolute form
(``GET http://reviews/x HTTP/1.1``), exactly as ``HTTP_PROXY`` would send it,
and an ``https://`` URL goes through a ``CONNECT`` tunnel. The sidecar runs the
engine; these transports only turn its error answers (see ``_wire.py``) back
into the ``MeshError`` the in-process engine would raise, so application code
sees the same exceptions in both modes.

The same holds for a body that fails after its head: the requests carry
``x-meshlib-client`` (as a proxy header, for the sidecar alone), so the
sidecar sends every streamed body chunked and ends a failed one with an error
chunk, which a failed read of the body raises as the error it names
(``sidecar_body.py``).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncGenerator, Generator
from contextlib import aclosing, closing
from typing import Any, cast

import httpx

from meshlib._errors import chained
from meshlib._frontdoors.sidecar_body import keep_tails, received
from meshlib._wire import CLIENT_HEADER, error_from_response, is_error_response

__all__ = ["DEFAULT_SIDECAR", "SIDECAR_ENV", "AsyncSidecarTransport", "SidecarTransport", "sidecar_url"]

DEFAULT_SIDECAR = "http://127.0.0.1:15001"
SIDECAR_ENV = "MESHLIB_SIDECAR"

# An error answer is one short line; the cap only guards against a huge body that claims to be one.
_ERROR_BODY_LIMIT = 64 * 1024


def sidecar_url(sidecar: str | None = None) -> str:
    """The sidecar's URL as ``http://HOST:PORT``: ``sidecar``, else ``$MESHLIB_SIDECAR``, else the default.

    Raises ``ValueError`` for anything but a plain ``http://host[:port]`` URL.
    """
    value = sidecar if sidecar is not None else (os.environ.get(SIDECAR_ENV) or DEFAULT_SIDECAR)
    try:
        url = httpx.URL(value.strip())
    except (httpx.InvalidURL, TypeError) as exc:
        raise chained(ValueError(f"invalid sidecar URL {value!r}: {exc}"), None)  # noqa: B904 (mypyc drops "from")
    if url.scheme != "http" or not url.host:
        raise ValueError(f"invalid sidecar URL {value!r}: expected http://HOST:PORT, e.g. {DEFAULT_SIDECAR!r}")
    if url.path not in ("", "/") or url.query or url.fragment or url.userinfo:
        raise ValueError(f"invalid sidecar URL {value!r}: give only scheme, host and port")
    return f"http://{url.netloc.decode('ascii')}"


def _inner_kwargs(inner: object | None, transport_kwargs: dict[str, Any]) -> None:
    if "proxy" in transport_kwargs:
        raise TypeError("proxy= cannot be combined with the sidecar: the sidecar is the proxy")
    if inner is not None and transport_kwargs:
        raise TypeError(f"give either inner= or {', '.join(sorted(transport_kwargs))}=, not both")


def _is_tls_failure(error: BaseException) -> bool:
    """Whether a ConnectError came from a TLS handshake through the tunnel, not from reaching the sidecar."""
    seen: BaseException | None = error
    for _ in range(8):  # httpx → httpcore → the OS or ssl error: a short chain
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _unreachable(sidecar: str, error: httpx.ConnectError, request: httpx.Request) -> httpx.ConnectError:
    return httpx.ConnectError(f"meshlib sidecar at {sidecar} is not reachable: {error}", request=request)


def _proxy(sidecar: str) -> httpx.Proxy:
    """The sidecar as httpx's proxy, told that this client reads error chunks (a header only the sidecar gets)."""
    return httpx.Proxy(sidecar, headers={CLIENT_HEADER: "1"})


class SidecarTransport(httpx.BaseTransport):
    """An ``httpx.BaseTransport`` that sends each request through the sidecar at ``sidecar``.

    ``sidecar`` defaults to ``$MESHLIB_SIDECAR``, else ``http://127.0.0.1:15001``.
    The sidecar's error answers raise the matching :class:`meshlib.MeshError`;
    every other response, whatever its status, is returned unchanged. A sidecar
    that cannot be reached raises ``httpx.ConnectError`` naming its URL.
    ``transport_kwargs`` (``verify``, ``cert``, ``limits``, ...) configure the
    inner ``httpx.HTTPTransport``; ``inner`` replaces it (it must send to the sidecar itself).
    """

    def __init__(
        self, sidecar: str | None = None, *, inner: httpx.BaseTransport | None = None, **transport_kwargs: Any
    ) -> None:
        _inner_kwargs(inner, transport_kwargs)
        self.sidecar = sidecar_url(sidecar)
        if inner is None:
            inner = httpx.HTTPTransport(proxy=_proxy(self.sidecar), **transport_kwargs)
            keep_tails(inner)
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self.inner.handle_request(request)
        except httpx.ConnectError as error:
            if _is_tls_failure(error):
                raise
            raise chained(_unreachable(self.sidecar, error, request), error)  # noqa: B904 (mypyc drops "from")
        if not is_error_response(response):
            return received(response, request)
        body = bytearray()
        try:
            # Closed explicitly: a break leaves httpx's generator suspended until it is collected.
            with closing(cast(Generator[bytes, None, None], response.iter_bytes())) as chunks:
                for chunk in chunks:
                    body += chunk
                    if len(body) >= _ERROR_BODY_LIMIT:
                        break
        finally:
            response.close()
        raise error_from_response(response, request, bytes(body[:_ERROR_BODY_LIMIT]))

    def close(self) -> None:
        self.inner.close()


class AsyncSidecarTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`SidecarTransport`, for ``httpx.AsyncClient``."""

    def __init__(
        self, sidecar: str | None = None, *, inner: httpx.AsyncBaseTransport | None = None, **transport_kwargs: Any
    ) -> None:
        _inner_kwargs(inner, transport_kwargs)
        self.sidecar = sidecar_url(sidecar)
        if inner is None:
            inner = httpx.AsyncHTTPTransport(proxy=_proxy(self.sidecar), **transport_kwargs)
            keep_tails(inner)
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.ConnectError as error:
            if _is_tls_failure(error):
                raise
            raise chained(_unreachable(self.sidecar, error, request), error)  # noqa: B904 (mypyc drops "from")
        if not is_error_response(response):
            return received(response, request)
        body = bytearray()
        try:
            async with aclosing(cast(AsyncGenerator[bytes, None], response.aiter_bytes())) as chunks:
                async for chunk in chunks:
                    body += chunk
                    if len(body) >= _ERROR_BODY_LIMIT:
                        break
        finally:
            await response.aclose()
        raise error_from_response(response, request, bytes(body[:_ERROR_BODY_LIMIT]))

    async def aclose(self) -> None:
        await self.inner.aclose()
