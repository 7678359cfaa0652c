"""Cluster level: the way one route's requests take into one cluster, down to the endpoint.

Built once per (route, cluster) pair per snapshot: the *leg*, by
:func:`build_leg` below. In order, outermost first:

    timeout → rate_limit → retry → hedge → circuit_breaker → [pick endpoint] → outlier → per_try_timeout → send

(the part after the pick is the endpoint level, endpoint_stack.py).
``_snapshot/compile.py`` makes each policy from the route's and the
cluster's config and hands it in. The policies' live state (breaker, budget,
limiter, ejections) belongs to the cluster and is shared by every leg into
it; only the filters are per leg, because a route may override the cluster's
timeout, retry, rate_limit and hedge.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshlib._clock import Clock
from meshlib._engine.base import (
    AsyncHandler,
    Filter,
    Request,
    Response,
    SyncHandler,
    compose,
    compose_async,
    context_of,
)
from meshlib._engine.endpoint_stack import build_endpoint_stack, endpoint_filters
from meshlib._engine.timeouts import TryTimeouts
from meshlib._engine.urls import with_origin
from meshlib._errors import NoHealthyUpstreamError
from meshlib._observe.hooks import error_code
from meshlib._upstream.cluster import ClusterState
from meshlib._upstream.endpoint import Endpoint
from meshlib._upstream.lb import LoadBalancer

if TYPE_CHECKING:
    from meshlib._tls.cluster import ClusterTls

__all__ = ["CompiledCluster", "Leg", "build_leg"]

# Refusals a cluster makes before any endpoint sees the request (counted as `refused` besides `errors`).
_REFUSALS = frozenset(("circuit_open", "overloaded", "rate_limited", "no_healthy_upstream"))
# Set on an error once noted: the retry loop re-raises a try's error, which must not be noted twice on its way out.
_NOTED = "_meshlib_noted"


def _endpoint_of(request: Request) -> str | None:
    endpoint = context_of(request).endpoint
    return endpoint.url if endpoint is not None else None


def _try_failed(state: ClusterState, request: Request, exc: Exception) -> None:
    state.record_error(error_code(exc), str(exc), route=context_of(request).route.name, endpoint=_endpoint_of(request))
    with contextlib.suppress(AttributeError):  # an exception type with __slots__ and no __dict__
        setattr(exc, _NOTED, True)


def _try_answered(state: ClusterState, request: Request, response: Response) -> None:
    status = response.status_code
    message = f"upstream answered {status} {response.reason_phrase}".rstrip()
    route = context_of(request).route.name
    state.record_error("upstream_5xx", message, route=route, endpoint=_endpoint_of(request), status=status)


def _leg_failed(state: ClusterState, request: Request, exc: Exception) -> None:
    if getattr(exc, _NOTED, False):
        return
    ctx = context_of(request)
    code = error_code(exc)
    refused = code in _REFUSALS
    endpoint = None if refused else _endpoint_of(request)
    state.record_error(code, str(exc), route=ctx.route.name, endpoint=endpoint, refused=refused)
    if ctx.exchange is not None and ctx.exchange.cluster is None:
        ctx.exchange.cluster = state.name  # refused before any try: observers still learn the cluster


@dataclass(eq=False)
class CompiledCluster:
    """A cluster as compiled into a snapshot: its endpoints, load balancer and live state.

    ``checks_health`` is set when outlier detection or health checks can take
    endpoints out; without them the pick skips the usability scan. ``tls`` is
    the cluster's compiled ``tls`` (None: the front door's inner transport as is).
    """

    name: str
    endpoints: tuple[Endpoint, ...]
    lb: LoadBalancer
    state: ClusterState
    clock: Clock
    checks_health: bool = False
    tls: ClusterTls | None = None

    def usable(self) -> list[Endpoint]:
        now = self.clock.monotonic()
        return [e for e in self.endpoints if e.state.usable(now)]

    def pick(self, request: Request) -> None:
        """Choose the endpoint for this try, preferring one the request has not tried yet."""
        ctx = context_of(request)
        down: list[Endpoint] = []
        if self.checks_health:
            now = self.clock.monotonic()
            down = [e for e in self.endpoints if not e.state.usable(now)]
        endpoint = None
        if not down and not ctx.tried and self.endpoints:
            endpoint = self.lb.pick(request)  # the common case: a first try, every endpoint usable
        elif len(down) < len(self.endpoints):
            endpoint = self.lb.pick(request, [*down, *ctx.tried])
            if endpoint is None and ctx.tried:
                # Every usable endpoint was tried already: a repeat beats giving up.
                endpoint = self.lb.pick(request, down)
        if endpoint is None:
            self.state.count("no_healthy_upstream")
            why = (
                f"{len(down)} of {len(self.endpoints)} ejected or unhealthy"
                if self.endpoints
                else "discovery has found none"
            )
            raise NoHealthyUpstreamError(
                f"cluster {self.name!r} has no usable endpoint ({why})",
                request=ctx.original,
                route=ctx.route.name,
                cluster=self.name,
            )
        ctx.cluster = self.name
        ctx.endpoint = endpoint
        ctx.tried.append(endpoint)
        request.url = with_origin(request.url, endpoint.origin)


@dataclass(eq=False)
class Leg:
    """One route's composed way into one cluster: ``filters`` → pick → ``endpoint_filters`` → send."""

    cluster: CompiledCluster
    filters: Sequence[Filter] = ()
    endpoint_filters: Sequence[Filter] = ()
    handle: SyncHandler = field(init=False, repr=False)
    handle_async: AsyncHandler = field(init=False, repr=False)
    # What the timeout errors name (timeouts.py), read once here off the filters that set them.
    request_timeout: float | None = field(init=False, default=None)
    try_timeouts: TryTimeouts | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        # Set here, not by the fields' defaults: mypyc's dataclasses leave an init=False field unset.
        self.request_timeout = None
        self.try_timeouts = None
        for f in self.filters:
            if f.name == "timeout":
                self.request_timeout = getattr(f, "timeout", None)
        for f in self.endpoint_filters:
            if f.name == "per_try_timeout":
                self.try_timeouts = getattr(f, "timeouts", None)
        to_endpoint, to_endpoint_async = build_endpoint_stack(self.endpoint_filters, self.cluster.tls)
        pick = self.cluster.pick
        # Failures (a try's error or 5xx, a refusal) are noted on the cluster for the admin page; success costs
        # one status comparison.
        state = self.cluster.state

        def pick_and_send(request: Request) -> Response:
            pick(request)
            try:
                response = to_endpoint(request)
            except Exception as exc:
                _try_failed(state, request, exc)
                raise
            if response.status_code >= 500:
                _try_answered(state, request, response)
            return response

        async def pick_and_send_async(request: Request) -> Response:
            pick(request)
            try:
                response = await to_endpoint_async(request)
            except Exception as exc:
                _try_failed(state, request, exc)
                raise
            if response.status_code >= 500:
                _try_answered(state, request, response)
            return response

        handle = compose(self.filters, pick_and_send)
        handle_async = compose_async(self.filters, pick_and_send_async)

        def noting(request: Request) -> Response:
            try:
                return handle(request)
            except Exception as exc:
                _leg_failed(state, request, exc)
                raise

        async def noting_async(request: Request) -> Response:
            try:
                return await handle_async(request)
            except Exception as exc:
                _leg_failed(state, request, exc)
                raise

        self.handle = noting
        self.handle_async = noting_async

    @property
    def filter_names(self) -> list[str]:
        return [f.name for f in (*self.filters, *self.endpoint_filters)]


def build_leg(
    cluster: CompiledCluster,
    *,
    timeout: Filter | None = None,
    rate_limit: Filter | None = None,
    retry: Filter | None = None,
    hedge: Filter | None = None,
    circuit_breaker: Filter | None = None,
    outlier: Filter | None = None,
    per_try_timeout: Filter | None = None,
) -> Leg:
    """One route's leg into ``cluster``: the filters in the documented order; a policy not given is left out."""
    filters = [
        f
        for f in (
            # The deadline is outermost so that it spans every try and every backoff below it.
            timeout,
            # Rate limit above the retries: a request costs one hit however many tries it takes.
            rate_limit,
            # Retry above the breaker: every try is admitted (or refused) by the breaker on its own.
            retry,
            # Hedge below the retries: a hedged try is one try to the retry loop, however many copies it sent.
            hedge,
            # The breaker is the cluster's: admission before any I/O, outcome of each try after.
            circuit_breaker,
        )
        if f is not None
    ]
    # Then the endpoint pick (Leg), and below it the endpoint level.
    return Leg(cluster, filters, endpoint_filters(outlier=outlier, per_try_timeout=per_try_timeout))
