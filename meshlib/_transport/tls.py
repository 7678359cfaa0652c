"""TLS over a connected transport, with OpenSSL's memory BIOs: the sidecar's and the fast transport's TLS.

``loop.create_connection(ssl=...)`` works, but its TLS layer (asyncio's and
uvloop's ``SSLProtocol``) costs several times the cipher per record: a read
buffer of 256 KiB per read, a backlog queue per write, a Python-level
``SSLObject.read`` per read and a second read that must fail with
``SSLWantReadError`` (an exception per record) to learn that nothing is left.
:class:`TlsLayer` sits between the TCP transport and the HTTP protocol, and
asks the BIO and the SSL object what is left instead. Measured in
``benchmarks/bench_mtls_chain.py``.

Its behaviour follows uvloop's, on which the tests were written: the
protocol is told of the connection once the handshake has succeeded; a
failed handshake aborts (no alert is flushed) and raises the ``ssl.SSLError``
to whoever awaits it; a TCP end without ``close_notify`` is a lost
connection, never an ``eof_received``; a ``close_notify`` is the peer's
end of stream; ``close()`` sends ``close_notify`` after what was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any, Final

__all__ = ["HANDSHAKE_TIMEOUT", "TlsLayer", "open_tls", "serve_tls"]

HANDSHAKE_TIMEOUT: Final = 60.0  # asyncio's and uvloop's default for ssl_handshake_timeout
_READ: Final = 65536  # bytes per SSL read: a TLS record holds at most 16 KiB of data, so one record a read

_WANT: Final = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class TlsLayer(asyncio.Protocol, asyncio.Transport):
    """The TCP transport's protocol, and the transport of the protocol above (``app``) once TLS is up.

    One object plays both parts, as a wrapping transport does in httpx: the
    protocol above calls ``write``/``close``/``get_extra_info`` on it, the
    TCP transport calls ``data_received``/``connection_lost`` on it.
    """

    __slots__ = (
        "_app",
        "_closing",
        "_error",
        "_handshake",
        "_handshake_timer",
        "_incoming",
        "_outgoing",
        "_peer_eof",
        "_read",
        "_ssl",
        "_sslobj",
        "_tcp",
        "_wrapped",
        "_write",
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        app: asyncio.BaseProtocol,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        handshake_timeout: float | None = HANDSHAKE_TIMEOUT,
        session: ssl.SSLSession | None = None,
    ) -> None:
        self._app = app
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl: ssl.SSLObject = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname, session=session
        )
        # The C object under ssl.SSLObject: its read and write skip a Python frame per call.
        self._sslobj: Any = getattr(self._ssl, "_sslobj", self._ssl)
        self._read: Callable[[int], bytes] = self._sslobj.read
        self._write: Callable[[Any], int] = self._sslobj.write
        self._tcp: asyncio.Transport | None = None
        self._wrapped = False  # the handshake succeeded: data is the app's
        self._closing = False
        self._peer_eof = False
        self._error: BaseException | None = None  # why this layer aborted, for the app's connection_lost
        self._handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handshake_timer: asyncio.TimerHandle | None = None
        if handshake_timeout is not None:
            self._handshake_timer = asyncio.get_running_loop().call_later(
                handshake_timeout, self._handshake_timed_out, handshake_timeout
            )

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The connection's ``ssl.SSLObject`` (``get_extra_info("ssl_object")``)."""
        return self._ssl

    async def handshake(self) -> None:
        """Wait until TLS is up (the app protocol then has its ``connection_made``); raises why it is not.

        Cancelled or failed, the connection is aborted: nothing is left open.
        """
        try:
            await self._handshake
        except BaseException:
            self.abort()
            raise

    # -- the TCP transport's protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        self._do_handshake()

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if not self._wrapped:
            if not self._handshake.done():
                self._do_handshake()
            return
        try:
            chunk = self._read(_READ)
        except _WANT:  # part of a record, or a handshake message with no data (a ticket, a key update)
            if self._outgoing.pending:  # what OpenSSL answers it with
                self._flush()
            return
        except Exception as exc:  # a bad record or an alert from the peer: the connection is unusable
            self._abort_with(exc)
            return
        if not chunk or self._incoming.pending or self._sslobj.pending() or self._outgoing.pending:
            self._receive([chunk] if chunk else [], closed=not chunk)
        else:
            # The common case, one whole record and nothing behind it: no second read to fail to learn so.
            self._app.data_received(chunk)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        # A TCP end: during the handshake the peer went away; after it, an end without close_notify (a
        # truncation attack looks the same) is a lost connection, never the app's end of stream.
        if not self._handshake.done():
            self._fail_handshake(ConnectionResetError("Connection lost during the TLS handshake"))
        return None  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if not self._handshake.done():
            self._handshake.set_exception(exc or ConnectionResetError("Connection lost during the TLS handshake"))
            return
        if self._wrapped:
            self._wrapped = False
            error = self._error
            self._app.connection_lost(error if isinstance(error, Exception) else exc)

    def pause_writing(self) -> None:
        if self._wrapped:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._wrapped:
            self._app.resume_writing()

    # -- TLS ----------------------------------------------------------------------------------------------------

    def _do_handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except _WANT:
            self._flush()
            return
        except Exception as exc:  # a certificate refused, a protocol error: this connection's end
            self._fail_handshake(exc)
            return
        self._cancel_timer()
        self._flush()
        self._wrapped = True
        self._app.connection_made(self)
        if not self._handshake.done():
            self._handshake.set_result(None)
        if self._incoming.pending and self._wrapped:  # the first data came with the peer's last handshake flight
            self._receive([])

    def _receive(self, chunks: list[bytes], closed: bool = False) -> None:
        """Read every record that is whole, deliver their data as one piece, then the peer's end if it sent one."""
        read = self._read
        incoming = self._incoming
        sslobj = self._sslobj
        try:
            while not closed and (incoming.pending or sslobj.pending()):
                chunk = read(_READ)
                if not chunk:  # close_notify: the peer's end of stream
                    closed = True
                else:
                    chunks.append(chunk)
        except _WANT:
            pass
        except Exception as exc:
            self._deliver(chunks)
            self._abort_with(exc)
            return
        self._flush()  # what reading made OpenSSL answer: a key update, an alert for a close_notify
        self._deliver(chunks)
        if closed:
            self._peer_closed()

    def _deliver(self, chunks: list[bytes]) -> None:
        if chunks and self._wrapped:
            self._app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))  # type: ignore[attr-defined]

    def _peer_closed(self) -> None:
        if not self._wrapped or self._peer_eof:
            return
        self._peer_eof = True  # once: SSL reads after close_notify keep returning nothing
        keep_open = self._app.eof_received()  # type: ignore[attr-defined]
        if not keep_open:
            self.close()

    def _flush(self) -> None:
        outgoing = self._outgoing
        tcp = self._tcp
        if outgoing.pending and tcp is not None and not tcp.is_closing():
            tcp.write(outgoing.read())

    def _fail_handshake(self, exc: BaseException) -> None:
        self._cancel_timer()
        if not self._handshake.done():
            self._handshake.set_exception(exc)
        if self._tcp is not None:
            self._tcp.abort()  # as uvloop: no alert flushed, the peer sees the connection end

    def _handshake_timed_out(self, seconds: float) -> None:
        self._handshake_timer = None
        self._fail_handshake(TimeoutError(f"SSL handshake is taking longer than {seconds} seconds: aborting"))

    def _cancel_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _abort_with(self, exc: BaseException) -> None:
        self._error = exc
        self.abort()

    # -- the app protocol's transport ---------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` and send it (never blocks: the TCP transport buffers, and pauses the app's writing)."""
        if self._closing or not data:
            return
        try:
            self._write(data)
        except Exception as exc:  # the SSL object is in an error state: nothing more can be sent
            self._abort_with(exc)
            return
        tcp = self._tcp
        if tcp is not None:
            tcp.write(self._outgoing.read())

    def writelines(self, list_of_data: Any) -> None:
        """Encrypt and send the pieces as one write."""
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        """TLS has no half-close (``close_notify`` ends both directions): see :meth:`can_write_eof`."""
        raise NotImplementedError("TLS connections cannot be half-closed")

    def can_write_eof(self) -> bool:
        """False, as for every TLS transport."""
        return False

    def close(self) -> None:
        """Send ``close_notify`` after what was written, then close the TCP connection once its buffer is sent."""
        if self._closing:
            return
        self._closing = True
        tcp = self._tcp
        if tcp is None:
            return
        if self._wrapped:
            with contextlib.suppress(ssl.SSLError, ValueError):
                self._ssl.unwrap()  # writes close_notify; the peer's answer is not waited for (as Envoy)
            self._flush_to(tcp)
        tcp.close()

    def abort(self) -> None:
        """Drop the connection now."""
        self._closing = True
        if self._tcp is not None:
            self._tcp.abort()

    def is_closing(self) -> bool:
        """Whether ``close``/``abort`` was called or the TCP connection is closing."""
        tcp = self._tcp
        return self._closing or tcp is None or tcp.is_closing()

    def _flush_to(self, tcp: asyncio.Transport) -> None:
        if self._outgoing.pending and not tcp.is_closing():
            tcp.write(self._outgoing.read())

    def pause_reading(self) -> None:
        """Stop reading from the socket (what was decrypted is already delivered)."""
        if self._tcp is not None:
            self._tcp.pause_reading()

    def resume_reading(self) -> None:
        """Read from the socket again."""
        if self._tcp is not None:
            self._tcp.resume_reading()

    def is_reading(self) -> bool:
        """Whether the socket is read."""
        return self._tcp is not None and self._tcp.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """The TCP transport's write buffer limits (the encrypted bytes are what it buffers)."""
        if self._tcp is not None:
            self._tcp.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        """Encrypted bytes waiting in the TCP transport."""
        return self._tcp.get_write_buffer_size() if self._tcp is not None else 0

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol above."""
        return self._app

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Hand the decrypted stream to another protocol."""
        self._app = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``ssl_object``, ``peercert``, ``cipher``, ``compression`` and ``sslcontext`` from TLS; the rest
        (``peername``, ``socket``, ...) from the TCP transport."""
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "cipher":
            return self._ssl.cipher()
        if name == "compression":
            return self._ssl.compression()
        if name == "sslcontext":
            return self._ssl.context
        return self._tcp.get_extra_info(name, default) if self._tcp is not None else default


async def open_tls(
    connect: Callable[[Callable[[], asyncio.BaseProtocol]], Any],
    app: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    server_hostname: str | None,
    session: ssl.SSLSession | None = None,
) -> TlsLayer:
    """Connect with ``connect(factory)`` (a ``loop.create_connection`` without ``ssl``) and do a client
    handshake, resuming ``session`` if the server still knows it; ``app`` has its ``connection_made`` once TLS
    is up. Raises what failed, the connection aborted."""
    layer = TlsLayer(context, app, server_side=False, server_hostname=server_hostname, session=session)
    try:
        await connect(lambda: layer)
    except BaseException:
        layer._cancel_timer()
        raise
    await layer.handshake()
    return layer


async def serve_tls(
    loop: asyncio.AbstractEventLoop,
    sock: Any,
    app: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    handshake_timeout: float | None,
) -> TlsLayer:
    """Serve an accepted socket with TLS (a server handshake); ``app`` has its ``connection_made`` once TLS is
    up. Raises what failed, the connection aborted."""
    layer = TlsLayer(context, app, server_side=True, handshake_timeout=handshake_timeout)
    try:
        await loop.connect_accepted_socket(lambda: layer, sock)
    except BaseException:
        layer._cancel_timer()
        raise
    await layer.handshake()
    return layer
