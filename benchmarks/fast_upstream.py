"""A tiny, fast HTTP/1.1 upstream for the sidecar benchmark: every request gets ``200 OK`` with the body ``ok``.

Run ``python benchmarks/fast_upstream.py --port N [--port M ...] [--tls CERT KEY CA]``: one process
serves every port given (over mTLS with ``--tls``) (port 0 asks the OS for a free one). Once all are
bound it prints one line per listener, ``fast_upstream: listening on
127.0.0.1:PORT``, and serves until SIGTERM or SIGINT.

It is an asyncio ``Protocol`` on uvloop with httptools (llhttp) finding each
request's boundaries, so keep-alive and pipelining are right: every complete
request gets one response, in order, and a request split across reads or
sharing a read with the next is handled. The response is fixed except for an
``x-upstream-port`` header naming the listener's port, so a benchmark can see
that a proxy's load balancer spreads requests over the listeners. A request
that does not parse gets ``400`` and the connection is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import ssl
import sys
from collections.abc import Sequence
from functools import partial
from typing import cast

import httptools

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop does not build on Windows
    uvloop = None  # type: ignore[assignment]

_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def fixed_response(port: int, *, close: bool = False) -> bytes:
    """The bytes of the one answer: ``200 OK``, ``Content-Length: 2``, body ``ok``."""
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
        b"x-upstream-port: " + str(port).encode() + b"\r\n" + connection + b"\r\nok"
    )


class UpstreamProtocol(asyncio.Protocol):
    """One connection: parse requests with httptools and answer each when its message is complete."""

    def __init__(self, keep_alive: bytes, close: bytes) -> None:
        self._keep_alive = keep_alive
        self._close = close
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._out: list[bytes] = []  # answers for the requests completed during one data_received
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; disable Nagle so that small answers leave at once."""
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the transport."""
        self._transport = None

    def data_received(self, data: bytes) -> None:
        """Feed the parser; write the answers of every request completed by this read in one write."""
        transport = self._transport
        if transport is None or self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No upgrades here: answer the request without switching, and close.
            if self._out:
                self._out[-1] = self._close
            else:
                self._out.append(self._close)
            self._closing = True
        except httptools.HttpParserError:
            if not self._closing:  # bytes after a "Connection: close" request are ignored, not an error
                self._out.append(_BAD_REQUEST)
                self._closing = True
        if self._out:
            transport.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
            self._out.clear()
        if self._closing:
            transport.close()

    def on_message_complete(self) -> None:
        """httptools callback: one whole request has arrived (its body is ignored)."""
        if self._closing:
            return
        if self._parser.should_keep_alive():
            self._out.append(self._keep_alive)
        else:
            self._out.append(self._close)
            self._closing = True


def tls_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """A server context presenting ``cert`` and requiring a client certificate that chains to ``ca`` (mTLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def serve(ports: Sequence[int], host: str = "127.0.0.1", context: ssl.SSLContext | None = None) -> None:
    """Listen on every port (over TLS with ``context``), print one ready line each, and serve until SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers: list[asyncio.Server] = []
    try:
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            bound: int = sock.getsockname()[1]
            keep_alive, close = fixed_response(bound), fixed_response(bound, close=True)
            server = await loop.create_server(
                partial(UpstreamProtocol, keep_alive, close), sock=sock, backlog=1024, ssl=context
            )
            servers.append(server)
        for server in servers:
            for listening in server.sockets:
                name = listening.getsockname()
                print(f"fast_upstream: listening on {name[0]}:{name[1]}", flush=True)
        await stop.wait()
    finally:
        for server in servers:
            server.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``--port`` (repeatable) and ``--host``; run the server on uvloop where available."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, action="append", required=True, help="a port to serve (repeatable; 0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--tls", nargs=3, metavar=("CERT", "KEY", "CA"), help="serve mTLS: this certificate, and clients of CA only"
    )
    args = parser.parse_args(argv)
    context = tls_context(*args.tls) if args.tls else None
    if uvloop is not None:
        uvloop.run(serve(args.port, args.host, context))
    else:  # pragma: no cover
        asyncio.run(serve(args.port, args.host, context))
    return 0


if __name__ == "__main__":
    sys.exit(main())
