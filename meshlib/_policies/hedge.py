"""``hedge``: another try for an idempotent request that has not answered after ``after`` (leg filter, below retry).

The tail-at-scale hedged request: send the first try; every ``after`` seconds
(real time) that no good answer has come, send one more (up to ``max_extra``),
to an endpoint the earlier tries did not use when there is one. The first good
answer (a response below 500) wins and the other tries are dropped: async
tries are cancelled; sync tries run on threads, which cannot be cancelled, so
their responses are closed when they arrive. If every try fails, the last
failure is the outcome (a response, or an error raised), for the retry filter
above to judge: a hedged request is one try to it. A try that fails while no
other is running ends the race at once, so hedging never turns into retrying
without the retry budget's consent.

Hedges are for stragglers, not for overload: a hedge is sent only for a
request that is slow relative to its peers. An overload guard (:class:`SlowShare`)
keeps, per endpoint, the share of recent requests that were slow (not answered
within ``after``) and refuses a hedge while that share is at least
:data:`OVERLOAD_SHARE` at the other endpoints, where the hedge would go: then
the upstream is slow for everyone, and a hedge only adds load. A request slow
at an endpoint whose peers are fast is a straggler, and is hedged. Past the
guard, every hedged try spends the leg's retry budget, exactly as a retry does
(gRFC A6: retry throttling applies to hedged attempts too; Envoy counts hedges
against the cluster's ``retry_budget``). A refused hedge is not sent and the
request stops hedging: it keeps waiting on the tries already in flight. Both
refusals are decided in one place, ``HedgeFilter._spend``, which all four
drivers (sync and async, inline and racing) call.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import anyio
import httpx
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from meshlib._background import Background, TimerHandle
from meshlib._config.resilience import HedgeConfig
from meshlib._engine.alarms import Alarm, set_alarm
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler
from meshlib._engine.context import EXTENSION, CallContext, context_of
from meshlib._engine.interrupt import CURRENT, Interrupt, TryInterrupted, interruptible
from meshlib._policies.retry import IDEMPOTENT_METHODS
from meshlib._policies.retry_budget import RetryBudget
from meshlib._upstream.cluster import ClusterState

__all__ = ["OVERLOAD_SHARE", "SLOW_WEIGHT", "HedgeFilter", "HedgePolicy", "SlowShare"]

# The overload guard (SlowShare). A request weighs SLOW_WEIGHT in the share of slow requests of its cluster: in its
# endpoint's share, SLOW_WEIGHT × the number of endpoints (at most 1), since each endpoint gets about 1/n of them.
# So an estimate spans about the last 10-20 requests, and three slow ones in a row close the guard (0.1, 0.19, 0.271
# on one endpoint). OVERLOAD_SHARE is far above the ~5% of requests slower than an ``after`` set near the p95
# latency, and far below the ~100% of an overload. Read at each decision, so that a test or a benchmark can switch
# the guard off (``OVERLOAD_SHARE = math.inf``) to show what it saves.
SLOW_WEIGHT = 0.1
OVERLOAD_SHARE = 0.25

T = TypeVar("T")
# One try's outcome: (its index, its response, its error); exactly one of the last two is set.
_Outcome = tuple[int, Response | None, BaseException | None]


@dataclass(frozen=True, slots=True)
class HedgePolicy:
    """When to send another try, how many, and what a good answer is; pure decisions, no I/O."""

    after: float
    max_extra: int

    @classmethod
    def from_config(cls, config: HedgeConfig) -> HedgePolicy:
        return cls(config.after, config.max_extra)

    @staticmethod
    def hedgeable(request: Request) -> bool:
        """Idempotent (RFC 9110 §9.2.2) with a body held in memory: sending it twice is safe and possible."""
        return request.method in IDEMPOTENT_METHODS and isinstance(request.stream, httpx.ByteStream)

    @staticmethod
    def good(response: Response) -> bool:
        """An answer worth keeping: anything but a server error."""
        return response.status_code < 500

    def settles(self, response: Response | None, running: int) -> bool:
        """Whether an outcome ends the race: a good answer, or a failure with no other try left to wait for."""
        return (response is not None and self.good(response)) or running == 0

    @staticmethod
    def try_request(request: Request, earlier: list[CallContext]) -> Request:
        """A copy of ``request`` for one try, with its own context that avoids the endpoints of ``earlier`` tries."""
        ctx = context_of(request).fork()
        for other in earlier:
            ctx.tried.extend(e for e in list(other.tried) if e not in ctx.tried)
        return httpx.Request(
            request.method,
            request.url,
            headers=request.headers,
            stream=request.stream,
            extensions={**request.extensions, EXTENSION: ctx},
        )


class SlowShare:
    """The overload guard's estimate: per endpoint, the share of recent first tries that were slow.

    Slow: not answered within ``after``. An exponentially weighted average
    per endpoint URL, each request counted once, on its first try's endpoint:
    slow when its first hedge is due (:meth:`judge`), in time when its first
    try answers before that (``HedgeFilter._in_time``). A hedge asks about the
    *other* endpoints, where it would go: when they are slow too, the cluster
    is overloaded; when only its own endpoint is, that one is a straggler (a
    stalled replica, a pause) and the hedge is what gets around it. One per
    cluster, and one per route that sets its own ``hedge`` (its ``after``
    defines slow), kept across reloads.
    """

    __slots__ = ("_lock", "shares")

    def __init__(self) -> None:
        # Written unlocked on the fast path (HedgeFilter._in_time): a dict's get and set are atomic, and a
        # lost update between threads only nudges an estimate that the next requests correct.
        self.shares: dict[str, float] = {}
        self._lock = threading.Lock()

    def judge(self, url: str | None, urls: tuple[str, ...], weight: float, *, slow: bool) -> float:
        """The share of slow requests at the endpoints of ``urls`` but ``url``, after counting one slow at ``url``.

        ``url`` is the first try's endpoint (None: not picked yet); with no
        other endpoint, its own share from before this request is the answer.
        """
        shares = self.shares
        with self._lock:  # the slow path: exact, so that a burst of slow requests closes the guard in time
            own = shares.get(url, 0.0) if url is not None else 0.0
            if slow and url is not None:
                shares[url] = own + weight * (1.0 - own)
            others = [shares.get(other, 0.0) for other in urls if other != url]
            if len(shares) > 2 * len(urls) + 8:  # endpoints a reload removed
                for gone in [u for u in shares if u not in urls]:
                    del shares[gone]
        return sum(others) / len(others) if others else own


class _Race:
    """One request's tries and their outcomes so far; what the drivers of both modes share.

    Per request (never kept on the filter). Times are real monotonic seconds,
    passed in by the driver.
    """

    def __init__(
        self,
        policy: HedgePolicy,
        request: Request,
        state: ClusterState,
        spend: Callable[[CallContext, bool], bool],
        in_time: Callable[[CallContext], None],
    ) -> None:
        self.policy = policy
        self.request = request
        self.state = state
        self.spend = spend
        self.in_time = in_time
        self.contexts: list[CallContext] = []
        self.limit = 1 + policy.max_extra
        self.running = 0
        self.next_at = 0.0
        self.slow = False  # a hedge was due (then the guard has counted the request slow)
        self.outcome: _Outcome | None = None  # the last failure until decided, then the result
        self.done = False

    def wait(self, now: float) -> float | None:
        """Seconds until the next try is due, or None when no more tries may be sent."""
        return max(0.0, self.next_at - now) if len(self.contexts) < self.limit else None

    def launch(self, start: Callable[[int, Request], T], now: float) -> T | None:
        """Send one more try through ``start(index, copy)``; None if the guard, the budget or the mesh refused it."""
        if self.contexts:
            first = not self.slow
            self.slow = True
            if not self.spend(self.contexts[0], first):
                self.limit = len(self.contexts)  # refused: this request sends no more hedges
                return None
        copy = self.policy.try_request(self.request, self.contexts)
        try:
            handle = start(len(self.contexts), copy)
        except RuntimeError:  # the mesh was closed: no more tries
            self.limit = len(self.contexts)
            return None
        self.contexts.append(context_of(copy))
        self.running += 1
        self.next_at = now + self.policy.after
        if len(self.contexts) > 1:
            self.state.count("hedges")
        return handle

    def record(self, outcome: _Outcome) -> Response | None:
        """Take one try's outcome; returns a response that is no longer needed (the caller closes it)."""
        self.running -= 1
        if not self.slow:
            self.in_time(self.contexts[0])  # the first try answered before a hedge was due
        _, response, _ = outcome
        previous = self.outcome[1] if self.outcome is not None else None
        self.outcome = outcome
        self.done = self.policy.settles(response, self.running)
        return previous

    def finish(self) -> Response:
        """The winner (or the last failure, raised if an error); the caller's context learns where it went."""
        assert self.outcome is not None
        index, response, error = self.outcome
        ctx, won = context_of(self.request), self.contexts[index]
        ctx.endpoint, ctx.cluster = won.endpoint, won.cluster
        for other in self.contexts:
            ctx.tried.extend(e for e in list(other.tried) if e not in ctx.tried)
        if error is not None:
            raise error
        assert response is not None
        if index > 0 and self.policy.good(response):
            self.state.count("hedge_wins")
        return response


def _close_quietly(response: Response) -> None:
    with contextlib.suppress(Exception):  # a dropped answer's close is nobody's concern
        response.close()


def _discard(future: Future[Response]) -> None:
    """Done-callback of a losing sync try: close its response when it arrives."""
    if not future.cancelled() and future.exception() is None:
        _close_quietly(future.result())


def _outcome_of(future: Future[Response], index: int) -> _Outcome:
    error = future.exception()
    return (index, None, error) if error is not None else (index, future.result(), None)


async def _close_unused(receive: MemoryObjectReceiveStream[_Outcome]) -> None:
    """Close responses of tries that answered after the race was decided (async)."""
    while True:
        try:
            _, response, _ = receive.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream):
            return
        if response is not None:
            with contextlib.suppress(Exception):
                await response.aclose()


async def _run_try(call_next: AsyncHandler, copy: Request, index: int, send: MemoryObjectSendStream[_Outcome]) -> None:
    try:
        response = await call_next(copy)
    except Exception as exc:
        send.send_nowait((index, None, exc))
    else:
        send.send_nowait((index, response, None))


class HedgeFilter:
    """Hedges idempotent requests per :class:`HedgePolicy`: stragglers only, each hedge paid for by ``budget``.

    ``load`` is the overload guard's estimate, shared by the legs of the
    cluster (a new one when not given). ``budget`` is the leg's retry budget
    (None: hedges are not throttled by it). ``deposits``: this filter counts
    each hedgeable request in the budget, for legs with no retry filter above
    to do it; a retried request must count once, not once per try. Counts
    ``hedges``, ``hedge_wins``, ``hedge_overload_refused`` (hedges the guard
    refused) and ``hedge_budget_exhausted`` (hedges the budget refused).
    """

    name: ClassVar[str] = "hedge"

    def __init__(
        self,
        config: HedgeConfig,
        state: ClusterState,
        background: Background,
        budget: RetryBudget | None = None,
        *,
        deposits: bool = False,
        load: SlowShare | None = None,
        endpoints: tuple[str, ...] = (),
    ) -> None:
        self.policy = HedgePolicy.from_config(config)
        self.state = state
        self.background = background
        self.budget = budget
        self.load = load if load is not None else SlowShare()
        self.endpoints = endpoints
        # Each endpoint sees about 1/n of the requests: weighing them n times keeps the average's memory the same.
        self._weight = min(1.0, SLOW_WEIGHT * max(1, len(endpoints)))
        self._keep = 1.0 - self._weight
        self._deposit = budget.deposit if budget is not None and deposits else None

    def _in_time(self, first_try: CallContext) -> None:
        """The first try answered before a hedge was due: the fast path, one dict lookup (no lock, see SlowShare)."""
        endpoint = first_try.endpoint
        if endpoint is not None:
            shares = self.load.shares
            share = shares.get(endpoint.url)
            if share:  # nothing to decay on an endpoint that was never slow
                shares[endpoint.url] = share * self._keep

    def _spend(self, first_try: CallContext, first: bool) -> bool:
        """Whether one more hedge may be sent; every driver asks here, and refusals are counted here.

        ``first_try`` is the request's first try; ``first``: this is its first
        hedge, so the request has just turned slow. The overload guard decides
        first, so that a hedge it refuses spends no budget; then the retry
        budget (gRFC A6, Envoy's retry_budget).
        """
        # A straggler is slow while its peers are not: when a large share of recent requests at the other endpoints
        # were slow too, the upstream is overloaded, and a hedge is one more request for it, not a way around one.
        endpoint = first_try.endpoint
        url = endpoint.url if endpoint is not None else None
        if self.load.judge(url, self.endpoints, self._weight, slow=first) >= OVERLOAD_SHARE:
            self.state.count("hedge_overload_refused")
            return False
        if self.budget is None or self.budget.withdraw():
            return True
        self.state.count("hedge_budget_exhausted")
        return False

    def _race(self, race: _Race, call_next: SyncHandler, futures: dict[Future[Response], int]) -> None:
        """Sync driver: each try on a worker thread; the caller waits for the next outcome or hedge time."""

        def start(index: int, copy: Request) -> Future[Response]:
            future = self.background.submit_try(call_next, copy)
            futures[future] = index
            return future

        if race.launch(start, time.monotonic()) is None:
            return
        while not race.done:
            done, _ = wait(futures, timeout=race.wait(time.monotonic()), return_when=FIRST_COMPLETED)
            if not done:
                race.launch(start, time.monotonic())
            for future in done:
                stale = race.record(_outcome_of(future, futures.pop(future)))
                if stale is not None:
                    _close_quietly(stale)
                if race.done:
                    return

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        if not self.policy.hedgeable(request) or self.background.closed:
            return call_next(request)
        if self._deposit is not None:
            self._deposit()
        if interruptible(context_of(request).sender):
            return _InlineSyncHedge(
                self.policy, request, self.state, self._spend, self._in_time, call_next, self.background
            ).run()
        return self._race_with_threads(request, call_next)

    def _race_with_threads(self, request: Request, call_next: SyncHandler) -> Response:
        """The general sync race, for senders a hedge cannot interrupt: every try on a worker thread."""
        race = _Race(self.policy, request, self.state, self._spend, self._in_time)
        futures: dict[Future[Response], int] = {}
        try:
            self._race(race, call_next, futures)
        finally:
            # Threads cannot be cancelled: drop tries not started yet, close the others' answers when they come.
            for future in futures:
                future.cancel()
                future.add_done_callback(_discard)
        if not race.contexts:  # the mesh closed before the first try could start
            return call_next(request)
        return race.finish()

    @staticmethod
    async def _race_async(
        race: _Race,
        call_next: AsyncHandler,
        tg: TaskGroup,
        send: MemoryObjectSendStream[_Outcome],
        receive: MemoryObjectReceiveStream[_Outcome],
    ) -> None:
        """Async driver: each try is a task; the caller waits for the next outcome or hedge time."""

        def start(index: int, copy: Request) -> bool:
            tg.start_soon(_run_try, call_next, copy, index, send)
            return True

        race.launch(start, time.monotonic())
        while not race.done:
            outcome: _Outcome | None = None
            delay = race.wait(time.monotonic())
            with anyio.move_on_after(math.inf if delay is None else delay):
                outcome = await receive.receive()
            if outcome is None:
                race.launch(start, time.monotonic())
                continue
            stale = race.record(outcome)
            if stale is not None:
                with contextlib.suppress(Exception):
                    await stale.aclose()

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        if not self.policy.hedgeable(request):
            return await call_next(request)
        if self._deposit is not None:
            self._deposit()
        if _inline_possible():
            return await _InlineHedge(self.policy, request, self.state, self._spend, self._in_time, call_next).run()
        return await self._race_with_tasks(request, call_next)

    async def _race_with_tasks(self, request: Request, call_next: AsyncHandler) -> Response:
        """The general async race (any anyio backend): every try is a task in a task group."""
        race = _Race(self.policy, request, self.state, self._spend, self._in_time)
        send, receive = anyio.create_memory_object_stream[_Outcome](race.limit)
        with send, receive:
            try:
                async with anyio.create_task_group() as tg:
                    await self._race_async(race, call_next, tg, send, receive)
                    tg.cancel_scope.cancel()  # the other tries are not needed any more
            finally:
                # Tries that answered after the race was decided (all tasks are done by now).
                with anyio.CancelScope(shield=True):
                    await _close_unused(receive)
        return race.finish()


class _InlineSyncHedge:
    """The sync hedge for interruptible senders: the first try runs in the caller's thread, hedges on workers.

    An idle hedge costs one timer on the mesh's timer thread. If the inline try
    has not answered after ``after``, the timer sends a hedged try to a worker
    thread (in a copy of the caller's context, for tracing). A hedge that
    answers well while the inline try still runs wins and interrupts it; the
    other hedges' answers are closed when they come.
    """

    __slots__ = (
        "background",
        "call_next",
        "context",
        "first_done",
        "hedges",
        "in_time",
        "interrupt",
        "lock",
        "policy",
        "request",
        "spend",
        "state",
        "timer",
        "winner",
    )

    def __init__(
        self,
        policy: HedgePolicy,
        request: Request,
        state: ClusterState,
        spend: Callable[[CallContext, bool], bool],
        in_time: Callable[[CallContext], None],
        call_next: SyncHandler,
        background: Background,
    ) -> None:
        self.policy = policy
        self.request = request
        self.state = state
        self.spend = spend
        self.in_time = in_time
        self.call_next = call_next
        self.background = background
        self.lock = threading.Lock()  # orders the caller, the timer thread and the hedges' done-callbacks
        self.interrupt = Interrupt()
        self.context = contextvars.copy_context()
        self.hedges: list[tuple[Future[Response], CallContext]] = []
        self.winner: tuple[Response, CallContext] | None = None
        self.first_done = False
        self.timer: TimerHandle | None = None

    def run(self) -> Response:
        try:
            self.timer = self.background.call_later(self.policy.after, self._launch)
        except RuntimeError:  # the mesh was closed: no hedges
            return self.call_next(self.request)
        response: Response | None = None
        error: Exception | None = None
        token = CURRENT.set(self.interrupt)
        try:
            response = self.call_next(self.request)
        except TryInterrupted:
            pass  # a hedge won (the only reason for an interrupt)
        except Exception as exc:
            error = exc
        except BaseException:
            self._end_inline()
            self._drop()
            raise
        finally:
            CURRENT.reset(token)
        if self._end_inline():
            self.in_time(context_of(self.request))
        if self.winner is not None:
            if response is not None:
                _close_quietly(response)
            return self._won()
        if (response is not None and self.policy.good(response)) or not self.hedges:
            self._drop()
            if error is not None:
                raise error
            assert response is not None
            return response
        return self._settle(response, error)

    def _end_inline(self) -> bool:
        """The inline try is over: no more hedges. Returns whether it ended before a hedge was due."""
        with self.lock:
            self.first_done = True
            timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
        # A timer still set is the first hedge's (once one was sent, hedges is not empty).
        return timer is not None and not self.hedges

    def _launch(self) -> None:
        """Timer thread: the inline try (and earlier hedges) are slow; send one more try."""
        with self.lock:
            self.timer = None
            # Asked under the lock, so that a hedge is paid for only when it is sent; refused, no more are.
            if self.first_done or self.winner is not None or not self.spend(context_of(self.request), not self.hedges):
                return
            earlier = [context_of(self.request), *(ctx for _, ctx in self.hedges)]
            copy = self.policy.try_request(self.request, earlier)
            try:
                future = self.background.submit_try(self.context.copy().run, self.call_next, copy)
            except RuntimeError:  # the mesh was closed: no more tries
                return
            self.hedges.append((future, context_of(copy)))
            if len(self.hedges) < self.policy.max_extra:
                self.timer = self.background.call_later(self.policy.after, self._launch)
        self.state.count("hedges")
        future.add_done_callback(self._hedge_done)

    def _hedge_done(self, future: Future[Response]) -> None:
        """A hedge answered: if well and first, it wins and interrupts the inline try."""
        if future.cancelled() or future.exception() is not None or not self.policy.good(future.result()):
            return
        with self.lock:
            if self.winner is not None or self.first_done:
                return  # the caller decides (and closes what it does not keep)
            self.winner = (future.result(), next(ctx for f, ctx in self.hedges if f is future))
        self.interrupt.interrupt()

    def _settle(self, response: Response | None, error: Exception | None) -> Response:
        """The inline try failed while hedges run: the first good hedge wins, else the last failure."""
        contexts = dict(self.hedges)
        last: tuple[Response | None, BaseException | None] = (response, error)
        # Hedges done already: a good one answered after the inline try failed and wins; failed ones
        # failed earlier, so the inline failure is the latest so far.
        for future in contexts:
            if future.done() and not future.cancelled() and future.exception() is None:
                if self.policy.good(future.result()):
                    if response is not None:
                        _close_quietly(response)
                    self.winner = (future.result(), contexts[future])
                    return self._won()
                _close_quietly(future.result())
        pending = {future for future in contexts if not future.done()}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                if future.cancelled():
                    continue
                outcome = _outcome_of(future, 0)
                if last[0] is not None:
                    _close_quietly(last[0])
                if outcome[1] is not None and self.policy.good(outcome[1]):
                    self.winner = (outcome[1], contexts[future])
                    return self._won()
                last = (outcome[1], outcome[2])
        final, failure = last
        if failure is not None:
            raise failure
        assert final is not None
        return final

    def _won(self) -> Response:
        assert self.winner is not None
        response, won = self.winner
        self._drop(keep=response)
        ctx = context_of(self.request)
        ctx.endpoint, ctx.cluster = won.endpoint, won.cluster
        ctx.tried.extend(e for e in list(won.tried) if e not in ctx.tried)
        self.state.count("hedge_wins")
        return response

    def _drop(self, keep: Response | None = None) -> None:
        """Hedges not kept: cancel those not started, close the others' answers when they come."""
        with self.lock:
            hedges = list(self.hedges)
        for future, _ in hedges:
            if future.done() and not future.cancelled() and future.exception() is None and future.result() is keep:
                continue
            future.cancel()
            future.add_done_callback(_discard)


def _inline_possible() -> bool:
    """Whether the caller runs on asyncio, where the inline hedge works (it uses asyncio's task API)."""
    return asyncio._get_running_loop() is not None


class _InlineHedge:
    """asyncio's cheap hedge: the first try runs inline in the caller's task; tasks only once it is slow.

    A task group and a stream per request cost about 100 µs even when the
    first try answers in time (nearly always). Here an idle hedge costs one
    timer: the first try is awaited in place; if it has not answered after
    ``after``, hedged tries start as tasks, and the first good answer wins. A
    hedge that wins interrupts the inline try by cancelling the caller's task
    and taking the cancellation back (``Task.uncancel``), as ``asyncio.timeout``
    does. Other anyio backends use the task-group race.
    """

    __slots__ = (
        "call_next",
        "first_done",
        "hedges",
        "in_time",
        "interrupted",
        "loop",
        "policy",
        "request",
        "spend",
        "state",
        "task",
        "timer",
        "winner",
    )

    def __init__(
        self,
        policy: HedgePolicy,
        request: Request,
        state: ClusterState,
        spend: Callable[[CallContext, bool], bool],
        in_time: Callable[[CallContext], None],
        call_next: AsyncHandler,
    ) -> None:
        self.policy = policy
        self.request = request
        self.state = state
        self.spend = spend
        self.in_time = in_time
        self.call_next = call_next
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.hedges: list[tuple[asyncio.Task[Response], CallContext]] = []
        self.winner: tuple[Response, CallContext] | None = None
        self.first_done = False
        self.interrupted = False
        self.timer: Alarm | None = None

    def _launch(self) -> None:
        """Timer callback: the inline try (and earlier hedges) are slow; send one more try."""
        self.timer = None
        # Asked last, so that a hedge is paid for only when it is sent; refused, this request sends no more.
        if self.first_done or self.winner is not None or not self.spend(context_of(self.request), not self.hedges):
            return
        earlier = [context_of(self.request), *(ctx for _, ctx in self.hedges)]
        copy = self.policy.try_request(self.request, earlier)
        task: asyncio.Task[Response] = self.loop.create_task(_call(self.call_next, copy))
        self.hedges.append((task, context_of(copy)))
        task.add_done_callback(self._hedge_done)
        self.state.count("hedges")
        if len(self.hedges) < self.policy.max_extra:
            self.timer = set_alarm(self.loop, self.policy.after, self._launch)

    def _hedge_done(self, task: asyncio.Task[Response]) -> None:
        """A hedge answered: if well and before the inline try, it wins and interrupts it.

        Anything else is left to the caller's paths, which close what they do not keep.
        """
        if task.cancelled() or task.exception() is not None:
            return
        response = task.result()
        if self.winner is None and not self.first_done and self.policy.good(response):
            self.winner = (response, next(ctx for t, ctx in self.hedges if t is task))
            if self.task is not None:
                self.interrupted = True
                self.task.cancel()  # interrupt the inline try: the hedge answered first

    async def run(self) -> Response:
        self.timer = set_alarm(self.loop, self.policy.after, self._launch)
        response: Response | None = None
        error: Exception | None = None
        try:
            response = await self.call_next(self.request)
        except asyncio.CancelledError:
            if not self.interrupted or self.task is None:
                await self._cancel_hedges()
                raise
            self.task.uncancel()
        except Exception as exc:
            error = exc
        finally:
            self.first_done = True
            timer = self.timer
            if timer is not None:
                timer.cancel()
        # Answered before its first hedge was due (a timer still set after a hedge is the next hedge's).
        if timer is not None and not self.hedges:
            self.in_time(context_of(self.request))
        if self.winner is not None:
            return await self._won()
        if (response is not None and self.policy.good(response)) or not self.hedges:
            if self.hedges:
                await self._cancel_hedges()
            if error is not None:
                raise error
            assert response is not None
            return response
        return await self._settle(response, error)

    async def _won(self) -> Response:
        assert self.winner is not None
        response, won = self.winner
        await self._cancel_hedges(keep=response)
        ctx = context_of(self.request)
        ctx.endpoint, ctx.cluster = won.endpoint, won.cluster
        ctx.tried.extend(e for e in won.tried if e not in ctx.tried)
        self.state.count("hedge_wins")
        return response

    async def _settle(self, response: Response | None, error: Exception | None) -> Response:
        """The inline try failed while hedges run: the first good hedge wins, else the last failure."""
        # Hedges done already: a good one answered after the inline try failed (before, it would have won
        # there) and wins now; failed ones failed earlier, so the inline failure is the latest so far.
        for task, ctx in self.hedges:
            if task.done() and not task.cancelled() and task.exception() is None:
                if self.policy.good(task.result()):
                    if response is not None:
                        await _aclose_quietly(response)
                    self.winner = (task.result(), ctx)
                    return await self._won()
                await _aclose_quietly(task.result())
        pending = {task for task, _ in self.hedges if not task.done()}
        last: tuple[Response | None, BaseException | None, CallContext | None] = (response, error, None)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.cancelled():
                    continue
                ctx = next(c for t, c in self.hedges if t is task)
                failure = task.exception()
                if failure is not None:
                    if last[0] is not None:
                        await _aclose_quietly(last[0])
                    last = (None, failure, ctx)
                    continue
                answer = task.result()
                if self.policy.good(answer):
                    if last[0] is not None:
                        await _aclose_quietly(last[0])
                    self.winner = (answer, ctx)
                    return await self._won()
                if last[0] is not None:
                    await _aclose_quietly(last[0])
                last = (answer, None, ctx)
        final, failure, _ = last
        if failure is not None:
            raise failure
        assert final is not None
        return final

    async def _cancel_hedges(self, keep: Response | None = None) -> None:
        """Cancel the hedges still running and close every hedge's answer but ``keep``."""
        for task, _ in self.hedges:
            if not task.done():
                task.cancel()
        pending = [task for task, _ in self.hedges if not task.done()]
        if pending:
            await asyncio.wait(pending)
        for task, _ in self.hedges:
            # A task may answer before its cancellation lands: its response too is closed.
            if not task.cancelled() and task.exception() is None and task.result() is not keep:
                await _aclose_quietly(task.result())


async def _call(call_next: AsyncHandler, request: Request) -> Response:
    return await call_next(request)


async def _aclose_quietly(response: Response) -> None:
    with contextlib.suppress(Exception):  # a dropped answer's close is nobody's concern
        await response.aclose()
