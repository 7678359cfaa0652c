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
import ipaddress
import socket
import ssl
import sys
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, Final, cast

import httpx

from meshlib._errors import chained
from meshlib._policies.retry import IDEMPOTENT_METHODS
from meshlib._transport.connection import Connection
from meshlib._transport.tls import open_tls
from meshlib._transport.wire import DEFAULT_PORTS, encode_request

__all__ = ["AsyncHTTP1Transport"]

_NO_TIMEOUTS: Final[dict[str, float | None]] = {}


class Origin:
    """The connections to one (scheme, host, port): idle ones (LIFO), a count of all, and requests waiting for one."""

    __slots__ = (
        "count",
        "expiry",
        "host",
        "idle",
        "last_read_timeout",
        "limit",
        "lookup",
        "max_idle",
        "numeric",
        "pool",
        "port",
        "server_hostname",
        "ssl",
        "tls_last",
        "waiters",
    )

    def __init__(self, pool: AsyncHTTP1Transport, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self.pool = pool
        self.host = host
        self.port = port
        self.numeric = _is_ip(host)  # an address needs no lookup
        self.lookup: asyncio.Task[list[_AddrInfo]] | None = None  # the lookup in progress, shared by its waiters
        self.ssl = ssl_context
        self.server_hostname = host if ssl_context is not None else None
        # The newest TLS connection's SSL object and SNI: a new connection resumes its session (a ticket, not
        # a full handshake with certificates both ways) when the SNI is the same.
        self.tls_last: tuple[ssl.SSLObject, str | None] | None = None
        self.idle: list[Connection] = []
        self.count = 0
        self.limit = pool._max_connections
        self.max_idle = pool._max_idle
        self.expiry = pool._keepalive_expiry
        self.last_read_timeout: float | None = None  # the last request's: a repeated one shares an alarm queue
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()

    def pop_idle(self) -> Connection | None:
        idle = self.idle
        if idle and self.expiry is not None:
            self._expire(idle)
        while idle:
            conn = idle.pop()
            conn.idle = False
            if conn.usable:
                return conn
        return None

    def _expire(self, idle: list[Connection]) -> None:
        """Close the connections idle for longer than ``expiry``: a prefix of the list, which is oldest first."""
        assert self.expiry is not None
        limit = idle[0].loop.time() - self.expiry
        stale = 0
        for conn in idle:
            if conn.idle_since >= limit:
                break
            stale += 1
        if stale:
            expired = idle[:stale]
            del idle[:stale]
            for conn in expired:
                conn.idle = False
                conn.close()  # its connection_lost frees the slot

    def release(self, conn: Connection) -> None:
        """Take back a connection whose exchange completed with keep-alive."""
        conn.reused = True
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)  # straight to the longest waiting request
                return
        if len(self.idle) >= self.max_idle or self.pool._closed:
            conn.close()
            return
        conn.idle = True
        conn.idle_since = conn.loop.time()
        self.idle.append(conn)

    def forget(self, conn: Connection) -> None:
        """A connection was lost (or upgraded): out of the idle list, and its slot freed."""
        if conn.idle:
            conn.idle = False
            self.idle.remove(conn)
        self.free_slot()

    def free_slot(self) -> None:
        """One connection fewer: the slot goes to the longest waiting request, if any."""
        self.count -= 1
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                self.count += 1
                waiter.set_result(None)  # None: the slot is the waiter's, to connect with
                return

    async def acquire(self, request: httpx.Request, timeouts: dict[str, float | None]) -> Connection:
        """A usable connection: a new one while under the limit, else the next one released (or slot freed)."""
        deadline: float | None = None
        while True:
            if self.limit is None or self.count < self.limit:
                self.count += 1
                return await self.connect(request, timeouts)
            loop = asyncio.get_running_loop()
            pool_timeout = timeouts.get("pool")
            if pool_timeout is not None and deadline is None:
                deadline = loop.time() + pool_timeout
            future: asyncio.Future[Connection | None] = loop.create_future()
            self.waiters.append(future)
            timer = loop.call_at(deadline, _pool_timeout, future, request) if deadline is not None else None
            try:
                got = await future
            except BaseException:
                if future.done() and not future.cancelled() and future.exception() is None:
                    self._give_back(future.result())  # handed over just as this request was cancelled
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            if got is None:
                return await self.connect(request, timeouts)
            if got.usable:
                return got
            # handed a connection that closed before this request could use it: try again

    def _give_back(self, conn: Connection | None) -> None:
        if conn is None:
            self.free_slot()
        elif conn.usable:
            self.release(conn)

    async def connect(self, request: httpx.Request, timeouts: dict[str, float | None]) -> Connection:
        """Open a connection; its slot in ``count`` is already taken and is given back if this fails."""
        loop = asyncio.get_running_loop()
        conn = Connection(self, loop)
        server_hostname = self.server_hostname
        if server_hostname is not None:
            sni = request.extensions.get("sni_hostname")
            if sni:
                server_hostname = sni.decode("ascii") if isinstance(sni, bytes) else str(sni)
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                if self.numeric:
                    connect = partial(loop.create_connection, host=self.host, port=self.port)
                    await self._open(conn, connect, server_hostname)
                else:
                    await self._connect_resolved(loop, conn, server_hostname)
            verify_peer = self.pool._verify_peer
            if verify_peer is not None:
                # After the handshake, before any byte of the request: a peer refused never sees it.
                assert conn.transport is not None
                verify_peer(conn.transport.get_extra_info("ssl_object"))
        except BaseException as exc:
            if conn.transport is not None:
                conn.abort()  # connected, but cancelled or timed out right after: connection_lost frees the slot
            else:
                conn.counted = False
                self.free_slot()
            if isinstance(exc, TimeoutError):
                raise chained(  # noqa: B904 (mypyc drops "from")
                    httpx.ConnectTimeout(f"Timed out connecting to {self.host}:{self.port}", request=request), exc
                )
            if isinstance(exc, OSError):
                raise chained(httpx.ConnectError(str(exc) or type(exc).__name__, request=request), exc)  # noqa: B904 (mypyc drops "from")
            raise
        return conn

    async def _open(self, conn: Connection, connect: Callable[..., Any], server_hostname: str | None) -> None:
        """``connect(protocol_factory)`` (a ``create_connection`` with its address bound), then TLS if the
        origin has it: ``conn`` is told of its transport once the connection is ready for requests."""
        if self.ssl is None:
            await connect(lambda: conn)
            return
        last = self.tls_last
        # Read now, not when that connection was made: a TLS 1.3 server sends its tickets after the handshake.
        session = last[0].session if last is not None and last[1] == server_hostname else None
        layer = await open_tls(connect, conn, self.ssl, server_hostname, session)
        self.tls_last = (layer.ssl_object, server_hostname)

    async def _connect_resolved(
        self, loop: asyncio.AbstractEventLoop, conn: Connection, server_hostname: str | None
    ) -> None:
        """Connect ``conn`` to the first of the host's addresses that accepts, as ``create_connection`` does."""
        errors: list[OSError] = []
        for family, _, proto, _, address in await self._resolve(loop):
            try:
                # An address as host: create_connection looks nothing up (asyncio and uvloop both check).
                connect = partial(loop.create_connection, host=address[0], port=address[1], family=family, proto=proto)
                await self._open(conn, connect, server_hostname)
                return
            except ssl.SSLError:
                raise  # connected, and TLS failed: another address of the same host would not help
            except OSError as exc:
                errors.append(exc)
        if len(errors) == 1 or len({str(e) for e in errors}) == 1:
            raise errors[0]
        raise OSError(f"Multiple exceptions: {', '.join(map(str, errors))}")

    async def _resolve(self, loop: asyncio.AbstractEventLoop) -> list[_AddrInfo]:
        """The host's addresses: one lookup at a time, awaited by every connection that needs it meanwhile."""
        lookup = self.lookup
        if lookup is None:
            lookup = self.lookup = loop.create_task(_getaddrinfo(loop, self.host, self.port))
            lookup.add_done_callback(self._looked_up)
        # Shielded: a waiter that gives up (its connect timeout) must not cancel the others' lookup.
        return await asyncio.shield(lookup)

    def _looked_up(self, task: asyncio.Task[list[_AddrInfo]]) -> None:
        if self.lookup is task:
            self.lookup = None  # the next connection looks up afresh: DNS answers are not cached here
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have given up already


_AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]


async def _getaddrinfo(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[_AddrInfo]:
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned no address")
    return cast(list[_AddrInfo], infos)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _respx_mocking() -> bool:
    """Whether respx is mocking httpx now: a router is registered with one of its mockers.

    Only a test imports respx, so elsewhere this is one dictionary lookup.
    """
    mocks = sys.modules.get("respx.mocks")
    if mocks is None:
        return False
    return any(mocker.routers for mocker in mocks.Mocker.registry.values())


def _pool_timeout(future: asyncio.Future[Connection | None], request: httpx.Request) -> None:
    if not future.done():
        future.set_exception(httpx.PoolTimeout("Timed out waiting for a connection", request=request))


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
        self._keepalive_expiry = keepalive_expiry
        self._max_idle = max_idle_per_origin
        self._max_connections = max_connections_per_origin
        self._ssl_context = ssl_context
        self._verify_peer = verify_peer
        self._origins: dict[tuple[bytes, bytes, int | None], Origin] = {}
        self._respx_sender: httpx.AsyncHTTPTransport | None = None
        self._closed = False

    def tls_variant(self, context: ssl.SSLContext, verify_peer: Callable[[Any], None] | None) -> AsyncHTTP1Transport:
        """A transport with this one's limits that connects with ``context`` and checks peers with ``verify_peer``.

        Its own pools: a connection made with one client certificate is never
        reused for a cluster (or a rotation) that asked for another.
        """
        return AsyncHTTP1Transport(
            max_idle_per_origin=self._max_idle,
            max_connections_per_origin=self._max_connections,
            keepalive_expiry=self._keepalive_expiry,
            ssl_context=context,
            verify_peer=verify_peer,
        )

    @property
    def idle_connections(self) -> int:
        """How many connections wait in the pool, over all origins."""
        return sum(len(origin.idle) for origin in self._origins.values())

    def _origin(self, url: httpx.URL, key: tuple[bytes, bytes, int | None]) -> Origin:
        scheme = url.raw_scheme
        if scheme not in DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol '{url.scheme}://'.")
        if not url.raw_host:
            raise httpx.UnsupportedProtocol("Request URL is missing a host.")
        context: ssl.SSLContext | None = None
        if scheme == b"https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        origin = Origin(self, url.raw_host.decode("ascii"), url.port or DEFAULT_PORTS[scheme], context)
        self._origins[key] = origin
        return origin

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on a pooled connection and return the response with its body still streaming."""
        if self._closed:
            raise RuntimeError("The transport is closed")
        if _respx_mocking():
            return await self._through_httpx(request)
        url = request.url
        key = (url.raw_scheme, url.raw_host, url.port)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origin(url, key)
        stream: Any  # the body stream, or None when the body went with the head
        payload, stream, length, keep_alive = encode_request(request)
        timeouts = request.extensions.get("timeout") or _NO_TIMEOUTS
        conn = origin.pop_idle()
        if conn is None:
            conn = await origin.acquire(request, timeouts)
        try:
            return await conn.send(request, payload, stream, length, keep_alive, timeouts)
        except httpx.TransportError:
            ex = conn.exchange
            # Only idempotent requests (RFC 9110 §9.2.2): a POST the server took before closing must not run twice.
            if stream is not None or ex is None or not ex.stale or request.method not in IDEMPOTENT_METHODS:
                raise
        # The server closed the reused connection as this request went out: once more, on a new connection.
        conn = await origin.acquire(request, timeouts)
        return await conn.send(request, payload, stream, length, keep_alive, timeouts)

    async def _through_httpx(self, request: httpx.Request) -> httpx.Response:
        """Send with httpx's own transport, which respx patches (its pass-through routes still reach the network)."""
        sender = self._respx_sender
        if sender is None:
            verify: ssl.SSLContext | bool = self._ssl_context if self._ssl_context is not None else True
            sender = self._respx_sender = httpx.AsyncHTTPTransport(verify=verify)
        return await sender.handle_async_request(request)

    async def aclose(self) -> None:
        """Close every idle connection and stop pooling (responses being read are left to finish)."""
        self._closed = True
        if self._respx_sender is not None:
            await self._respx_sender.aclose()
        for origin in self._origins.values():
            while origin.idle:
                conn = origin.idle.pop()
                conn.idle = False
                conn.close()
        # Let the transports' connection_lost callbacks run, so sockets close before the loop may end.
        await asyncio.sleep(0)
