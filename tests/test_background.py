"""The mesh's background: the timer thread behind ``call_later`` (sync hedging's alarm)."""

from __future__ import annotations

import logging
import threading

import pytest

from meshlib._background import Background
from tests.conftest import wait_for


def _timer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "meshlib-timer"]


def test_calls_run_in_order_of_their_time_on_one_thread() -> None:
    background = Background()
    ran: list[str] = []
    done = threading.Event()
    try:
        before = len(_timer_threads())

        def late() -> None:
            ran.append("late")
            done.set()

        background.call_later(0.06, late)
        background.call_later(0.02, lambda: ran.append("early"))  # due sooner: wakes the sleeping thread
        background.call_later(0.04, lambda: ran.append("middle"))
        assert done.wait(2)
        assert ran == ["early", "middle", "late"]
        assert len(_timer_threads()) == before + 1
    finally:
        background.close()


def test_a_cancelled_call_does_not_run() -> None:
    background = Background()
    ran: list[str] = []
    done = threading.Event()
    try:
        background.call_later(0.01, lambda: ran.append("cancelled")).cancel()
        background.call_later(0.03, done.set)
        assert done.wait(2)
        assert ran == []
    finally:
        background.close()


def test_a_failing_call_is_logged_and_later_ones_still_run(caplog: pytest.LogCaptureFixture) -> None:
    background = Background()
    done = threading.Event()

    def boom() -> None:
        raise ValueError("boom")

    try:
        with caplog.at_level(logging.ERROR, logger="meshlib"):
            background.call_later(0.0, boom)
            background.call_later(0.02, done.set)
            assert done.wait(2)
        assert "meshlib timer callback failed" in caplog.text
    finally:
        background.close()


def test_close_stops_the_thread_and_refuses_new_calls() -> None:
    background = Background()
    ran: list[str] = []
    background.call_later(0.5, lambda: ran.append("after close"))
    thread = background._timers._thread
    assert thread is not None
    background.close()
    wait_for(lambda: not thread.is_alive())
    with pytest.raises(RuntimeError, match="closed"):
        background.call_later(0.0, lambda: None)
    assert ran == []
