"""The pool: :class:`AsyncHTTP1Transport`, idle connections per origin, connection limits and name lookups.

Per origin (scheme, host, port) the pool keeps idle connections, reused last
in first out, for at most ``keepalive_expiry`` seconds (5, as httpx's pool, so
both modes leave an upstream's keep-alive timeout the same margin). A
connection that got bytes or an end of stream while idle is closed, never
reused; a request that finds its reused connection closed by the server
before any response byte is sent once more on a fresh connection when it is
idempotent and its body can be replayed (the keep-alive race browsers retry).

A host name is looked up once for all the connections being opened to it at
that moment (and looked up anew for later ones: nothing is cached). Lookups
run on a small thread pool (libuv's 4 threads under uvloop, the loop's
default executor under asyncio); one lookup per request would let a burst of
requests to a name that resolves slowly or not at all (a host the config no
longer routes, passed through) queue up there, and every later connection
needing a lookup, even to a healthy upstream, would wait behind them.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import httpx

from meshlib._transport.origin import Pool

__all__ = ["AsyncHTTP1Transport"]


def _respx_mocking() -> bool:
    """Whether respx is mocking httpx now: a router is registered with one of its mockers.

    Only a test imports respx, so elsewhere this is one dictionary lookup.
    """
    mocks = sys.modules.get("respx.mocks")
    if mocks is None:
        return False
    return any(mocker.routers for mocker in mocks.Mocker.registry.values())


class AsyncHTTP1Transport(httpx.AsyncBaseTransport):
    """A fast pooled HTTP/1.1 transport for asyncio (uvloop when it runs the loop), built on httptools.

    Drop-in for ``httpx.AsyncHTTPTransport`` where only HTTP/1.1 to known
    upstreams is needed: ``mesh.async_transport(inner=AsyncHTTP1Transport())``.
    Raises httpx's exceptions (``ConnectError``, ``ConnectTimeout``,
    ``ReadTimeout``, ``WriteTimeout``, ``PoolTimeout``, ``ReadError``,
    ``RemoteProtocolError``), so the mesh maps them as it maps httpx's own.
    A ``101 Switching Protocols`` response carries the raw connection as
    ``extensions["network_stream"]`` (``read``, ``write``, ``aclose``).

    ``max_idle_per_origin`` bounds the idle connections kept per origin and
    ``keepalive_expiry`` how long one may stay idle (seconds; None: no limit),
    checked when a request looks for one, as httpx does;
    ``max_connections_per_origin`` (default unbounded) bounds all of them,
    and requests beyond it wait up to the ``pool`` timeout.

    ``https://`` origins use ``ssl_context`` (default: the system's CAs, host
    names checked); ``verify_peer``, when given, is called with each new TLS
    connection's ``ssl.SSLObject`` once the handshake is done and before the
    request is written, and whatever it raises (``meshlib._tls``'s identity
    check raises an ``httpx.ConnectError``) fails the request with nothing sent.
    A new TLS connection resumes the session of the origin's newest one
    (same SNI), as a browser does; connections are kept alive and reused too.

    While respx mocks httpx (inside ``respx.mock`` or with the ``respx_mock``
    fixture), requests go through an ``httpx.AsyncHTTPTransport`` instead, so
    respx's routes see them exactly as they would with httpx's own transport:
    tests written for the default client keep working with this one.
    """

    def __init__(
        self,
        *,
        max_idle_per_origin: int = 64,
        max_connections_per_origin: int | None = None,
        keepalive_expiry: float | None = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        verify_peer: Callable[[Any], None] | None = None,
    ) -> None:
        if max_idle_per_origin < 0:
            raise ValueError("max_idle_per_origin must be at least 0")
        if max_connections_per_origin is not None and max_connections_per_origin < 1:
            raise ValueError("max_connections_per_origin must be at least 1")
        if keepalive_expiry is not None and keepalive_expiry < 0:
            raise ValueError("keepalive_expiry must be at least 0")
        self._pool = Pool(max_idle_per_origin, max_connections_per_origin, keepalive_expiry, ssl_context, verify_peer)
        self._respx_sender: httpx.AsyncHTTPTransport | None = None

    def tls_variant(self, context: ssl.SSLContext, verify_peer: Callable[[Any], None] | None) -> AsyncHTTP1Transport:
        """A transport with this one's limits that connects with ``context`` and checks peers with ``verify_peer``.

        Its own pools: a connection made with one client certificate is never
        reused for a cluster (or a rotation) that asked for another.
        """
        pool = self._pool
        return AsyncHTTP1Transport(
            max_idle_per_origin=pool.max_idle,
            max_connections_per_origin=pool.max_connections,
            keepalive_expiry=pool.keepalive_expiry,
            ssl_context=context,
            verify_peer=verify_peer,
        )

    @property
    def idle_connections(self) -> int:
        """How many connections wait in the pool, over all origins."""
        return self._pool.idle_connections()

    def handle_async_request(self, request: httpx.Request) -> Coroutine[Any, Any, httpx.Response]:
        """Send ``request`` on a pooled connection and return the response with its body still streaming.

        Await it, as httpx's own: it returns the pool's coroutine rather than being one, so each request
        (and each suspension of it) passes through one Python frame fewer. A closed transport raises
        ``RuntimeError`` from the call.
        """
        if self._pool.closed:
            raise RuntimeError("The transport is closed")
        if "respx.mocks" in sys.modules and _respx_mocking():  # only a test imports respx: one lookup elsewhere
            return self._through_httpx(request)
        return self._pool.send(request)

    async def _through_httpx(self, request: httpx.Request) -> httpx.Response:
        """Send with httpx's own transport, which respx patches (its pass-through routes still reach the network)."""
        sender = self._respx_sender
        if sender is None:
            context = self._pool.ssl_context
            verify: ssl.SSLContext | bool = context if context is not None else True
            sender = self._respx_sender = httpx.AsyncHTTPTransport(verify=verify)
        return await sender.handle_async_request(request)

    async def aclose(self) -> None:
        """Close every idle connection and stop pooling (responses being read are left to finish)."""
        self._pool.close_idle()
        if self._respx_sender is not None:
            await self._respx_sender.aclose()
        # Let the transports' connection_lost callbacks run, so sockets close before the loop may end.
        await asyncio.sleep(0)
