"""``access_log:``: one JSON line per request, outbound and inbound, written by a background thread.

The fields follow Envoy's default access log format (``%START_TIME%``,
``%REQ(:METHOD)%``, ``%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%``, ``%PROTOCOL%``,
``%RESPONSE_CODE%``, ``%RESPONSE_FLAGS%``, ``%BYTES_RECEIVED%``,
``%BYTES_SENT%``, ``%DURATION%``, ``%REQ(X-FORWARDED-FOR)%``,
``%REQ(USER-AGENT)%``, ``%REQ(X-REQUEST-ID)%``, ``%REQ(:AUTHORITY)%``,
``%UPSTREAM_HOST%``, ``%UPSTREAM_CLUSTER%``) in snake_case, plus the mesh's
own (route, tries, error code, trace id, direction, peer); the table is in
docs/observability.md.

The request path only takes a snapshot of the finished :class:`Exchange`
and appends it to a bounded queue; formatting and writing happen on the
writer thread, a batch at a time with one ``write`` per batch. When the queue
is full (the disk or the reader of standard output can't keep up) lines are
dropped and counted, never waited for.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from meshlib._config.observability import AccessLogConfig
from meshlib._errors import ConfigError
from meshlib._observe.exchange import Exchange
from meshlib._observe.observers import Observer
from meshlib._wire import _CLASSES

if TYPE_CHECKING:
    from meshlib._config.models import MeshConfig
    from meshlib._snapshot.compile import Runtime

__all__ = ["RESPONSE_FLAGS", "AccessLog", "build", "response_flags"]

logger = logging.getLogger("meshlib.observe")

# Lines waiting for the writer; beyond this, new lines are dropped (and counted).
MAX_PENDING: Final = 8192
# How long close() waits for the writer to write what is queued (a stuck disk or pipe must not hang shutdown).
CLOSE_TIMEOUT: Final = 1.0
# Bytes per write to standard output: a pipe shared by the workers of `meshlib proxy --workers N` keeps a write
# of up to PIPE_BUF bytes whole, so lines of different workers never interleave mid-line.
_STDOUT_CHUNK: Final = 4096
# The writer wakes at least this often even if not told (belt and braces: no line waits longer).
_IDLE_WAKE: Final = 1.0

# The mesh error code (x-meshlib-error's value) → Envoy's response flag for the same cause.
RESPONSE_FLAGS: Final[dict[str, str]] = {
    "no_healthy_upstream": "UH",
    "timeout": "UT",
    "upstream_reset": "UR",
    "upstream_connect_failure": "UF",
    "peer_identity_mismatch": "UF",  # Envoy: a TLS handshake that fails is a connection failure
    "circuit_open": "UO",
    "overloaded": "UO",
    "route_not_found": "NR",
    "rate_limited": "RL",
    "cancelled": "DC",
    "forbidden": "RBAC",  # meshlib's own: Envoy's RBAC filter says it in %RESPONSE_CODE_DETAILS% instead
}
# Envoy prints its flags in the order of its ResponseFlag enum; meshlib's RBAC goes last.
_ORDER: Final = ("UH", "UT", "UR", "UF", "UO", "NR", "DI", "FI", "RL", "DC", "URX", "RBAC")
# What the sidecar answers for a mesh error (and what the log shows as the status of a request that failed in
# process, where the caller got the exception instead): the error class's status.
_STATUS: Final[dict[str, int]] = {code: cls.status for code, cls in _CLASSES.items()}

# (error, status, reason) of each try, as the request ended.
TryOutcome = tuple[str | None, int | None, str | None]


def _retries_exhausted(tries: tuple[TryOutcome, ...]) -> bool:
    """Envoy's URX: the request was retried, and its last try ended the way that made it retry, so the retry
    policy would have gone on had it had tries (or budget) left."""
    if len(tries) < 2:
        return False
    error, status, _ = tries[-1]
    outcome = error if error is not None else (str(status) if status is not None else None)
    return outcome is not None and any(reason == outcome for _, _, reason in tries[1:])


def response_flags(error: str | None, tries: tuple[TryOutcome, ...] = (), *, extra: tuple[str, ...] = ()) -> str:
    """Envoy's ``%RESPONSE_FLAGS%`` for a request that ended with mesh error code ``error`` after ``tries``:
    comma-separated (``UF,URX``), or ``-`` when none applies."""
    flags = set(extra)
    if error is not None:
        flag = RESPONSE_FLAGS.get(error)
        if flag is not None:
            flags.add(flag)
    if _retries_exhausted(tries):
        flags.add("URX")
    if not flags:
        return "-"
    return ",".join(flag for flag in _ORDER if flag in flags)


def _fault_flags(fault: str | None) -> tuple[str, ...]:
    """Envoy's DI (a delay was injected) and FI (an abort was injected) for the fault filter's ``fault``."""
    if fault is None:
        return ()
    kinds = fault.split("+")
    return tuple(flag for kind, flag in (("delay", "DI"), ("abort", "FI")) if kind in kinds)


def _start_time(epoch: float) -> str:
    """RFC 3339 in UTC with milliseconds: ``2026-12-05T11:02:03.456Z``."""
    seconds = int(epoch)
    millis = int((epoch - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _upstream_host(endpoint: str | None) -> str | None:
    """An endpoint URL's ``host:port`` (Envoy's ``%UPSTREAM_HOST%``), without a user or password."""
    if endpoint is None:
        return None
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return endpoint
    netloc = rest.split("/", 1)[0].rpartition("@")[2]
    if netloc.endswith("]") or ":" not in netloc.rpartition("]")[2]:
        netloc += ":443" if scheme == "https" else ":80"
    return netloc


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """Every value of header ``name`` (lower case), joined with ``,`` as RFC 9110 §5.3 allows."""
    values = [v.decode("latin-1") for k, v in headers if k.lower() == name]
    return ",".join(values) if values else None


class _Entry:
    """What one line needs, copied from the Exchange when its request finished (the rest is done off the path)."""

    __slots__ = (
        "authority",
        "bytes_received",
        "bytes_sent",
        "cluster",
        "denied_by",
        "direction",
        "door",
        "duration",
        "endpoint",
        "error",
        "fault",
        "headers",
        "method",
        "path",
        "peer",
        "protocol",
        "request_id",
        "route",
        "start_time",
        "status",
        "trace_id",
        "tries",
        "user_agent",
    )

    def __init__(self, exchange: Exchange) -> None:
        self.start_time = exchange.start_time
        self.direction = exchange.direction
        self.door = exchange.door
        self.method = exchange.method
        self.authority = exchange.authority
        self.path = exchange.path
        self.status = exchange.status
        self.error = exchange.error
        self.route = exchange.route
        self.cluster = exchange.cluster
        self.endpoint = exchange.endpoint
        self.tries: tuple[TryOutcome, ...] = tuple((t.error, t.status, t.reason) for t in exchange.tries)
        self.duration = exchange.duration
        # Envoy counts from its downstream side: received = the request's body, sent = the response's. An outbound
        # exchange counts from the caller's side (it sent the request), an inbound one from the app's.
        if exchange.direction == "outbound":
            self.bytes_received, self.bytes_sent = exchange.bytes_sent, exchange.bytes_received
        else:
            self.bytes_received, self.bytes_sent = exchange.bytes_received, exchange.bytes_sent
        self.headers = exchange.headers
        self.user_agent = exchange.user_agent
        self.request_id = exchange.request_id
        self.trace_id = exchange.trace_id
        self.peer = exchange.peer
        self.denied_by = exchange.denied_by
        self.fault = exchange.fault
        self.protocol = exchange.protocol

    def line(self) -> str:
        status = self.status
        if status is None:
            # Failed before a response head: what the sidecar answers for the error; 0 (Envoy's "no response
            # was sent") when the caller went away or the failure is not a mesh error.
            status = _STATUS.get(self.error or "", 0)
        duration = self.duration
        record: dict[str, Any] = {
            "start_time": _start_time(self.start_time),
            "direction": self.direction,
            "door": self.door,
            "method": self.method,
            "authority": self.authority,
            "path": self.path,
            "protocol": self.protocol,
            "status": status,
            "response_flags": response_flags(self.error, self.tries, extra=_fault_flags(self.fault)),
            "error": self.error,
            "route": self.route,
            "upstream_cluster": self.cluster,
            "upstream_host": _upstream_host(self.endpoint),
            "tries": len(self.tries),
            "retry_reasons": [reason for _, _, reason in self.tries[1:]],
            "duration_ms": None if duration is None else round(duration * 1000, 3),
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "x_forwarded_for": _header(self.headers, b"x-forwarded-for"),
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "peer": self.peer,
            "denied_by": self.denied_by,
        }
        return json.dumps(record, separators=(",", ":"))


class AccessLog(Observer):
    """Queues a line per finished request; a daemon thread writes them to a file (appended to) or standard output."""

    name = "access_log"

    def __init__(self, path: str, fd: int | None) -> None:
        # fd: the file opened for appending, or None for standard output (looked up per batch, so that a
        # replaced sys.stdout, as pytest's capsys makes, gets the lines).
        self.path = path
        self._fd = fd
        self._pending: collections.deque[_Entry] = collections.deque()
        self._max_pending = MAX_PENDING
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()  # guards the counters written from several threads
        self._written = 0
        self._dropped = 0
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="meshlib-access-log", daemon=True)
        self._thread.start()

    # --- the request path ----------------------------------------------------------------------------------------

    def finished(self, exchange: Exchange) -> None:
        pending = self._pending
        if len(pending) >= self._max_pending or self._stopping:
            with self._lock:
                self._dropped += 1
            return
        pending.append(_Entry(exchange))
        if not self._wake.is_set():  # one lock per batch, not per line, under load
            self._wake.set()

    # --- the writer thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        pending = self._pending
        while True:
            self._wake.wait(_IDLE_WAKE)
            # Cleared before taking the lines: a line appended after this wakes the next round.
            self._wake.clear()
            batch: list[_Entry] = []
            while pending:
                batch.append(pending.popleft())
            if batch:
                self._write(batch)
            if self._stopping and not pending:
                return

    def _write(self, batch: list[_Entry]) -> None:
        lines: list[str] = []
        for entry in batch:
            try:
                lines.append(entry.line())
            except Exception:  # a value json can't take would be a bug here; the other lines still go out
                logger.warning("access log: could not format a line (dropped)", exc_info=True)
        dropped = len(batch) - len(lines)
        try:
            if self._fd is not None:
                _write_all(self._fd, "".join(line + "\n" for line in lines).encode())
            else:
                _write_stdout(lines)
        except (OSError, ValueError) as exc:  # ValueError: standard output was closed
            dropped += len(lines)
            lines = []
            if not self._warned:
                self._warned = True
                logger.warning("access log: cannot write to %s (%s); lines are dropped while it fails", self.path, exc)
        with self._lock:
            self._written += len(lines)
            self._dropped += dropped

    # --- stats and shutdown --------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "path": self.path,
                "written": self._written,
                "dropped": self._dropped,
                "pending": len(self._pending),
            }

    def close(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(CLOSE_TIMEOUT)
        if self._thread.is_alive():
            # The writer is stuck in a write (a full pipe nobody reads): what it has not taken is lost.
            left = len(self._pending)
            self._pending.clear()
            with self._lock:
                self._dropped += left
            logger.warning("access log: %s did not take the last lines within %gs", self.path, CLOSE_TIMEOUT)
            return
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_stdout(lines: list[str]) -> None:
    stream = sys.stdout
    if stream is None:  # pythonw, or closed by the embedding app
        raise ValueError("there is no standard output")
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # a stand-in without a descriptor (pytest's capsys, StringIO)
        stream.write("".join(line + "\n" for line in lines))
        stream.flush()
        return
    stream.flush()  # what the app printed first comes first
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        data = line.encode() + b"\n"
        if chunk and size + len(data) > _STDOUT_CHUNK:
            _write_all(fd, b"".join(chunk))
            chunk, size = [], 0
        chunk.append(data)
        size += len(data)
    if chunk:
        _write_all(fd, b"".join(chunk))


def build(section: AccessLogConfig, config: MeshConfig, runtime: Runtime) -> AccessLog:
    """The access log ``section`` asks for; a file that can't be opened for appending is a ConfigError."""
    if section.path == "-":
        return AccessLog("-", None)
    try:
        fd = os.open(section.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError(
            [("access_log.path", f"cannot open {section.path!r} for appending: {exc.strerror or exc}")]
        ) from None
    return AccessLog(section.path, fd)


def path_problem(path: str) -> str | None:
    """Why ``path`` could not take an access log (without creating it: ``meshlib validate``), or None."""
    if path == "-":
        return None
    target = Path(path)
    if target.is_dir():
        return f"cannot open {path!r} for appending: it is a directory"
    if target.exists():
        return None if os.access(target, os.W_OK) else f"cannot open {path!r} for appending: not writable"
    parent = target.parent
    if not parent.is_dir():
        return f"cannot open {path!r} for appending: no directory {str(parent)!r}"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"cannot create {path!r}: its directory is not writable"
