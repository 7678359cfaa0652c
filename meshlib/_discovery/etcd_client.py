"""A small synchronous etcd v3 client over etcd's JSON gateway, for meshlib's background threads.

etcd serves its gRPC API as JSON too (``POST /v3/kv/range`` and so on; keys and
values base64, int64 fields as JSON strings), so plain httpx reaches it, with
TLS and without a gRPC or protobuf dependency. Every call tries the member it
last used, then each other member in turn: a member that refuses, times out,
answers 5xx or has no leader is skipped, and :class:`EtcdUnavailable` says
which members were tried when none answered. (When the leader dies, a write a
follower forwarded to it is lost in raft: that follower answers only at the
timeout, and the next member then serves the call.)
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

import httpx

if TYPE_CHECKING:
    from meshlib._config.discovery import EtcdConfig

__all__ = [
    "Compacted",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "Event",
    "KeyValue",
    "LeaseNotFound",
    "Watch",
    "WatchBatch",
]

T = TypeVar("T")

# gRPC codes that mean "this member cannot serve now" (DEADLINE_EXCEEDED, UNAVAILABLE: "etcdserver: no leader",
# "request timed out", "leader changed"): the next member may.
_UNAVAILABLE_CODES = frozenset({4, 14})
# Answers after which clientv3 authenticates again and retries: the token expired, was never sent, or predates
# a change of users or roles.
_STALE_TOKEN = ("invalid auth token", "user name is empty", "revision of auth store is old")


class EtcdError(Exception):
    """etcd answered a call with an error; the message names etcd, the member and the call."""


class EtcdUnavailable(EtcdError):  # noqa: N818 - the name says what the caller handles: retry later
    """No etcd member could be reached or answered in time; the message names every member tried."""


class Compacted(EtcdError):  # noqa: N818
    """A watch asked for a revision etcd has compacted away: list again, then watch from the list's revision."""

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class LeaseNotFound(EtcdError):  # noqa: N818
    """A keepalive or revoke of a lease that expired or never existed."""


class _MemberDownError(Exception):
    """This member cannot answer now: try the next one."""


class _StaleTokenError(EtcdError):
    """The auth token was refused: authenticate again and retry once."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd stores it; ``lease`` is 0 when the key has none."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class Event:
    """A change to one key; for ``delete``, ``kv.value`` is ``b""``."""

    type: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """The events of one watch response and its header revision; no events is a progress notification."""

    revision: int
    events: tuple[Event, ...]


def _b64(data: str | bytes) -> str:
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def _prefix_end(key: str) -> str:
    """etcd's range_end for every key starting with ``key``: its last byte below 0xff incremented, the rest cut."""
    raw = bytearray(key.encode("utf-8", "surrogateescape"))
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return _b64(b"\0")  # all of key's bytes are 0xff: every key from key on
    raw[-1] += 1
    return _b64(bytes(raw))


def _kv(data: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(data.get("key")).decode("utf-8", "surrogateescape"),
        value=_unb64(data.get("value")),
        create_revision=int(data.get("create_revision", 0)),
        mod_revision=int(data.get("mod_revision", 0)),
        version=int(data.get("version", 0)),
        lease=int(data.get("lease", 0)),
    )


def _revision(data: dict[str, Any]) -> int:
    return int(data.get("header", {}).get("revision", 0))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_of(data: Any) -> tuple[str, int | None] | None:
    """The message and gRPC code of an error answer; unary calls and streams spell it differently."""
    if not isinstance(data, dict) or not data.get("error"):
        return None
    error = data["error"]
    if isinstance(error, dict):  # a stream's error line: {"error": {"grpc_code": 14, "message": ...}}
        return str(error.get("message", error)), error.get("grpc_code")
    code = data.get("code")
    return str(data.get("message") or error), code if isinstance(code, int) else None


class EtcdClient:
    """A client of one etcd cluster, safe to share between threads; see the module docstring for failover.

    With ``username`` and ``password`` it authenticates and sends the token on
    every call, authenticating again when etcd says the token is stale. With
    https endpoints, ``ca_file`` verifies etcd (the system's CAs without it)
    and ``cert_file``/``key_file`` are the client certificate etcd may ask for
    (ValueError when they cannot be loaded). ``timeout`` bounds each try of
    one member, so a call that fails everywhere takes at most about
    ``timeout`` × members.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint")
        self._endpoints = [endpoint.rstrip("/") for endpoint in endpoints]
        self._current = 0
        self._timeout = httpx.Timeout(timeout)
        context = ssl.create_default_context()
        try:
            if ca_file is not None:
                context.load_verify_locations(ca_file)
            if cert_file is not None:
                context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"etcd TLS files ({ca_file=}, {cert_file=}, {key_file=}): {exc}") from None
        # trust_env=False: etcd is reached directly, never through an HTTP_PROXY meant for the app's traffic.
        self._http = httpx.Client(timeout=self._timeout, verify=context, trust_env=False)
        self._credentials = (username, password) if username is not None and password is not None else None
        self._token: str | None = None
        self._token_lock = threading.Lock()
        self._watches: weakref.WeakSet[Watch] = weakref.WeakSet()

    @classmethod
    def from_config(cls, config: EtcdConfig) -> EtcdClient:
        """A client for ``registry.etcd``: its members, timeout, TLS files and credentials."""
        tls = config.tls
        return cls(
            config.endpoints,
            timeout=config.timeout,
            ca_file=tls.ca_file if tls else None,
            cert_file=tls.cert_file if tls else None,
            key_file=tls.key_file if tls else None,
            username=config.username,
            password=config.password,
        )

    @property
    def member(self) -> str:
        """The endpoint URL in use now: the one the last successful call went to."""
        return self._endpoints[self._current]

    # --- keys ----------------------------------------------------------------------------------------------------

    def range(self, key: str, *, prefix: bool = False) -> tuple[int, list[KeyValue]]:
        """``(header revision, kvs)`` of ``key``, or of every key under it with ``prefix``; etcd sorts by key."""
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _prefix_end(key)
        data = self._post("/v3/kv/range", body)
        return _revision(data), [_kv(kv) for kv in data.get("kvs", [])]

    def get(self, key: str) -> KeyValue | None:
        """``key``'s current value, or None."""
        _, kvs = self.range(key)
        return kvs[0] if kvs else None

    def put(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
        """Set ``key`` (attached to ``lease`` unless 0); returns the revision that wrote it.

        LeaseNotFound when ``lease`` expired or was revoked.
        """
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return _revision(self._post("/v3/kv/put", body))

    def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete ``key``, or every key under it with ``prefix``; returns how many were deleted."""
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _prefix_end(key)
        return int(self._post("/v3/kv/deleterange", body).get("deleted", 0))

    def compact(self, revision: int) -> None:
        """Drop the history before ``revision``: watches from an older revision get :class:`Compacted`."""
        self._post("/v3/kv/compaction", {"revision": str(revision)})

    def watch(self, key: str, *, prefix: bool = False, start_revision: int) -> Watch:
        """Changes to ``key`` (or under it) from ``start_revision`` on; the stream is open when this returns."""
        request: dict[str, Any] = {"key": _b64(key), "start_revision": str(start_revision), "progress_notify": True}
        if prefix:
            request["range_end"] = _prefix_end(key)
        watch = Watch(self, request)
        self._watches.add(watch)
        return watch

    # --- leases --------------------------------------------------------------------------------------------------

    def lease_grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds (etcd may grant more: at least 1.5 election timeouts); returns its id."""
        return int(self._post("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def lease_keepalive(self, lease: int) -> int:
        """Renew ``lease``; returns its TTL again. LeaseNotFound when it expired or was revoked."""
        ttl = int(self._post("/v3/lease/keepalive", {"ID": str(lease)}).get("TTL", 0))
        if ttl <= 0:  # etcd answers a keepalive of an unknown lease with TTL 0, not an error
            raise LeaseNotFound(f"etcd {self.member} lease/keepalive: lease {lease:x} not found (expired or revoked)")
        return ttl

    def lease_revoke(self, lease: int) -> None:
        """End ``lease`` now, deleting its keys. LeaseNotFound when it is already gone."""
        self._post("/v3/lease/revoke", {"ID": str(lease)})

    # --- cluster -------------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """/v3/maintenance/status of the member in use: ``leader``, ``header.member_id``, ``raftTerm``..."""
        return self._post("/v3/maintenance/status", {})

    def close(self) -> None:
        """Close open watches and connections."""
        for watch in list(self._watches):
            watch.close()
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # --- calls, failover and auth --------------------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        def call(endpoint: str, headers: dict[str, str]) -> dict[str, Any]:
            try:
                response = self._http.post(endpoint + path, json=body, headers=headers)
            except httpx.TransportError as exc:  # refused, reset, TLS failures and timeouts
                raise _MemberDownError(_describe(exc)) from None
            return self._answer(endpoint, path, response.status_code, response.content)

        return self._failover(call)

    def _failover(self, call: Callable[[str, dict[str, str]], T]) -> T:
        """``call(endpoint, auth headers)`` on the member in use, then on each other; EtcdUnavailable when all fail."""
        start = self._current
        failures: list[tuple[str, str]] = []
        for step in range(len(self._endpoints)):
            index = (start + step) % len(self._endpoints)
            endpoint = self._endpoints[index]
            try:
                result = self._authorized(endpoint, call)
            except _MemberDownError as exc:
                failures.append((endpoint, str(exc)))
                continue
            self._current = index
            return result
        tried = ", ".join(endpoint for endpoint, _ in failures)
        reasons = {reason for _, reason in failures}
        why = reasons.pop() if len(reasons) == 1 else "; ".join(f"{e}: {reason}" for e, reason in failures)
        raise EtcdUnavailable(f"etcd unreachable (tried {tried}): {why}")

    def _authorized(self, endpoint: str, call: Callable[[str, dict[str, str]], T]) -> T:
        for attempt in range(2):
            token = self._token_for(endpoint)
            try:
                return call(endpoint, {"Authorization": token} if token else {})
            except _StaleTokenError as exc:
                if self._credentials is None or attempt:
                    raise EtcdError(str(exc)) from None
                with self._token_lock:
                    if self._token == token:  # not already replaced by another thread
                        self._token = None
        raise AssertionError("unreachable")

    def _token_for(self, endpoint: str) -> str | None:
        if self._credentials is None:
            return None
        with self._token_lock:  # one authentication at a time; the others wait and share its token
            if self._token is None:
                self._token = self._authenticate(endpoint, *self._credentials)
            return self._token

    def _authenticate(self, endpoint: str, username: str, password: str) -> str:
        try:
            response = self._http.post(
                f"{endpoint}/v3/auth/authenticate", json={"name": username, "password": password}
            )
        except httpx.TransportError as exc:
            raise _MemberDownError(_describe(exc)) from None
        try:
            return str(self._answer(endpoint, "/v3/auth/authenticate", response.status_code, response.content)["token"])
        except EtcdError as exc:
            if "authentication is not enabled" in str(exc):
                return ""  # credentials ready before etcd enables auth: calls go without a token until it does
            raise EtcdError(f"{exc} (as user {username!r})") from None

    def _answer(self, endpoint: str, path: str, status: int, content: bytes) -> dict[str, Any]:
        """The JSON of an answer (the first line of a stream's), or the exception its error calls for."""
        call = f"etcd {endpoint} {path.removeprefix('/v3/')}"
        try:
            data = json.loads(content.split(b"\n", 1)[0] or b"{}")
        except ValueError:
            data = None
        error = _error_of(data)
        if status >= 500 or (error is not None and error[1] in _UNAVAILABLE_CODES):
            detail = error[0] if error is not None else repr(content[:200])
            raise _MemberDownError(f"HTTP {status}: {detail}")
        if error is not None:
            message = error[0]
            if "lease not found" in message:
                raise LeaseNotFound(f"{call}: {message}")
            if any(stale in message for stale in _STALE_TOKEN):
                raise _StaleTokenError(f"{call}: {message}")
            raise EtcdError(f"{call}: {message}")
        if status != 200 or not isinstance(data, dict):
            raise EtcdError(f"{call}: unexpected HTTP {status} answer {content[:200]!r}")
        result = data.get("result", data)  # a stream's line wraps its message in "result"
        return result if isinstance(result, dict) else {}


class Watch:
    """An open watch on ``member``: iterate it for :class:`WatchBatch` values; a context manager.

    Iteration raises :class:`Compacted` when the start revision was compacted,
    and :class:`EtcdUnavailable` when the stream breaks, ends or is canceled
    (the member died or lost its leader): resume from the last revision + 1.
    After :meth:`close`, from any thread, iteration stops (StopIteration).
    """

    def __init__(self, client: EtcdClient, request: dict[str, Any]) -> None:
        self._client = client
        self._request = request
        self._lock = threading.Lock()
        self._closed = False
        self._reading = False
        self._response: httpx.Response | None = None
        self._lines: Iterator[str] = iter(())
        self.member = ""
        client._failover(self._open)

    def _open(self, endpoint: str, headers: dict[str, str]) -> None:
        http = self._client._http
        # hasleader: a member that loses its leader cancels this watch (after about 3 election timeouts)
        # instead of keeping it open and silent while the cluster moves on without it.
        headers = {**headers, "Grpc-Metadata-hasleader": "true"}
        request = http.build_request(
            "POST", f"{endpoint}/v3/watch", json={"create_request": self._request}, headers=headers
        )
        try:
            response = http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _MemberDownError(_describe(exc)) from None
        try:
            if response.status_code != 200:
                response.read()
                self._client._answer(endpoint, "/v3/watch", response.status_code, response.content)
                raise _MemberDownError(f"HTTP {response.status_code}")
            # etcd sent the headers with its "created" line; from here the stream may stay quiet for as long as
            # nothing changes, so no read timeout (httpcore reads it when the body starts).
            request.extensions["timeout"] = {**request.extensions["timeout"], "read": None}
            self._lines = response.iter_lines()
            created = self._next_message(endpoint, response)
            if created is None or not created.get("created"):
                raise _MemberDownError(f"no 'created' answer to the watch: {created!r}")
            self._check_canceled(endpoint, created)
        except BaseException:
            response.close()
            raise
        self._response, self.member = response, endpoint

    def _next_message(self, endpoint: str, response: httpx.Response) -> dict[str, Any] | None:
        """The next line's message; None at the stream's end. Raises _MemberDownError for a stream error line."""
        for line in self._lines:
            if line.strip():
                return self._client._answer(endpoint, "/v3/watch", response.status_code, line.encode())
        return None

    def _check_canceled(self, endpoint: str, result: dict[str, Any]) -> None:
        compact_revision = int(result.get("compact_revision", 0))
        if compact_revision:
            raise Compacted(f"etcd {endpoint} watch: revision compacted up to {compact_revision}", compact_revision)
        if result.get("canceled"):
            reason = str(result.get("cancel_reason") or "no reason given")
            if any(stale in reason for stale in _STALE_TOKEN):
                raise _StaleTokenError(f"etcd {endpoint} watch: {reason}")
            if "PermissionDenied" in reason or "permission denied" in reason:
                raise EtcdError(f"etcd {endpoint} watch: {reason}")
            raise _MemberDownError(f"watch canceled: {reason}")

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> WatchBatch:
        with self._lock:
            if self._closed or self._response is None:
                raise StopIteration
            self._reading = True
            response = self._response
        try:
            result = self._next_message(self.member, response)
            if result is None:
                raise _MemberDownError("the stream ended")
            self._check_canceled(self.member, result)
        except (httpx.HTTPError, _MemberDownError, _StaleTokenError) as exc:
            if self._done_reading(failed=True):
                raise StopIteration from None  # close() broke the stream on purpose
            why = exc if isinstance(exc, _MemberDownError) else _describe(exc)
            raise EtcdUnavailable(f"etcd watch on {self.member} broke: {why}") from None
        except BaseException:
            if self._done_reading(failed=True):
                raise StopIteration from None
            raise
        if self._done_reading(failed=False):
            raise StopIteration
        events = tuple(
            Event("delete" if event.get("type") == "DELETE" else "put", _kv(event.get("kv", {})))
            for event in result.get("events", [])
        )
        return WatchBatch(_revision(result), events)

    def _done_reading(self, *, failed: bool) -> bool:
        """After a read: True when close() came meanwhile. A failed read ends the watch; a done one lets go."""
        with self._lock:
            self._reading = False
            closed = self._closed
            self._closed = closed or failed
            if self._closed and self._response is not None:
                self._response.close()
                self._response = None
            return closed

    def close(self) -> None:
        """Stop the watch, from any thread: a blocked iteration ends promptly with StopIteration."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            response = self._response
            if not self._reading:
                if response is not None:
                    response.close()
                    self._response = None
                return
        # A thread is blocked reading: close() on a socket does not wake it on Linux, shutdown() does. The
        # reader then finds the watch closed and releases the response itself.
        stream = response.extensions.get("network_stream") if response is not None else None
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):  # already closed
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, under any TLS layer

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
