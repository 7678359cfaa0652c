"""The pool's per-request work: :class:`Pool` sends on idle connections per origin (:class:`Origin`), within limits.

Compiled with the rest of the request path; the public transport around it
(``pool.py``'s ``AsyncHTTP1Transport``) stays interpreted for its docstrings
and signature. What the pool does is described there and in ``pool.py``'s
module docstring.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, Final, cast

import httpx

from meshlib._config.hosts import is_ip
from meshlib._engine.urls import origin_key
from meshlib._errors import chained
from meshlib._policies.retry import IDEMPOTENT_METHODS
from meshlib._transport.connection import Connection
from meshlib._transport.tls import open_tls
from meshlib._transport.wire import DEFAULT_PORTS, encode_request

__all__ = ["Origin", "Pool"]

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

    def __init__(self, pool: Pool, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self.pool = pool
        self.host = host
        self.port = port
        self.numeric = is_ip(host)  # an address needs no lookup
        self.lookup: asyncio.Task[list[_AddrInfo]] | None = None  # the lookup in progress, shared by its waiters
        self.ssl = ssl_context
        self.server_hostname = host if ssl_context is not None else None
        # The newest TLS connection's SSL object and SNI: a new connection resumes its session (a ticket, not
        # a full handshake with certificates both ways) when the SNI is the same.
        self.tls_last: tuple[ssl.SSLObject, str | None] | None = None
        self.idle: list[Connection] = []
        self.count = 0
        self.limit = pool.max_connections
        self.max_idle = pool.max_idle
        self.expiry = pool.keepalive_expiry
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
        if len(self.idle) >= self.max_idle or self.pool.closed:
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
            verify_peer = self.pool.verify_peer
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


def _pool_timeout(future: asyncio.Future[Connection | None], request: httpx.Request) -> None:
    if not future.done():
        future.set_exception(httpx.PoolTimeout("Timed out waiting for a connection", request=request))


class Pool:
    """What ``AsyncHTTP1Transport`` does per request: its origins, their limits, and sending on a pooled connection."""

    __slots__ = ("closed", "keepalive_expiry", "max_connections", "max_idle", "origins", "ssl_context", "verify_peer")

    def __init__(
        self,
        max_idle: int,
        max_connections: int | None,
        keepalive_expiry: float | None,
        ssl_context: ssl.SSLContext | None,
        verify_peer: Callable[[Any], None] | None,
    ) -> None:
        self.max_idle = max_idle
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self.ssl_context = ssl_context
        self.verify_peer = verify_peer
        self.origins: dict[tuple[bytes, bytes, int | None], Origin] = {}
        self.closed = False

    def _origin(self, url: httpx.URL, key: tuple[bytes, bytes, int | None]) -> Origin:
        scheme = url.raw_scheme
        if scheme not in DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol '{url.scheme}://'.")
        if not url.raw_host:
            raise httpx.UnsupportedProtocol("Request URL is missing a host.")
        context: ssl.SSLContext | None = None
        if scheme == b"https":
            if self.ssl_context is None:
                self.ssl_context = ssl.create_default_context()
            context = self.ssl_context
        origin = Origin(self, url.raw_host.decode("ascii"), url.port or DEFAULT_PORTS[scheme], context)
        self.origins[key] = origin
        return origin

    async def send(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on a pooled connection and return the response with its body still streaming."""
        key = origin_key(request.url)
        origin = self.origins.get(key)
        if origin is None:
            origin = self._origin(request.url, key)
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

    def idle_connections(self) -> int:
        """How many connections wait in the pool, over all origins."""
        return sum(len(origin.idle) for origin in self.origins.values())

    def close_idle(self) -> None:
        """Stop pooling and close every idle connection (responses being read are left to finish)."""
        self.closed = True
        for origin in self.origins.values():
            while origin.idle:
                conn = origin.idle.pop()
                conn.idle = False
                conn.close()
