"""Clock: the one source of time for meshlib-owned timing (backoff, budgets, deadlines, ejection, breakers).

Tests swap in ``meshlib.testing.FakeClock`` to move time forward without sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """Monotonic time in seconds, and sleeping by it in both modes."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    async def asleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.sleep`` and ``anyio.sleep``."""

    # time.monotonic itself, not a method calling it: the engine reads the clock a few times a request, and
    # a Python method is a frame each time (the engine is compiled; this public class is not).
    monotonic = staticmethod(time.monotonic)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        import anyio  # here: only a backoff sleeps, and an idle sidecar need not load anyio (0.7 MB)

        await anyio.sleep(max(seconds, 0))
