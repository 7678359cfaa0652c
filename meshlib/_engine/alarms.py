"""Cheap timers on asyncio for the many alarms that are set per try and nearly always cancelled.

Each hedged request sets a "this try is slow" alarm and each try a timeout
alarm; almost all are cancelled before they ring. ``loop.call_later`` costs a
handle, a heap push and cancel bookkeeping per alarm. Alarms of one delay
ring in the order they were set, so here each (loop, delay) keeps a FIFO
queue with a single loop timer for its head: setting an alarm is an append
(after dropping cancelled alarms at the head), cancelling is a flag, and the
loop timer fires about once per delay rather than once per alarm.

Nothing here can grow with the number of alarms, whatever delays callers
pass: a loop has at most :data:`MAX_QUEUES` queues, a queue is dropped as
soon as it runs dry, and an alarm whose delay finds no queue gets a plain
loop timer that its ``cancel()`` cancels. A queue holds at most the alarms
set within one delay.

What is left of a request's budget differs every time by the microseconds
the request has run so far. Rounded up to a millisecond (:func:`on_grid`),
the first try of every request under one timeout shares that timeout's
queue; such an alarm rings at most a millisecond late, the resolution of
Envoy's timers.
"""

from __future__ import annotations

import asyncio
import math
import types
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Final

__all__ = [
    "MAX_QUEUES",
    "Alarm",
    "TaskAlarm",
    "asyncio_loop",
    "current_task",
    "live_queues",
    "on_grid",
    "schedule",
    "set_alarm",
]

# Queues per loop: enough for the few configured delays a mesh uses (per-try timeouts, hedge delays).
MAX_QUEUES: Final = 16


def on_grid(delay: float) -> float:
    """``delay`` rounded up to a whole millisecond: budgets a few microseconds apart then share one queue."""
    return math.ceil(delay * 1000.0 - 1e-6) / 1000.0  # the 1e-6: 0.25 s stays 0.25, not 0.251 by rounding error


class Alarm:
    """One alarm: ``ring()`` (by default ``callback()``) at ``when`` (loop time), unless cancelled first.

    Subclasses may override :meth:`ring` instead of passing a callback: one
    object per alarm instead of two. A subclass that skips ``__init__`` sets
    every slot below itself.
    """

    __slots__ = ("callback", "cancelled", "handle", "when")

    def __init__(self, callback: Callable[[], object] | None = None) -> None:
        self.when = 0.0
        self.callback = callback
        self.cancelled = False
        self.handle: asyncio.TimerHandle | None = None  # its own loop timer, when no queue took it

    def ring(self) -> None:
        if self.callback is not None:
            self.callback()

    def cancel(self) -> None:
        self.cancelled = True
        handle = self.handle
        if handle is not None:
            self.handle = None
            handle.cancel()


class TaskAlarm(Alarm):
    """Cancels ``task`` when due and remembers it: what ``asyncio.timeout`` does, without its context manager.

    About 2 µs a use against 5. ``task`` may change while the alarm waits (a
    response body's reader is watched only while it reads): ringing while no
    task is watched only sets ``rang``; ``hit`` says it cancelled one.
    """

    __slots__ = ("cancelling", "hit", "rang", "task")

    def __init__(self, task: asyncio.Task[Any] | None = None) -> None:
        self.when = 0.0  # Alarm's fields, set here: no super().__init__() call on the hot path
        self.callback = None
        self.cancelled = False
        self.handle = None
        self.task = task
        self.cancelling = task.cancelling() if task is not None else 0  # cancellations others requested already
        self.rang = False
        self.hit = False

    def watch(self, task: asyncio.Task[Any] | None) -> None:
        """Cancel ``task`` (None: no task) if the alarm rings from now on."""
        self.task = task
        if task is not None:
            self.cancelling = task.cancelling()

    def ring(self) -> None:
        self.rang = True
        task = self.task
        if task is not None:
            self.hit = True
            task.cancel()

    def caused(self, task: asyncio.Task[Any]) -> bool:
        """After a CancelledError in ``task``: whether this alarm's cancellation is what arrived (then taken back)."""
        return self.hit and task.uncancel() <= self.cancelling


def _ring_own(alarm: Alarm) -> None:
    alarm.handle = None
    if not alarm.cancelled:
        alarm.ring()


class _Queue:
    """The alarms of one delay on one loop, oldest first, and the loop timer of the oldest."""

    __slots__ = ("alarms", "delay", "loop", "owner", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: dict[float, _Queue], delay: float) -> None:
        self.loop = loop
        self.owner = owner
        self.delay = delay
        self.alarms: deque[Alarm] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, alarm: Alarm) -> None:
        alarms = self.alarms
        while alarms and alarms[0].cancelled:
            alarms.popleft()
        alarms.append(alarm)
        if self.timer is None:
            self.timer = self.loop.call_at(alarms[0].when, self._ring)

    def _ring(self) -> None:
        self.timer = None
        alarms = self.alarms
        now = self.loop.time()
        due = []
        while alarms and (alarms[0].cancelled or alarms[0].when <= now):
            alarm = alarms.popleft()
            if not alarm.cancelled:
                due.append(alarm)
        if alarms:
            self.timer = self.loop.call_at(alarms[0].when, self._ring)
        elif self.owner.get(self.delay) is self:
            del self.owner[self.delay]  # dry: the slot goes back, so rarely used delays never pile up
        for alarm in due:
            if not alarm.cancelled:  # an earlier callback may have cancelled it
                alarm.ring()


_queues: Final[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Queue]]] = weakref.WeakKeyDictionary()
# The queues of the loop used last: the lookup every alarm would otherwise pay (weakly held, like _queues).
_last: tuple[weakref.ref[asyncio.AbstractEventLoop] | None, dict[float, _Queue]] = (None, {})


def set_alarm(loop: asyncio.AbstractEventLoop, delay: float, callback: Callable[[], object]) -> Alarm:
    """Call ``callback()`` on ``loop`` after ``delay`` seconds unless the returned alarm is cancelled first."""
    return schedule(loop, delay, Alarm(callback))


def schedule(loop: asyncio.AbstractEventLoop, delay: float, alarm: Alarm, *, shared: bool = True) -> Alarm:
    """Ring ``alarm`` on ``loop`` after ``delay`` seconds unless it is cancelled first; returns it.

    Any delay is safe. The few delays in use most of the time (configured
    durations) share queues and cost an append; a caller whose delay differs
    every time (a remaining budget) passes ``shared=False`` to take a loop
    timer of its own at once, leaving the queues to the delays that repeat.
    """
    if not shared:
        when = alarm.when = loop.time() + delay
        alarm.handle = loop.call_at(when, _ring_own, alarm)
        return alarm
    global _last
    last_ref, queues = _last
    if last_ref is None or last_ref() is not loop:
        queues = _queues.setdefault(loop, {})
        _last = (weakref.ref(loop), queues)
    when = alarm.when = loop.time() + delay
    queue = queues.get(delay)
    if queue is None:
        if len(queues) >= MAX_QUEUES:
            alarm.handle = loop.call_at(when, _ring_own, alarm)
            return alarm
        queue = queues[delay] = _Queue(loop, queues, delay)
    queue.add(alarm)
    return alarm


def live_queues(loop: asyncio.AbstractEventLoop) -> tuple[int, int]:
    """How many queues ``loop`` has and how many alarms they hold (cancelled ones not yet dropped included)."""
    queues = _queues.get(loop, {})
    return len(queues), sum(len(q.alarms) for q in queues.values())


def _tasks_by_loop() -> dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None:
    """asyncio's map of each loop's running task, where ``asyncio.current_task`` is the Python function that reads
    it (3.11: a frame per call, and the request path asks once per try); None where it is C's (3.12 on, where a
    later Python may keep the running task elsewhere)."""
    if not isinstance(asyncio.current_task, types.FunctionType):
        return None
    found = getattr(asyncio.tasks, "_current_tasks", None)
    return found if isinstance(found, dict) else None


_TASKS: Final = _tasks_by_loop()


def current_task(loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    """``asyncio.current_task(loop)``: the task running on ``loop``, or None."""
    if _TASKS is not None:
        return _TASKS.get(loop)
    return asyncio.current_task(loop)


def asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None under another anyio backend (trio)."""
    try:
        return _get_running_loop()
    except RuntimeError:
        return None


_get_running_loop: Final = asyncio.get_running_loop  # bound once: compiled, a module attribute is a lookup each use
