"""Interrupting a sync try that blocks in a socket read: how a hedge that won stops it, and how a deadline ends it.

A sync hedge runs its first try in the caller's own thread, because handing
every request to a worker thread costs more than the rest of the engine (about
60 µs per request). When a hedged try answers first, the inline try may be
blocked in ``recv``: the hedge calls :meth:`Interrupt.interrupt`, which shuts
the socket down, so the read returns at once and :class:`TryInterrupted` is
raised in its place. httpcore then drops that connection, as it does for a
cancelled async request.

This works for httpx's own ``HTTPTransport`` (HTTP/1.1), whose connection
pool gets an :class:`InterruptibleBackend` that tells the current try which
socket it is reading (:func:`make_interruptible`). Other senders, and an
``HTTPTransport`` whose pool respx has patched (no sockets at all), are not
interruptible: the hedge then runs each try on a worker thread instead
(:func:`interruptible`).

The same streams end each read at :data:`READ_DEADLINE`, when the try (its
response body included) must be over: httpcore hands every read of a body the
same read timeout, so without it an upstream that sends a byte now and then
could keep a sync caller reading long past its timeouts.

Only a config that needs one or the other gets the backend
(:func:`interrupts_needed`: a ``hedge``, or a ``timeout`` or
``per_try_timeout`` that bounds a try), and the front door installs it only
then, also when a reload brings one in; a client wrapped for a mesh without
them keeps httpx's own backend untouched. Connections a pool opened before
the backend was installed cannot be interrupted: while any is in the pool,
the transport counts as not interruptible.

The stream and backend classes subclass httpcore's, so they live in
``interrupt_backend.py``, loaded only once a transport of httpcore's is
made interruptible: this module is read by every sync try, and the sidecar
and a mesh on ``AsyncHTTP1Transport`` never import httpcore (nor trio, which
httpcore imports when it is installed). ``InterruptibleBackend`` and
``WrappingBackend`` can still be imported from here (loading httpcore then).
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import weakref
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, TypeGuard

import httpx

if TYPE_CHECKING:
    import httpcore

    from meshlib._config.models import ClusterConfig, MeshConfig, RouteConfig
    from meshlib._engine.interrupt_backend import InterruptibleBackend, WrappingBackend

__all__ = [
    "CURRENT",
    "READ_DEADLINE",
    "Interrupt",
    "InterruptibleBackend",
    "TryInterrupted",
    "WrappingBackend",
    "interruptible",
    "interrupts_needed",
    "make_interruptible",
]

# The Interrupt of the try running inline in this thread (set by the sync hedge around its inline try).
CURRENT: Final[ContextVar[Interrupt | None]] = ContextVar("meshlib_interrupt", default=None)
# When (time.monotonic()) the sync try reading in this thread must be over, or None: set around a try's
# head by the per-try timeout filter, and around each read of its body by the body wrapper (streams.py).
READ_DEADLINE: Final[ContextVar[float | None]] = ContextVar("meshlib_read_deadline", default=None)

# Set on a sender whose blocking calls honour CURRENT (or that never block).
_MARK = "_meshlib_interruptible"
# Set on a transport whose pool had connections when it got the backend: those (weakly held) cannot be interrupted.
_OLDER = "_meshlib_uninterruptible_connections"


class TryInterrupted(BaseException):
    """Raised in a sync try that a winning hedge interrupted.

    A BaseException, like ``asyncio.CancelledError``: no policy counts it as
    the upstream's failure, and only the hedge that interrupted catches it.
    """


class Interrupt:
    """One inline try's interruption: a flag, and the socket the try is blocked on, if any."""

    __slots__ = ("_lock", "_sock", "interrupted")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.interrupted = False

    def interrupt(self) -> None:
        """Stop the try: shut its socket down if it is in a read or write; any later one raises at once."""
        with self._lock:
            self.interrupted = True
            sock = self._sock
            if sock is not None:
                _shutdown(sock)

    def enter(self, sock: socket.socket | None) -> None:
        """Called before a blocking read or write on ``sock``; raises if the try was interrupted already."""
        with self._lock:
            if self.interrupted:
                raise TryInterrupted
            self._sock = sock

    def leave(self) -> None:
        with self._lock:
            self._sock = None


def _shutdown(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for an SSLSocket: its own would tear down TLS state that the
    # blocked reader is using. OSError: already closed, so nothing is blocked on it.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def interrupts_needed(config: MeshConfig) -> bool:
    """Whether a sync try under ``config`` may have to be cut short in a read: by a hedge that won, or at its deadline.

    True when a route or cluster has a ``hedge`` (what a hedge interrupts), a
    ``timeout`` or a ``retry.per_try_timeout`` (what sets ``READ_DEADLINE``).
    A cluster no route sends to may make this true for nothing: the backend
    then only costs a context variable read or two per read and write.
    """
    scopes: list[ClusterConfig | RouteConfig] = [*config.clusters.values(), *config.routes]
    for policies in scopes:
        if policies.hedge is not None or policies.timeout is not None:
            return True
        if policies.retry is not None and policies.retry.per_try_timeout is not None:
            return True
    return False


def __getattr__(name: str) -> Any:
    """The backend classes, from the module that imports httpcore (see the module docstring)."""
    if name in ("InterruptibleBackend", "WrappingBackend"):
        from meshlib._engine import interrupt_backend  # httpcore loads only where an httpcore transport is used

        return getattr(interrupt_backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _sync_pool(pool: object) -> TypeGuard[httpcore.ConnectionPool]:
    """Whether ``pool`` is httpcore's sync connection pool: never, while nothing has imported httpcore."""
    if "httpcore" not in sys.modules:
        return False
    import httpcore  # imported already: this costs a dict lookup

    return isinstance(pool, httpcore.ConnectionPool)


def make_interruptible(transport: httpx.BaseTransport) -> None:
    """Let a hedge interrupt ``transport``'s blocked tries, when it is httpx's HTTP/1.1 transport.

    Anything else is left alone (and its tries run on worker threads when hedged).
    """
    if type(transport).handle_request is not httpx.HTTPTransport.handle_request:
        return  # a subclass that sends its own way, or another transport
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if not _sync_pool(pool) or backend is None or getattr(pool, "_http2", True):
        return  # HTTP/2 multiplexes tries over one socket: shutting it down would cut the others
    # httpcore loads only where an httpcore transport is used: ``transport`` is one, so it is loaded already.
    from meshlib._engine.interrupt_backend import InterruptibleBackend

    if not isinstance(backend, InterruptibleBackend):
        pool._network_backend = InterruptibleBackend(backend)
        older = pool.connections  # opened through the backend before: their streams do not honour an Interrupt
        if older:
            setattr(transport, _OLDER, weakref.WeakSet(older))
    setattr(transport, _MARK, True)


def interruptible(sender: httpx.BaseTransport | None) -> bool:
    """Whether a try through ``sender`` can be interrupted (see the module docstring)."""
    if not getattr(sender, _MARK, False):
        return False
    pool = getattr(sender, "_pool", None)
    older: weakref.WeakSet[httpcore.ConnectionInterface] | None = getattr(sender, _OLDER, None)
    if older is not None and pool is not None:
        # A try might be sent on a connection opened before the backend was installed: not until those are gone.
        if any(connection in older for connection in pool.connections):
            return False
        setattr(sender, _OLDER, None)
    # respx patches the pool class's handle_request: no socket is ever read, so nothing could be interrupted.
    return pool is None or type(pool).handle_request.__module__.startswith("httpcore.")
