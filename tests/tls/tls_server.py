"""An HTTP/1.1 server over TLS for the tests: asyncio and ssl in a thread, recording each client's certificate.

uvicorn terminates TLS too, but does not tell the app who the client was;
this server answers JSON naming the client certificate's SPIFFE ID and
serial, counts the bytes each connection sent (a refused upstream must see
none), and can run an async handler (a middle service calling onwards).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import ssl
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlib._tls.identity import peer_spiffe_id


@dataclass
class Connection:
    """One accepted TLS connection: who the client was, and what it sent."""

    peer_id: str | None
    serial: int | None
    received: int = 0
    requests: int = 0


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: Connection


Handler = Callable[[Request], Awaitable[tuple[int, bytes]]]


async def echo(request: Request) -> tuple[int, bytes]:
    """The default handler: who called, on which path, with which certificate."""
    conn = request.connection
    body = {"path": request.path, "peer": conn.peer_id, "serial": conn.serial, "requests": conn.requests}
    return 200, json.dumps(body).encode()


def server_context(cert: Path, key: Path, ca: Path | None, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """A plain ssl server context (not meshlib's: the tests check meshlib against the standard library)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


@dataclass
class TlsServer:
    """A running server: its URL and the connections it accepted."""

    url: str
    connections: list[Connection] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)  # the server name of each handshake

    @property
    def serials(self) -> list[int | None]:
        return [c.serial for c in self.connections]


@contextmanager
def tls_server(context: ssl.SSLContext, handler: Handler = echo) -> Iterator[TlsServer]:
    """Serve HTTP/1.1 with ``handler`` over TLS on 127.0.0.1:0 until the block ends."""
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, ctx: None)  # failed handshakes are what some tests are about
    started = threading.Event()
    state: dict[str, Any] = {}
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        serial = None
        if der:
            from cryptography import x509

            serial = x509.load_der_x509_certificate(der).serial_number
        conn = Connection(peer_spiffe_id(ssl_object), serial)
        server.connections.append(conn)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                conn.received += len(head)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                conn.received += len(body)
                conn.requests += 1
                status, payload = await handler(Request(method, path, headers, body, conn))
                writer.write(
                    b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (status, len(payload), payload)
                )
                await writer.drain()
        except asyncio.IncompleteReadError as exc:
            conn.received += len(exc.partial)  # what came before the client closed
        except (ConnectionError, ssl.SSLError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = TlsServer("")
    context.sni_callback = lambda _ssl, name, _context: server.sni.append(name)

    async def main() -> None:
        srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context, ssl_handshake_timeout=5)
        state["stop"] = asyncio.Event()
        server.url = f"https://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        started.set()
        await state["stop"].wait()
        # Stop accepting, and give the connections just accepted two turns
        # before the server closes: one for the accept task to wrap the socket
        # in a transport (one that first runs after close() fails inside
        # asyncio and leaks its socket), one for the handshake to start (the
        # SSL protocol ignores a close before then).
        for sock in srv.sockets:
            loop.remove_reader(sock.fileno())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        srv.close()
        for writer in writers:  # no TLS close_notify dance with clients that keep their connections alive
            writer.transport.abort()
        # The serving tasks, and the accept tasks of handshakes still under
        # way (cancelled, they abort their transports).
        others = asyncio.all_tasks() - {asyncio.current_task()}
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        for _ in range(3):  # an aborted transport closes its socket a turn or two later
            await asyncio.sleep(0)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10), "the TLS server did not start"
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(lambda: state["stop"].set() if "stop" in state else None)
        thread.join(10)
        _close_quietly(loop)


def _close_quietly(loop: asyncio.AbstractEventLoop) -> None:
    """Close the server's loop and collect what it leaves, here rather than in a later test.

    A handshake still under way when the server stops (a client the test
    refused, say) leaves a transport no ``serve`` call ever saw; the garbage
    collector would report it unclosed whenever it next runs, in whatever test
    is running then. Its warning is the server's own and is dropped; any other
    ResourceWarning raised meanwhile is passed on.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        loop.close()
        gc.collect()
    for warning in caught:
        if getattr(warning.source, "_loop", None) is not loop:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
