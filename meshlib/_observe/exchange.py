"""One request as observers see it: an :class:`Exchange` and its :class:`Try` records.

Times are ``time.perf_counter()`` values for durations and a wall-clock epoch
for the start, as access logs and spans need both. Observers may keep their
own per-request state in ``Exchange.slots`` / ``Try.slots`` (a span, a start
time), keyed by the observer, so one record serves them all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final, Literal

import httpx

__all__ = ["Exchange", "Try", "now", "outbound", "retry_reason"]

# The clock of the records' durations, bound once: compiled, ``time.perf_counter()`` would look the function up in
# its module on every call, and a request reads the clock several times.
now: Final = time.perf_counter

Direction = Literal["outbound", "inbound"]


class _Slotted:
    """A record observers may keep their own state in (``slots``), made when first asked: most records' stays empty."""

    _slots: dict[object, Any] | None = None

    @property
    def slots(self) -> dict[object, Any]:
        """Observers' own state for this record (a span, a start time), keyed by the observer."""
        found = self._slots
        if found is None:
            found = self._slots = {}
        return found

    @slots.setter
    def slots(self, value: dict[object, Any]) -> None:
        self._slots = value


class Try(_Slotted):
    """One try of an outbound request: to which endpoint, how it ended, and why it was made."""

    # No __slots__: the fields a try starts without are class attributes, so making one stores only the others.
    end: float | None = None
    status: int | None = None
    error: str | None = None  # the mesh error code (x-meshlib-error's value) when the try raised
    reason: str | None = None  # why this try was made when it is not the first: see retry_reason()

    def __init__(self, attempt: int, cluster: str | None, endpoint: str | None) -> None:
        self.attempt = attempt
        self.cluster = cluster
        self.endpoint = endpoint
        self.start = now()

    @property
    def duration(self) -> float | None:
        """Seconds from the try's start to its response head (or its failure); None while in flight."""
        return None if self.end is None else self.end - self.start


def retry_reason(previous: Try | None) -> str:
    """Why a try after ``previous`` was made: its error code, its status, or ``hedge`` when it was still running."""
    if previous is None or previous.end is None:
        return "hedge"
    if previous.error is not None:
        return previous.error
    return str(previous.status)


class Exchange(_Slotted):
    """One request, outbound (a client's call through the mesh) or inbound (a call into the app).

    The engine fills ``route``, ``cluster``, ``endpoint`` and ``tries`` as it
    goes; the door fills the status, the error code (a mesh error's ``code``,
    what ``x-meshlib-error`` says), the byte counts and ``end`` once the
    response body is done or the request failed. Inbound exchanges also carry
    ``peer`` (the caller's principal), ``denied_by`` (the authorization policy
    that refused it) and ``headers`` (the request's, for trace extraction).

    An outbound exchange made with ``request=`` reads its method, scheme,
    authority, path, headers, user agent, request id and request body size
    from that request only when an observer asks (most requests are not
    traced and many are never logged): making one costs a few attribute stores.
    """

    # Each field's default is a class attribute (an instance default where mypyc compiles this module); the
    # constructor stores the ones a request sets.
    _request: httpx.Request | None = None
    _method: str | None = None
    _scheme: str | None = None
    _authority: str | None = None
    _path: str | None = None
    _headers: list[tuple[bytes, bytes]] | None = None
    _user_agent: str | None = None
    _request_id: str | None = None
    _bytes_sent: int | None = None
    _start_time: float | None = None  # the wall clock's, read from it when first asked (see start_time)
    _trace_id: str | bytes | None = None
    direction: Direction = "outbound"
    door = "client"  # outbound: "client" (in process) or "sidecar"; inbound: "asgi", "wsgi" or "sidecar"
    route: str | None = None
    cluster: str | None = None
    endpoint: str | None = None
    status: int | None = None
    error: str | None = None
    bytes_received = 0
    end: float | None = None
    peer: str | None = None
    denied_by: str | None = None
    protocol: str | None = None  # "HTTP/1.1", "HTTP/2", ... as the door or the upstream spoke it
    fault: str | None = None  # what the route's fault filter injected: "delay", "abort" or "delay+abort"
    # Outbound: header entries (httpx's (raw name, lower-case name, value)) an observer's started() asks every
    # try's request to carry, added by the engine's try hook (hooks.try_started) with no call to the observer.
    inject: Sequence[tuple[bytes, bytes, bytes]] | None = None
    start: float
    tries: list[Try]

    def __init__(
        self,
        direction: Direction,
        door: str,
        method: str | None = None,
        scheme: str | None = None,
        authority: str | None = None,
        path: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        request: httpx.Request | None = None,
        route: str | None = None,
        status: int | None = None,
        user_agent: str | None = None,
        request_id: str | None = None,
        peer: str | None = None,
        bytes_received: int = 0,
        bytes_sent: int | None = None,
    ) -> None:
        self.direction = direction
        self.door = door
        self._request = request
        self._method = method
        self._scheme = scheme
        self._authority = authority
        self._path = path
        self._headers = headers
        self._user_agent = user_agent
        self._request_id = request_id
        self._bytes_sent = bytes_sent
        self._trace_id = None  # (mypyc applies no class default to this union's attribute)
        self.start = now()
        self.route = route
        self.tries = []
        self.status = status
        self.bytes_received = bytes_received
        self.peer = peer

    @property
    def start_time(self) -> float:
        """When the request started on the wall clock (an epoch), as Envoy's START_TIME: logs line up with others'.

        Worked out from ``start`` when first asked (the access log's): the wall clock now, less the time since.
        """
        found = self._start_time
        if found is None:
            found = self._start_time = time.time() - (now() - self.start)
        return found

    @start_time.setter
    def start_time(self, value: float) -> None:
        self._start_time = value

    @property
    def trace_id(self) -> str | None:
        """The request's trace id (32 hex digits) when it is traced.

        Tracing may store a new trace's ids as the traceparent its requests carry (bytes: ``00-``, then the trace id's
        32 hex digits), made a string here when first read: most requests' is never read.
        """
        found = self._trace_id
        if isinstance(found, bytes):
            found = self._trace_id = found[3:35].decode("ascii")
        return found

    @trace_id.setter
    def trace_id(self, value: str | None) -> None:
        self._trace_id = value

    @property
    def method(self) -> str:
        """The request's method."""
        if self._method is None:
            self._method = self._request.method if self._request is not None else ""
        return self._method

    @property
    def scheme(self) -> str:
        """``http`` or ``https``."""
        if self._scheme is None:
            self._scheme = self._request.url.scheme if self._request is not None else ""
        return self._scheme

    @property
    def authority(self) -> str:
        """The Host the caller sent (the URL's host and port when it sent none)."""
        if self._authority is None:
            request = self._request
            found: str | None = None
            if request is not None:
                # What Headers.get gives, from httpx's (raw name, lower-case name, value) entries: every Host, joined.
                hosts = [entry[2] for entry in request.headers._list if entry[1] == b"host"]
                if hosts:
                    found = b", ".join(hosts).decode(request.headers.encoding)
                else:
                    found = request.url.netloc.decode("ascii")
            self._authority = found or ""
        return self._authority

    @property
    def path(self) -> str:
        """The path and query as sent."""
        if self._path is None:
            self._path = self._request.url.raw_path.decode("ascii", "replace") if self._request is not None else ""
        return self._path

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The request's headers, raw (names as sent)."""
        if self._headers is None:
            # Headers.raw's pairs, from httpx's own entries (its property is a Python call and a comprehension).
            request = self._request
            self._headers = [(entry[0], entry[2]) for entry in request.headers._list] if request is not None else []
        return self._headers

    def has_any_header(self, names: frozenset[bytes]) -> bool:
        """Whether the request has a header named in ``names`` (lower case): a scan, no copy of the headers."""
        if self._headers is None and self._request is not None:
            # httpx's entries: (raw name, lower-case name, value). A loop: any() over a generator takes longer.
            for entry in self._request.headers._list:  # noqa: SIM110
                if entry[1] in names:
                    return True
            return False
        return any(key.lower() in names for key, _ in self.headers)

    def header(self, name: bytes) -> str | None:
        """The first value of the request header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None

    @property
    def user_agent(self) -> str | None:
        """The request's User-Agent."""
        if self._user_agent is None:
            self._user_agent = self.header(b"user-agent")
        return self._user_agent

    @property
    def request_id(self) -> str | None:
        """The request's X-Request-Id."""
        if self._request_id is None:
            self._request_id = self.header(b"x-request-id")
        return self._request_id

    @property
    def bytes_sent(self) -> int:
        """Body bytes sent: outbound, the request's (its Content-Length); inbound, the response's."""
        if self._bytes_sent is None:
            length = self.header(b"content-length")
            self._bytes_sent = int(length) if length is not None and length.isdigit() else 0
        return self._bytes_sent

    @bytes_sent.setter
    def bytes_sent(self, value: int) -> None:
        self._bytes_sent = value

    @property
    def duration(self) -> float | None:
        """Seconds from the request's start to the end of its response; None while in flight."""
        return None if self.end is None else self.end - self.start

    @property
    def retries(self) -> int:
        """Tries beyond the first."""
        return max(len(self.tries) - 1, 0)


def outbound(request: httpx.Request, route: str | None, door: str) -> Exchange:
    """``Exchange("outbound", door, request=request, route=route)``: every request through a mesh with observers
    makes one."""
    return Exchange("outbound", door, request=request, route=route)
