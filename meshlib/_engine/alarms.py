"""Cheap timers on asyncio for the many alarms that are set per try and nearly always cancelled.

Each hedged request sets a "this try is slow" alarm and each try a timeout
alarm; almost all are cancelled before they ring. ``loop.call_later`` costs a
handle, a heap push and cancel bookkeeping per alarm. Alarms of one delay
ring in the order they were set, so here each (loop, delay) keeps a FIFO
queue with a single loop timer for its head: setting an alarm is an append
(after dropping cancelled alarms at the head), cancelling is a flag, and the
loop timer fires about once per delay rather than once per alarm.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable

__all__ = ["Alarm", "schedule", "set_alarm"]


class Alarm:
    """One alarm: ``ring()`` (by default ``callback()``) at ``when`` (loop time), unless cancelled first.

    Subclasses may override :meth:`ring` instead of passing a callback: one
    object per alarm instead of two.
    """

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, callback: Callable[[], object] | None = None) -> None:
        self.when = 0.0
        self.callback = callback
        self.cancelled = False

    def ring(self) -> None:
        if self.callback is not None:
            self.callback()

    def cancel(self) -> None:
        self.cancelled = True


class _Queue:
    """The alarms of one delay on one loop, oldest first, and the loop timer of the oldest."""

    __slots__ = ("alarms", "loop", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
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
        for alarm in due:
            if not alarm.cancelled:  # an earlier callback may have cancelled it
                alarm.ring()


_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Queue]] = weakref.WeakKeyDictionary()
# The queues of the loop used last: the lookup every alarm would otherwise pay (weakly held, like _queues).
_last: tuple[weakref.ref[asyncio.AbstractEventLoop] | None, dict[float, _Queue]] = (None, {})


def set_alarm(loop: asyncio.AbstractEventLoop, delay: float, callback: Callable[[], object]) -> Alarm:
    """Call ``callback()`` on ``loop`` after ``delay`` seconds unless the returned alarm is cancelled first."""
    return schedule(loop, delay, Alarm(callback))


def schedule(loop: asyncio.AbstractEventLoop, delay: float, alarm: Alarm) -> Alarm:
    """Ring ``alarm`` on ``loop`` after ``delay`` seconds unless it is cancelled first; returns it.

    ``delay`` should be one of a few fixed values (a configured duration):
    each distinct delay keeps a queue for the life of the loop.
    """
    global _last
    last_ref, queues = _last
    if last_ref is None or last_ref() is not loop:
        queues = _queues.setdefault(loop, {})
        _last = (weakref.ref(loop), queues)
    queue = queues.get(delay)
    if queue is None:
        queue = queues[delay] = _Queue(loop)
    alarm.when = loop.time() + delay
    queue.add(alarm)
    return alarm
