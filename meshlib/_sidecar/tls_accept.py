"""TLS on a listener: accept connections, tell TLS from plaintext (permissive), and hand each to its protocol.

``loop.create_server(ssl=...)`` fixes one SSL context for the server's life
and cannot serve TLS and plaintext on one port. Here the listener accepts by
itself: under ``strict`` every connection gets the TLS context in force at
accept time (so rotated certificates apply to new connections at once);
under ``permissive`` the first byte is peeked (``MSG_PEEK`` leaves it for
whoever reads next) and a TLS record (0x16, a handshake) gets TLS while
anything else is served as plaintext, as Istio's permissive mode does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from meshlib._transport.tls import serve_tls

__all__ = ["FixedTls", "ServerTls", "accept_loop"]

logger = logging.getLogger("meshlib.tls")

_TLS_HANDSHAKE = 0x16  # the content type of the first TLS record a client sends (RFC 8446 §5.1)


class ServerTls(Protocol):
    """How a listener terminates TLS, asked at every accept so a reload or a rotation applies at once.

    ``mode``: ``strict`` (TLS only), ``permissive`` (TLS or plaintext on one
    port) or ``disable`` (plaintext); ``context()``: the SSL context for a new
    connection, with the latest certificates.
    """

    @property
    def mode(self) -> Literal["strict", "permissive", "disable"]: ...

    def context(self) -> ssl.SSLContext: ...


@dataclass(frozen=True, slots=True)
class FixedTls:
    """A :class:`ServerTls` that never changes."""

    mode: Literal["strict", "permissive", "disable"]
    context: Callable[[], ssl.SSLContext]


async def _first_byte(loop: asyncio.AbstractEventLoop, conn: socket.socket, within: float) -> int | None:
    """The first byte the client sent, left unread; None if it closed or sent nothing ``within`` seconds."""
    ready: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(ready, within)
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(fd)
    try:
        data = conn.recv(1, socket.MSG_PEEK)
    except OSError:
        return None
    return data[0] if data else None


async def _serve_one(
    loop: asyncio.AbstractEventLoop,
    conn: socket.socket,
    tls: ServerTls,
    protocol: Callable[[], asyncio.Protocol],
    handshake_timeout: float,
) -> None:
    try:
        mode = tls.mode
        use_tls = mode == "strict"
        if mode == "permissive":
            first = await _first_byte(loop, conn, handshake_timeout)
            if first is None:
                conn.close()
                return
            use_tls = first == _TLS_HANDSHAKE
        if use_tls:
            context = tls.context()
            await serve_tls(loop, conn, protocol(), context, handshake_timeout)
        else:
            await loop.connect_accepted_socket(protocol, conn)
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        # A plaintext client on a strict port, a certificate from another CA, a client that went away: its own
        # connection's end, never the listener's (Envoy counts these as ssl.connection_error).
        logger.debug("TLS connection from %s refused: %s", _address(conn), exc)
        conn.close()


def _address(conn: socket.socket) -> str:
    with contextlib.suppress(OSError):
        host, port = conn.getpeername()[:2]
        return f"{host}:{port}"
    return "?"


async def accept_loop(
    sock: socket.socket,
    tls: ServerTls,
    protocol: Callable[[], asyncio.Protocol],
    *,
    handshake_timeout: float,
    connections: set[asyncio.Task[None]],
) -> None:
    """Accept on ``sock`` until cancelled; each connection gets TLS (or, permissive, maybe not) and ``protocol``."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, _ = await loop.sock_accept(sock)
        except OSError as exc:  # EMFILE and friends: the next accept may succeed once descriptors free up
            logger.warning("accept failed: %s", exc)
            await asyncio.sleep(0.05)
            continue
        conn.setblocking(False)
        with contextlib.suppress(OSError):  # as asyncio does for the connections it accepts itself
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(_serve_one(loop, conn, tls, protocol, handshake_timeout))
        connections.add(task)
        task.add_done_callback(connections.discard)
