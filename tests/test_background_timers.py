"""The sync timer thread behind hedging: bounded whatever delays callers pass."""

from __future__ import annotations

import threading

from meshlib._background import MAX_TIMER_QUEUES, Background


def test_distinct_delays_keep_the_timer_structures_bounded() -> None:
    background = Background()
    try:
        for n in (1000, 5000):
            for i in range(n):
                background.call_later(60.0 + i / 1000, lambda: None).cancel()
            queues, held = background._timers.live()
            assert queues <= MAX_TIMER_QUEUES
            # Cancelled calls are dropped from the heap once they outnumber the live ones.
            assert held <= 200
    finally:
        background.close()


def test_calls_of_any_delay_still_run_in_order() -> None:
    background = Background()
    ran: list[float] = []
    done = threading.Event()
    try:
        for i in range(MAX_TIMER_QUEUES):
            background.call_later(60.0 + i, lambda: None)  # fills every queue slot
        for delay in (0.03, 0.01, 0.02):
            background.call_later(delay, lambda d=delay: ran.append(d))  # type: ignore[misc]
        background.call_later(0.05, done.set)
        assert done.wait(2)
        assert ran == [0.01, 0.02, 0.03]
    finally:
        background.close()


def test_a_dry_queue_is_dropped() -> None:
    background = Background()
    done = threading.Event()
    try:
        background.call_later(0.01, done.set)
        assert done.wait(2)
        background.call_later(0.01, lambda: None).cancel()
        threading.Event().wait(0.05)
        background.call_later(0.5, lambda: None).cancel()  # wakes nothing; look at what is kept
        queues, _ = background._timers.live()
        assert queues <= 1
    finally:
        background.close()
