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

The rest is decided in one place too, without I/O: ``_Race`` sends each try
(asking ``_spend``), takes the outcomes, says which ends the race, and tells
the caller's context where the request went (the winner's try, or the failed
try whose failure is the outcome, and every try's endpoints, for a retry
above); ``_Inline`` adds what the two inline drivers share (a hedge that wins
while the first try runs, the end of the first try, settling on the hedges
when it failed). The drivers, sync and async twins, only do the I/O.
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
from typing import TYPE_CHECKING, ClassVar, TypeVar

import httpx

from meshlib._background import Background, TimerHandle
from meshlib._config.resilience import HedgeConfig
from meshlib._engine.alarms import Alarm, set_alarm
from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler, context_of
from meshlib._engine.context import EXTENSION, CallContext
from meshlib._engine.interrupt import CURRENT, Interrupt, TryInterrupted, interruptible
from meshlib._policies.retry import IDEMPOTENT_METHODS
from meshlib._policies.retry_budget import RetryBudget
from meshlib._upstream.cluster import ClusterState

if TYPE_CHECKING:  # anyio loads only for the general race (see HedgeFilter._race_with_tasks)
    from anyio.abc import TaskGroup
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

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
    """One request's tries and their outcomes so far: the decisions all four drivers share, without I/O.

    Per request (never kept on the filter). ``contexts`` holds each try's
    CallContext, in the order the tries were sent; a try's index is its place
    there. The racing drivers send every try as a copy (:meth:`launch`); the
    inline drivers (:class:`_Inline`) run the first try on the request itself,
    so their ``contexts[0]`` is the caller's own context. Times are real
    monotonic seconds, passed in by the driver.
    """

    __slots__ = (
        "caller",
        "contexts",
        "done",
        "in_time",
        "limit",
        "next_at",
        "outcome",
        "policy",
        "request",
        "running",
        "slow",
        "spend",
        "state",
    )

    def __init__(
        self,
        policy: HedgePolicy,
        request: Request,
        state: ClusterState,
        spend: Callable[[CallContext, bool], bool],
        in_time: Callable[[CallContext], None],
        *,
        inline: bool = False,
    ) -> None:
        self.policy = policy
        self.request = request
        self.state = state
        self.spend = spend
        self.in_time = in_time
        self.caller = context_of(request)  # the caller's context: what it learns in the end (finish)
        # Inline: the first try is under way already, on the request itself (and so on the caller's context).
        self.contexts: list[CallContext] = [self.caller] if inline else []
        self.limit = 1 + policy.max_extra
        self.running = 1 if inline else 0
        self.next_at = 0.0
        self.slow = False  # a hedge was due (then the guard has counted the request slow)
        self.outcome: _Outcome | None = None  # the latest failure until decided, then the result
        self.done = False

    def more(self) -> bool:
        """Whether another try may still be sent."""
        return len(self.contexts) < self.limit

    def wait(self, now: float) -> float | None:
        """Seconds until the next try is due, or None when no more tries may be sent."""
        return max(0.0, self.next_at - now) if self.more() else None

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

    def record(self, outcome: _Outcome | None) -> Response | None:
        """Take one try's outcome (None: the try was cancelled, with none); returns an answer no longer needed.

        The caller closes that answer. The outcome ends the race when it is a
        good answer, or when no other try is left to wait for
        (:meth:`HedgePolicy.settles`); then ``outcome`` is the result.
        """
        self.running -= 1
        if not self.slow:
            self.in_time(self.contexts[0])  # the first try answered before a hedge was due
        if outcome is None:
            self.done = self.running == 0
            return None
        response = outcome[1]
        previous = self.outcome[1] if self.outcome is not None else None
        self.outcome = outcome
        self.done = self.policy.settles(response, self.running)
        return previous

    def finish(self) -> Response:
        """The result: the winner, or the latest failure (raised if an error).

        The caller's context learns where the request went: the endpoint and
        cluster of the try whose outcome this is (a failed one's too), and every
        try's endpoints, so that a retry above moves on to one no try has used.
        """
        assert self.outcome is not None
        index, response, error = self.outcome
        ctx, last = self.caller, self.contexts[index]
        if last is not ctx or len(self.contexts) > 1:  # else an inline try alone, which has told it already
            ctx.endpoint, ctx.cluster = last.endpoint, last.cluster
            for other in self.contexts:
                if other is not ctx:
                    ctx.tried.extend(e for e in list(other.tried) if e not in ctx.tried)
        if error is not None:
            raise error
        assert response is not None
        if index > 0 and self.policy.good(response):
            self.state.count("hedge_wins")
        return response


class _Inline(_Race):
    """What the two inline drivers share: the first try runs on the request itself, hedges run beside it.

    The first try (index 0) runs in the caller's thread or task, on the
    caller's own context; each hedge is sent by a timer (:meth:`_Race.launch`)
    and runs on a worker thread or in a task. A hedge that answers well while
    the inline try runs wins at once (:meth:`claim`) and the driver interrupts
    the inline try. Otherwise the inline try's end decides
    (:meth:`inline_ended`), or, when it failed while hedges run, the hedges'
    outcomes do (:meth:`settle`, then :meth:`_Race.record` for each later one).
    The drivers only do the I/O: timers, interrupting, waiting, closing.
    """

    __slots__ = ("first_done", "winner")

    def __init__(
        self,
        policy: HedgePolicy,
        request: Request,
        state: ClusterState,
        spend: Callable[[CallContext, bool], bool],
        in_time: Callable[[CallContext], None],
    ) -> None:
        super().__init__(policy, request, state, spend, in_time, inline=True)
        self.first_done = False  # the inline try is over: no hedge starts or wins any more
        self.winner: _Outcome | None = None  # a hedge that answered well while the inline try ran

    def may_launch(self) -> bool:
        """Whether a hedge that is due may still be sent (asked before :meth:`_Race.launch`)."""
        return not self.first_done and self.winner is None

    def claim(self, index: int, response: Response) -> bool:
        """A hedge answered while the race is open: whether it wins now (then the driver interrupts the inline try).

        It does when its answer is good, no other hedge won before it and the
        inline try has not ended; anything else is left to the driver's paths
        after the inline try, which close what they do not keep.
        """
        if self.winner is None and not self.first_done and self.policy.good(response):
            self.winner = (index, response, None)
            return True
        return False

    def inline_ended(self, response: Response | None, error: Exception | None) -> bool:
        """The inline try is over (``first_done`` set): whether the outcome is decided now (``outcome``).

        It is when a hedge won meanwhile (an answer of the inline try is then
        not needed: the driver closes it), when no hedge was sent, and when
        the inline try answered well. Otherwise the inline try failed while
        hedges run, and they settle the race (:meth:`settle`).
        """
        if not self.slow:
            self.in_time(self.contexts[0])  # it answered before a hedge was due
        if self.winner is not None:
            self.outcome = self.winner
        elif len(self.contexts) == 1 or (response is not None and self.policy.good(response)):
            self.outcome = (0, response, error)
        else:
            return False
        self.done = True
        return True

    def settle(self, inline: _Outcome, over: list[_Outcome | None]) -> list[Response]:
        """The inline try failed while hedges run: take its outcome and those of the hedges ``over`` already.

        Returns the answers no longer needed (the driver closes them). A good
        answer among them came after the inline try failed (before, it would
        have won there) and wins; the other hedges that are over failed before
        it, so the inline failure is the latest so far. Unless that decides
        the race, the driver passes each later outcome to :meth:`_Race.record`.
        """
        good = [o for o in over if o is not None and o[1] is not None and self.policy.good(o[1])]
        failed = [o for o in over if not any(o is g for g in good)]
        stale: list[Response] = []
        for outcome in [*failed, inline, *good]:
            previous = self.record(outcome)
            if previous is not None:
                stale.append(previous)
            if self.done:
                break
        return stale


def _close_quietly(response: Response) -> None:
    with contextlib.suppress(Exception):  # a dropped answer's close is nobody's concern
        response.close()


def _discard(future: Future[Response]) -> None:
    """Done-callback of a losing sync try: close its response when it arrives."""
    if not future.cancelled() and future.exception() is None:
        _close_quietly(future.result())


def _outcome_of(done: Future[Response] | asyncio.Task[Response], index: int) -> _Outcome | None:
    """The outcome of a try that is over, as its worker thread's future or its task has it; None if cancelled."""
    if done.cancelled():
        return None
    error = done.exception()
    return (index, None, error) if error is not None else (index, done.result(), None)


async def _close_unused(receive: MemoryObjectReceiveStream[_Outcome]) -> None:
    """Close responses of tries that answered after the race was decided (async)."""
    import anyio

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
        import anyio

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
        # anyio loads here, for another backend than asyncio (trio): asyncio's inline hedge needs none of it.
        import anyio

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


class _InlineSyncHedge(_Inline):
    """The sync hedge for interruptible senders: the first try runs in the caller's thread, hedges on workers.

    An idle hedge costs one timer on the mesh's timer thread. If the inline try
    has not answered after ``after``, the timer sends a hedged try to a worker
    thread (in a copy of the caller's context, for tracing). A hedge that
    answers well while the inline try still runs wins and interrupts it; the
    other hedges' answers are closed when they come. The decisions are
    :class:`_Inline`'s; ``lock`` orders the caller, the timer thread and the
    hedges' done-callbacks around them.
    """

    __slots__ = ("background", "call_next", "context", "hedges", "interrupt", "lock", "timer")

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
        super().__init__(policy, request, state, spend, in_time)
        self.call_next = call_next
        self.background = background
        self.lock = threading.Lock()
        self.interrupt = Interrupt()
        self.context = contextvars.copy_context()
        self.hedges: list[Future[Response]] = []  # hedge i is the try of index i + 1
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
        self._end_inline()
        if self.inline_ended(response, error):
            if response is not None and self.winner is not None:
                _close_quietly(response)
        else:
            try:
                self._settle((0, response, error))
            except BaseException:
                self._drop()
                raise
        assert self.outcome is not None
        if self.hedges:
            self._drop(keep=self.outcome[1])
        return self.finish()

    def _end_inline(self) -> None:
        """The inline try is over: no hedge is sent or wins any more."""
        with self.lock:
            self.first_done = True
            timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()

    def _launch(self) -> None:
        """Timer thread: the inline try (and earlier hedges) are slow; send one more try."""
        with self.lock:
            self.timer = None
            if not self.may_launch():
                return
            # Under the lock, so that a hedge is paid for only when it is sent; refused, no more are.
            future = self.launch(self._start, time.monotonic())
            if future is None:
                return
            if self.more():
                self.timer = self.background.call_later(self.policy.after, self._launch)
        future.add_done_callback(self._hedge_done)

    def _start(self, index: int, copy: Request) -> Future[Response]:
        future = self.background.submit_try(self.context.copy().run, self.call_next, copy)
        self.hedges.append(future)
        return future

    def _hedge_done(self, future: Future[Response]) -> None:
        """A hedge answered: if well and first, it wins and interrupts the inline try."""
        if future.cancelled() or future.exception() is not None:
            return
        with self.lock:
            won = self.claim(self.hedges.index(future) + 1, future.result())
        if won:
            self.interrupt.interrupt()

    def _settle(self, inline: _Outcome) -> None:
        """The inline try failed while hedges run: wait for them until the race is decided (:meth:`_Inline.settle`)."""
        pending: dict[Future[Response], int] = {}
        over: list[_Outcome | None] = []
        for index, future in enumerate(self.hedges, 1):
            if future.done():
                over.append(_outcome_of(future, index))
            else:
                pending[future] = index
        for dropped in self.settle(inline, over):
            _close_quietly(dropped)
        while not self.done and pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                stale = self.record(_outcome_of(future, pending.pop(future)))
                if stale is not None:
                    _close_quietly(stale)
                if self.done:
                    break

    def _drop(self, keep: Response | None = None) -> None:
        """Hedges not kept: cancel those not started, close the others' answers when they come."""
        # No lock: the inline try is over, so no hedge is added any more.
        for future in self.hedges:
            if future.done() and not future.cancelled() and future.exception() is None and future.result() is keep:
                continue
            future.cancel()
            future.add_done_callback(_discard)


def _inline_possible() -> bool:
    """Whether the caller runs on asyncio, where the inline hedge works (it uses asyncio's task API)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # another anyio backend (trio)
        return False
    return True


class _InlineHedge(_Inline):
    """asyncio's cheap hedge: the first try runs inline in the caller's task; tasks only once it is slow.

    A task group and a stream per request cost about 100 µs even when the
    first try answers in time (nearly always). Here an idle hedge costs one
    timer: the first try is awaited in place; if it has not answered after
    ``after``, hedged tries start as tasks, and the first good answer wins. A
    hedge that wins interrupts the inline try by cancelling the caller's task
    and taking the cancellation back (``Task.uncancel``), as ``asyncio.timeout``
    does. Other anyio backends use the task-group race. The decisions are
    :class:`_Inline`'s, as in the sync twin above.
    """

    __slots__ = ("call_next", "hedges", "interrupted", "loop", "task", "timer")

    def __init__(
        self,
        policy: HedgePolicy,
        request: Request,
        state: ClusterState,
        spend: Callable[[CallContext, bool], bool],
        in_time: Callable[[CallContext], None],
        call_next: AsyncHandler,
    ) -> None:
        super().__init__(policy, request, state, spend, in_time)
        self.call_next = call_next
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.hedges: list[asyncio.Task[Response]] = []  # hedge i is the try of index i + 1
        self.interrupted = False
        self.timer: Alarm | None = None

    async def run(self) -> Response:
        self.timer = set_alarm(self.loop, self.policy.after, self._launch)
        response: Response | None = None
        error: Exception | None = None
        try:
            response = await self.call_next(self.request)
        except asyncio.CancelledError:
            if not self.interrupted or self.task is None:
                self.first_done = True
                await self._cancel_hedges()
                raise
            self.task.uncancel()
        except Exception as exc:
            error = exc
        finally:
            self.first_done = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
        if self.inline_ended(response, error):
            if response is not None and self.winner is not None:
                await _aclose_quietly(response)
        else:
            try:
                await self._settle((0, response, error))
            except BaseException:
                await self._cancel_hedges()
                raise
        assert self.outcome is not None
        if self.hedges:
            await self._cancel_hedges(keep=self.outcome[1])
        return self.finish()

    def _launch(self) -> None:
        """Timer callback: the inline try (and earlier hedges) are slow; send one more try."""
        self.timer = None
        if not self.may_launch():
            return
        # Asked last, so that a hedge is paid for only when it is sent; refused, this request sends no more.
        task = self.launch(self._start, time.monotonic())
        if task is None:
            return
        task.add_done_callback(self._hedge_done)
        if self.more():
            self.timer = set_alarm(self.loop, self.policy.after, self._launch)

    def _start(self, index: int, copy: Request) -> asyncio.Task[Response]:
        task: asyncio.Task[Response] = self.loop.create_task(_call(self.call_next, copy))
        self.hedges.append(task)
        return task

    def _hedge_done(self, task: asyncio.Task[Response]) -> None:
        """A hedge answered: if well and before the inline try, it wins and interrupts it."""
        if task.cancelled() or task.exception() is not None:
            return
        if self.claim(self.hedges.index(task) + 1, task.result()) and self.task is not None:
            self.interrupted = True
            self.task.cancel()  # interrupt the inline try: the hedge answered first

    async def _settle(self, inline: _Outcome) -> None:
        """The inline try failed while hedges run: wait for them until the race is decided (:meth:`_Inline.settle`)."""
        pending: dict[asyncio.Task[Response], int] = {}
        over: list[_Outcome | None] = []
        for index, task in enumerate(self.hedges, 1):
            if task.done():
                over.append(_outcome_of(task, index))
            else:
                pending[task] = index
        for dropped in self.settle(inline, over):
            await _aclose_quietly(dropped)
        while not self.done and pending:
            done, _ = await asyncio.wait(set(pending), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                stale = self.record(_outcome_of(task, pending.pop(task)))
                if stale is not None:
                    await _aclose_quietly(stale)
                if self.done:
                    break

    async def _cancel_hedges(self, keep: Response | None = None) -> None:
        """Cancel the hedges still running and close every hedge's answer but ``keep``."""
        for task in self.hedges:
            if not task.done():
                task.cancel()
        pending = [task for task in self.hedges if not task.done()]
        if pending:
            await asyncio.wait(pending)
        for task in self.hedges:
            # A task may answer before its cancellation lands: its response too is closed.
            if not task.cancelled() and task.exception() is None and task.result() is not keep:
                await _aclose_quietly(task.result())


async def _call(call_next: AsyncHandler, request: Request) -> Response:
    return await call_next(request)


async def _aclose_quietly(response: Response) -> None:
    with contextlib.suppress(Exception):  # a dropped answer's close is nobody's concern
        await response.aclose()
