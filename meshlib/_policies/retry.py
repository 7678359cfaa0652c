"""``retry``: try again what is safe to try again, with backoff, within a budget and the deadline.

Decisions are tenacity's: a ``Retrying`` object composed of stop, wait and
retry strategies (``stop_after_attempt(n) | stop_when_deadline | budget``,
``wait_retry_after(cap) or wait_random_exponential``) decides each step
through its sans-I/O ``iter()``; the filter only sends, closes and sleeps.
The first try runs before any tenacity object exists: building one costs
about 19 µs, more than the whole engine's request path, and most requests
never need a second try (benchmarks/bench_core.py). Before each backoff the
mesh's ``before_retry`` hook, if any, gets a :class:`~meshlib.RetryEvent`.
"""

from __future__ import annotations

import email.utils
import random
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
import tenacity
from tenacity import DoAttempt, DoSleep, RetryCallState

from meshlib._clock import Clock
from meshlib._config.resilience import RetryConfig
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler, context_of
from meshlib._engine.context import CallContext
from meshlib._engine.timeouts import deadline_error
from meshlib._errors import RequestTimeoutError, UpstreamConnectError, UpstreamResetError
from meshlib._hooks import Hooks, RetryEvent
from meshlib._httpx_shortcuts import BYTE_STREAM, EMPTY_BODY
from meshlib._policies.retry_budget import RetryBudget
from meshlib._upstream.cluster import ClusterState

__all__ = [
    "IDEMPOTENT_METHODS",
    "RetryFilter",
    "RetryPolicy",
    "stop_when_budget_exhausted",
    "wait_full_jitter",
    "wait_retry_after",
]

# RFC 9110 §9.2.2: methods whose repetition has the same effect as one request.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_GATEWAY_ERRORS = frozenset({502, 503, 504})


def _retry_after(response: httpx.Response, now: float) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class wait_retry_after(tenacity.wait.wait_base):  # noqa: N801 - named like tenacity's strategies
    """Wait what a 429/503 answer's ``Retry-After`` asks, up to ``cap``; otherwise wait as ``fallback``."""

    def __init__(self, fallback: tenacity.wait.wait_base, cap: float) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        if outcome is not None and not outcome.failed:
            response = outcome.result()
            if isinstance(response, httpx.Response) and response.status_code in (429, 503):
                asked = _retry_after(response, time.time())
                if asked is not None:
                    return min(asked, self.cap)
        return float(self.fallback(retry_state))


class wait_full_jitter(tenacity.wait_random_exponential):  # noqa: N801 - named like tenacity's strategies
    """tenacity's ``wait_random_exponential`` (a random time in [0, min(max, base × 2ⁿ⁻¹)]) drawing from ``rng``.

    tenacity draws from the ``random`` module; the mesh's own rng makes the
    jitter reproducible with ``Mesh(rng=random.Random(seed))``.
    """

    def __init__(self, base: float, cap: float, rng: random.Random) -> None:
        super().__init__(multiplier=base, max=cap)
        self.rng = rng

    def __call__(self, retry_state: RetryCallState) -> float:
        high = tenacity.wait_exponential.__call__(self, retry_state)
        return self.rng.uniform(self.min, high)


class stop_when_budget_exhausted(tenacity.stop.stop_base):  # noqa: N801 - named like tenacity's strategies
    """Stop when the retry budget refuses to pay for another try (each call that says go spends one)."""

    def __init__(self, withdraw: Callable[[], bool]) -> None:
        self.withdraw = withdraw

    def __call__(self, retry_state: RetryCallState) -> bool:
        return not self.withdraw()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """What is retried, how often and how long to wait; pure decisions, no I/O."""

    attempts: int
    statuses: frozenset[int]
    on_connect_failure: bool
    on_reset: bool
    on_per_try_timeout: bool
    methods: frozenset[str]
    buffer_limit: int
    template: tenacity.Retrying

    @classmethod
    def from_config(cls, config: RetryConfig, rng: random.Random | None = None) -> RetryPolicy:
        """The policy of ``config``; ``rng`` draws the backoff jitter (the mesh's, so a seed reproduces it)."""
        conditions = set(config.retry_on)
        statuses = set(config.retriable_status_codes)
        if "5xx" in conditions:
            statuses.update(range(500, 600))
        if "gateway-error" in conditions:
            statuses.update(_GATEWAY_ERRORS)
        wait = wait_retry_after(
            wait_full_jitter(config.backoff.base, config.backoff.max, rng or random.Random()),
            cap=config.backoff.max,
        )
        template = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(config.attempts),
            wait=wait,
            # When tries run out: the last response, or the last error raised again.
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        return cls(
            attempts=config.attempts,
            statuses=frozenset(statuses),
            on_connect_failure="connect-failure" in conditions,
            on_reset="reset" in conditions,
            on_per_try_timeout="per-try-timeout" in conditions,
            methods=IDEMPOTENT_METHODS | frozenset(config.methods),
            buffer_limit=config.buffer_limit_bytes,
            template=template,
        )

    def replayable(self, request: httpx.Request) -> bool:
        """A body can be sent again only if it is held in memory, within the buffer limit."""
        stream = request.stream
        if stream is EMPTY_BODY:
            return True
        if not isinstance(stream, BYTE_STREAM):
            return False  # a streaming body is never retried
        return len(b"".join(stream)) <= self.buffer_limit  # a ByteStream yields its one bytes object

    def retriable_response(self, request: httpx.Request, response: httpx.Response) -> bool:
        return response.status_code in self.statuses and request.method in self.methods

    def retriable_error(self, request: httpx.Request, error: BaseException) -> bool:
        # A connect failure never reached the upstream: safe to retry for any method.
        if isinstance(error, UpstreamConnectError):
            return self.on_connect_failure
        if request.method not in self.methods:
            return False
        if isinstance(error, UpstreamResetError):
            return self.on_reset
        if isinstance(error, RequestTimeoutError):
            return self.on_per_try_timeout and error.per_try
        return False

    def retrying(
        self, request: httpx.Request, ctx: CallContext, withdraw: Callable[[], bool] | None
    ) -> tenacity.Retrying:
        """This request's tenacity object: the template plus request-specific retry and stop conditions."""

        def should_retry(state: RetryCallState) -> bool:
            outcome = state.outcome
            if outcome is None:
                return False
            if outcome.failed:
                error = outcome.exception()
                return error is not None and self.retriable_error(request, error)
            response = outcome.result()
            return isinstance(response, httpx.Response) and self.retriable_response(request, response)

        stop = typing.cast(tenacity.stop.stop_base, self.template.stop)
        if withdraw is not None:
            # Last, so that a retry is paid for only when nothing else stops it.
            stop = tenacity.stop_any(stop, stop_when_budget_exhausted(withdraw))
        return self.template.copy(retry=should_retry, stop=stop)


def _event(state: RetryCallState, ctx: CallContext, cluster: str, sleep: float) -> RetryEvent:
    outcome = state.outcome
    assert outcome is not None, "a retry follows an outcome"
    error = outcome.exception() if outcome.failed else None
    response = None if outcome.failed else outcome.result()
    status = response.status_code if isinstance(response, httpx.Response) else None
    return RetryEvent(
        cluster=cluster,
        route=ctx.route.name,
        attempt=state.attempt_number,
        status=status,
        error=error,
        sleep=sleep,
        request=ctx.original,
    )


@dataclass(slots=True)
class _Run:
    """One request's retry run: its tenacity object and call state, built on the first retry."""

    retrying: tenacity.Retrying
    state: RetryCallState


def _record(state: RetryCallState, outcome: Response | None, error: BaseException | None) -> None:
    if error is not None:
        state.set_exception((type(error), error, error.__traceback__))
    else:
        state.set_result(outcome)


class RetryFilter:
    """Runs the first try, and retries per :class:`RetryPolicy` while the budget and deadline allow."""

    name: ClassVar[str] = "retry"

    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget | None,
        clock: Clock,
        state: ClusterState,
        hooks: Hooks | None = None,
    ) -> None:
        self.policy = policy
        self.budget = budget
        self.clock = clock
        self.state = state
        self.hooks = hooks or Hooks()

    @property
    def _withdraw(self) -> Callable[[], bool] | None:
        budget = self.budget
        if budget is None:
            return None

        def withdraw() -> bool:
            if budget.withdraw():
                return True
            self.state.count("retry_budget_exhausted")
            return False

        return withdraw

    def _first(self, request: Request) -> bool:
        """Whether this request may be retried at all; counts it in the budget if so."""
        if not self.policy.replayable(request):
            return False
        if self.budget is not None:
            self.budget.deposit()
        return True

    def _next(self, retrying: tenacity.Retrying, state: RetryCallState, ctx: CallContext) -> Any:
        """tenacity's decision after an outcome, or a RequestTimeoutError when the backoff would overrun the deadline.

        The decision is DoSleep(seconds) or the final response (a final error is
        raised). Counts ``retries`` for each retry and ``retried_requests`` once
        when a retried request ends, however it ends (response, error or deadline).
        """
        try:
            action = retrying.iter(state)
        except BaseException:
            self._ended(state)
            raise
        if not isinstance(action, DoSleep):
            self._ended(state)
            return action
        if ctx.deadline is not None and self.clock.monotonic() + float(action) >= ctx.deadline:
            self._ended(state)
            return deadline_error(ctx, ctx.attempt + 1)
        self.state.count("retries")
        if self.hooks.before_retry is not None:
            self.hooks.retrying(_event(state, ctx, self.state.name, float(action)))
        return action

    def _ended(self, state: RetryCallState) -> None:
        if state.attempt_number > 1:
            self.state.count("retried_requests")
        # tenacity keeps its next steps (bound methods of the Retrying) in that Retrying's thread-local state: a
        # reference cycle per retried request, left to the cyclic collector unless emptied once it is done.
        state.retry_object.iter_state.reset()

    def _final(self, request: Request, response: Response | None, error: BaseException | None) -> bool:
        """Whether a first outcome needs no retry (so no tenacity objects are built)."""
        if error is not None:
            return not self.policy.retriable_error(request, error)
        return response is not None and not self.policy.retriable_response(request, response)

    def _step(
        self, request: Request, ctx: CallContext, run: _Run | None, response: Response | None, error: Exception | None
    ) -> tuple[_Run | None, Response | Exception | DoSleep]:
        """The sans-I/O part of one turn of the loop: what to do with this try's outcome.

        Returns the response to return, an error to raise (after closing the
        response in hand, which is being dropped), or DoSleep(seconds) before
        the next try. tenacity objects are built only when a first outcome
        calls for a retry: the fast path costs nothing.
        """
        if run is None:
            if self._final(request, response, error):
                outcome = error if error is not None else response
                assert outcome is not None
                return None, outcome
            retrying = self.policy.retrying(request, ctx, self._withdraw)
            retrying.begin()
            run = _Run(retrying, RetryCallState(retrying, fn=None, args=(), kwargs={}))
        _record(run.state, response, error)
        action = self._next(run.retrying, run.state, ctx)
        if isinstance(action, RequestTimeoutError):
            action.__cause__ = error
            return run, action
        if isinstance(action, DoSleep):
            return run, action
        return run, self._finish(action)

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        if not self._first(request):
            return call_next(request)
        ctx = context_of(request)
        run: _Run | None = None
        while True:
            response: Response | None = None
            error: Exception | None = None
            try:
                response = call_next(request)
            except Exception as exc:
                error = exc
            run, action = self._step(request, ctx, run, response, error)
            if isinstance(action, Response):
                return action
            # Dropping the response in hand: close it, or its endpoint and breaker stay busy forever.
            if response is not None:
                response.close()
            if isinstance(action, Exception):
                raise action
            assert run is not None
            self.clock.sleep(float(action))
            run.state.prepare_for_next_attempt()
            ctx.attempt += 1

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        if not self._first(request):
            return await call_next(request)
        ctx = context_of(request)
        run: _Run | None = None
        while True:
            response: Response | None = None
            error: Exception | None = None
            try:
                response = await call_next(request)
            except Exception as exc:
                error = exc
            run, action = self._step(request, ctx, run, response, error)
            if isinstance(action, Response):
                return action
            if response is not None:
                await response.aclose()
            if isinstance(action, Exception):
                raise action
            assert run is not None
            await self.clock.asleep(float(action))
            run.state.prepare_for_next_attempt()
            ctx.attempt += 1

    def _finish(self, action: Any) -> Response:
        # tenacity returned the final outcome: a response (an error was raised by iter() already).
        if isinstance(action, DoAttempt):  # pragma: no cover - iter() only asks for an attempt before the first
            raise RuntimeError("unexpected DoAttempt from tenacity")
        assert isinstance(action, httpx.Response)
        return action
