"""Errors a caller can meet, each a subclass of the httpx exception that fits.

The hierarchy::

    Exception
    └── ConfigError                 a config failed validation; names each field path

    httpx.TransportError
    └── MeshError                    base of every error the mesh raises for a request
        ├── RouteNotFoundError       code ``route_not_found``        no route or cluster for the host
        ├── NoHealthyUpstreamError   code ``no_healthy_upstream``    every endpoint ejected or unhealthy
        ├── RateLimitedError         code ``rate_limited``           over the route's or cluster's rate
        ├── CircuitOpenError         code ``circuit_open``           the cluster's breaker is open
        ├── OverloadedError          code ``overloaded``             max_concurrent_requests reached
        ├── UpstreamConnectError     code ``upstream_connect_failure``  (also an httpx.ConnectError)
        │   └── PeerIdentityError    code ``peer_identity_mismatch``  the upstream's SPIFFE ID is not expected
        ├── UpstreamResetError       code ``upstream_reset``         (also an httpx.NetworkError)
        └── RequestTimeoutError      code ``timeout``                (also an httpx.TimeoutException)

The last three wrap what httpx raised (as ``__cause__``), so code that
catches ``httpx.ConnectError`` or ``httpx.TimeoutException`` keeps working.
When one of the mesh's timeouts is what failed the request,
``RequestTimeoutError`` and ``UpstreamConnectError`` say which in ``kind``
and ``timeout`` (see docs/resilience.md, "Timeout errors").

Because every ``MeshError`` is an ``httpx.TransportError``, existing
``except httpx.HTTPError`` code keeps working when a client is put through the
mesh. Each class carries a ``code``, the value the sidecar sends in its
``x-meshlib-error`` header, and the ``status`` it answers with (see _wire.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal, TypeAlias, TypeVar

import httpx

__all__ = [
    "CircuitOpenError",
    "ConfigError",
    "MeshError",
    "NoHealthyUpstreamError",
    "OverloadedError",
    "PeerIdentityError",
    "RateLimitedError",
    "RequestTimeoutError",
    "RouteNotFoundError",
    "TimeoutKind",
    "UpstreamConnectError",
    "UpstreamResetError",
    "try_message",
]

TimeoutKind: TypeAlias = Literal["request", "per_try", "connect", "client"]
"""Which timeout ran out: the route's or cluster's ``timeout`` (the whole request), ``retry.per_try_timeout``,
``connect_timeout``, or the httpx client's own ``timeout=``."""


_E = TypeVar("_E", bound=BaseException)


def chained(error: _E, cause: BaseException | None) -> _E:
    """``error`` with ``cause`` as its ``__cause__``: ``raise chained(error, cause)`` is ``raise error from cause``.

    The request path is compiled with mypyc, which drops the ``from`` of ``raise … from …`` (the caller would
    lose the httpx error a mesh error wraps); an assignment to ``__cause__`` it keeps, and it also sets
    ``__suppress_context__``, as ``from`` does.
    """
    error.__cause__ = cause
    return error


def try_message(
    event: str,
    *,
    attempt: int,
    route: str | None,
    cluster: str | None,
    endpoint: str | None = None,
    before: bool = False,
) -> str:
    """The one shape of a failed try's message: ``{event} during try 2 of route 'r', cluster 'c' (endpoint E)``.

    ``before``: try ``attempt`` never started, so no endpoint is named.
    """
    text = f"{event} {'before' if before else 'during'} try {attempt}"
    owners = [f"{what} {name!r}" for what, name in (("route", route), ("cluster", cluster)) if name is not None]
    if owners:
        text += " of " + ", ".join(owners)
    if endpoint is not None and not before:
        text += f" (endpoint {endpoint})"
    return text


class ConfigError(Exception):
    """A mesh config is invalid.

    ``errors`` lists ``(field_path, message)`` pairs, e.g.
    ``("routes[1].split[0].cluster", "unknown cluster 'reviews-v3'")``; the
    message shows one ``path: message`` line per error.
    """

    def __init__(self, errors: Sequence[tuple[str, str]], *, source: str | None = None) -> None:
        self.errors: list[tuple[str, str]] = list(errors)
        self.source = source
        lines = [f"{path}: {message}" if path else message for path, message in self.errors]
        head = f"invalid mesh config{f' in {source}' if source else ''}"
        super().__init__(f"{head}:\n  " + "\n  ".join(lines) if lines else head)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled as made (a validation process hands its errors to the serving one), not from the message.
        return _config_error, (type(self), self.errors, self.source)


def _config_error(cls: type[ConfigError], errors: list[tuple[str, str]], source: str | None) -> ConfigError:
    return cls(errors, source=source)


class DiscoveryError(Exception):
    """A mesh cannot start: the discovery system it is configured with (etcd) did not answer in time.

    Raised by :class:`meshlib.Mesh` when etcd stays unreachable for
    ``registry.etcd.start_timeout`` and ``registry.etcd.snapshot`` has no last
    good view to start from; the message names etcd and every member tried.
    Once started, a mesh never fails for etcd: it serves what it last knew.
    """


class MeshError(httpx.TransportError):
    """Base of the errors the mesh raises while handling a request.

    Attributes: ``code`` (the wire name of the cause), ``route`` and
    ``cluster`` (names, when known), and ``request``.
    """

    code: ClassVar[str] = "mesh_error"
    status: ClassVar[int] = 500  # what the sidecar answers in its place (Envoy's local reply for the cause)

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request | None = None,
        route: str | None = None,
        cluster: str | None = None,
    ) -> None:
        super().__init__(message, request=request)
        self.route = route
        self.cluster = cluster


class RouteNotFoundError(MeshError):
    """No route or cluster claims the request's host and ``outbound_policy`` is ``registry_only``."""

    code = "route_not_found"
    status = 404


class NoHealthyUpstreamError(MeshError):
    """The chosen cluster has no endpoint that can take the request."""

    code = "no_healthy_upstream"
    status = 503


class RateLimitedError(MeshError):
    """The route's or cluster's ``rate_limit`` is used up; nothing was sent."""

    code = "rate_limited"
    status = 429


class CircuitOpenError(MeshError):
    """The cluster's circuit breaker is open (or testing recovery with its one trial); nothing was sent."""

    code = "circuit_open"
    status = 503


class OverloadedError(MeshError):
    """The cluster already has ``max_concurrent_requests`` in flight; nothing was sent."""

    code = "overloaded"
    status = 503


class _TimeoutAwareError(MeshError):
    """The fields of an error that a timeout can cause: which timeout ran out, and how long it was."""

    kind: TimeoutKind | None = None
    timeout: float | None = None

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request | None = None,
        route: str | None = None,
        cluster: str | None = None,
        kind: TimeoutKind | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(message, request=request, route=route, cluster=cluster)
        self.kind = kind
        self.timeout = timeout


class UpstreamConnectError(_TimeoutAwareError, httpx.ConnectError):
    """No connection could be made to the endpoint (refused, unreachable, or ``connect_timeout``).

    When a timeout ran out while connecting, ``kind`` says which (usually
    ``"connect"``) and ``timeout`` its configured seconds; both are None when
    the connection failed for another reason.
    """

    code = "upstream_connect_failure"
    status = 503


class PeerIdentityError(UpstreamConnectError):
    """The upstream's certificate verified, but its SPIFFE ID is not one of the cluster's ``expected_identities``.

    The connection is closed before any byte of the request is sent (it is a
    connect failure, as Envoy counts a SAN mismatch, so ``retry_on:
    [connect-failure]`` may try another endpoint). ``peer`` is the SPIFFE ID
    the upstream presented (None if it had none) and ``expected`` the IDs the
    config accepts; the message names both::

        try:
            client.get("http://reviews/api/reviews/1")
        except meshlib.PeerIdentityError as error:
            print(error.peer, error.expected)
    """

    code = "peer_identity_mismatch"
    status = 503

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request | None = None,
        route: str | None = None,
        cluster: str | None = None,
        kind: TimeoutKind | None = None,
        timeout: float | None = None,
        peer: str | None = None,
        expected: Sequence[str] = (),
    ) -> None:
        super().__init__(message, request=request, route=route, cluster=cluster, kind=kind, timeout=timeout)
        self.peer = peer
        self.expected = tuple(expected)


class UpstreamResetError(MeshError, httpx.NetworkError):
    """The connection failed after the request was sent: reset, closed early, or a malformed response."""

    code = "upstream_reset"
    status = 502


class RequestTimeoutError(_TimeoutAwareError, httpx.TimeoutException):
    """The request's ``timeout`` (all tries) or a ``per_try_timeout`` ran out.

    ``kind`` says which timeout: ``"request"`` (the route's or cluster's
    ``timeout``), ``"per_try"`` (``retry.per_try_timeout``) or ``"client"``
    (the httpx client's own ``timeout=``), None if unknown; ``timeout`` is its
    configured value in seconds. ``per_try`` is True when only one try ran out
    of time (the request may be retried with ``retry_on: [per-try-timeout]``),
    False when the whole request's ``timeout`` did::

        try:
            client.get("http://reviews/api/reviews/1")
        except meshlib.RequestTimeoutError as error:
            print(error.kind, error.timeout)  # e.g. request 1.0
    """

    code = "timeout"
    status = 504
    per_try: bool = True

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request | None = None,
        route: str | None = None,
        cluster: str | None = None,
        kind: TimeoutKind | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(message, request=request, route=route, cluster=cluster, kind=kind, timeout=timeout)
        if kind is not None:
            self.per_try = kind != "request"
