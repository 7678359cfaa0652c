"""The FIFO alarms behind async hedging and per-try timeouts."""

from __future__ import annotations

import asyncio
import types

import pytest
from hypothesis import given, strategies as st

from meshlib._engine import alarms
from meshlib._engine.alarms import set_alarm

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the alarms are asyncio's (other backends use their own cancel scopes)


async def test_alarms_ring_in_order_and_cancelled_ones_never_ring() -> None:
    loop = asyncio.get_running_loop()
    rang: list[str] = []
    done = asyncio.Event()
    set_alarm(loop, 0.02, lambda: rang.append("a"))
    set_alarm(loop, 0.02, lambda: rang.append("cancelled")).cancel()
    set_alarm(loop, 0.02, lambda: rang.append("b"))
    set_alarm(loop, 0.01, lambda: rang.append("shorter delay, own queue"))
    set_alarm(loop, 0.03, done.set)
    await asyncio.wait_for(done.wait(), 2)
    assert rang == ["shorter delay, own queue", "a", "b"]


async def test_cancelled_alarms_do_not_pile_up() -> None:
    """Alarms cancelled in time are dropped as new ones are set: the queue holds what may still ring."""
    loop = asyncio.get_running_loop()
    for _ in range(1000):
        set_alarm(loop, 60.0, lambda: None).cancel()
    queue = alarms._queues[loop][60.0]
    assert len(queue.alarms) == 1  # only the latest, cancelled but not yet dropped
    assert queue.timer is not None  # one loop timer for the whole queue
    queue.timer.cancel()


async def test_an_alarm_set_after_the_queue_ran_dry_still_rings() -> None:
    loop = asyncio.get_running_loop()
    first, second = asyncio.Event(), asyncio.Event()
    set_alarm(loop, 0.01, first.set)
    await asyncio.wait_for(first.wait(), 2)
    set_alarm(loop, 0.01, second.set)
    await asyncio.wait_for(second.wait(), 2)


def test_each_loop_has_its_own_queues() -> None:
    rang: list[int] = []

    async def one(n: int) -> None:
        done = asyncio.Event()

        def ring() -> None:
            rang.append(n)
            done.set()

        set_alarm(asyncio.get_running_loop(), 0.01, ring)
        await asyncio.wait_for(done.wait(), 2)

    asyncio.run(one(1))
    asyncio.run(one(2))
    assert rang == [1, 2]


def _live_loop_timers(loop: asyncio.AbstractEventLoop) -> int:
    """Loop timers not cancelled (asyncio's default loop keeps them in ``_scheduled``)."""
    return sum(not handle.cancelled() for handle in loop._scheduled)  # type: ignore[attr-defined]


async def test_distinct_delays_never_pile_up_queues_or_timers() -> None:
    """Every delay different (a remaining budget): queues stay under the cap and cancelled alarms free their timers."""
    loop = asyncio.get_running_loop()
    before = _live_loop_timers(loop)
    for n in (1000, 4000):
        for i in range(n):
            set_alarm(loop, 30.0 + i / 1000, lambda: None).cancel()
        queues, _ = alarms.live_queues(loop)
        assert queues <= alarms.MAX_QUEUES
        # One loop timer per queue at most: nothing that grows with the number of alarms.
        assert _live_loop_timers(loop) - before <= alarms.MAX_QUEUES
    for queue in list(alarms._queues[loop].values()):
        assert queue.timer is not None
        queue.timer.cancel()


async def test_unshared_alarms_take_no_queue_and_cancel_their_timer() -> None:
    loop = asyncio.get_running_loop()
    before = _live_loop_timers(loop)
    queues_before = alarms.live_queues(loop)
    rang = asyncio.Event()
    for i in range(2000):
        alarms.schedule(loop, 30.0 + i / 1000, alarms.Alarm(lambda: None), shared=False).cancel()
    assert alarms.live_queues(loop) == queues_before
    assert _live_loop_timers(loop) == before
    alarms.schedule(loop, 0.01, alarms.Alarm(rang.set), shared=False)
    await asyncio.wait_for(rang.wait(), 2)


async def test_a_queue_is_dropped_once_it_runs_dry() -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    set_alarm(loop, 0.0123, lambda: None).cancel()
    set_alarm(loop, 0.0124, done.set)
    assert 0.0123 in alarms._queues[loop]
    assert 0.0124 in alarms._queues[loop]
    await asyncio.wait_for(done.wait(), 2)
    await asyncio.sleep(0.02)  # the cancelled alarm's queue timer has fired by now
    assert 0.0123 not in alarms._queues[loop]
    assert 0.0124 not in alarms._queues[loop]


async def test_when_the_queues_are_full_an_alarm_still_rings_once() -> None:
    loop = asyncio.get_running_loop()
    held = [set_alarm(loop, 60.0 + i, lambda: None) for i in range(alarms.MAX_QUEUES)]
    rang: list[int] = []
    done = asyncio.Event()
    set_alarm(loop, 0.01, lambda: rang.append(1))
    set_alarm(loop, 0.02, done.set)
    await asyncio.wait_for(done.wait(), 2)
    assert rang == [1]
    for alarm in held:
        alarm.cancel()
    for queue in list(alarms._queues[loop].values()):
        if queue.timer is not None:
            queue.timer.cancel()


@given(st.floats(min_value=0.0, max_value=3600.0, allow_nan=False))
def test_on_grid_rounds_up_to_a_whole_millisecond(delay: float) -> None:
    """A budget's timer may ring up to a millisecond late, never early: its delay is rounded up, not down."""
    rounded = alarms.on_grid(delay)
    assert rounded >= delay - 1e-9
    assert rounded - delay < 0.001 + 1e-9
    assert rounded * 1000 == pytest.approx(round(rounded * 1000), abs=1e-6)


@pytest.mark.parametrize("whole", [0.0, 0.001, 0.1, 0.25, 0.3, 0.7, 1.0, 5.0, 300.0])
def test_whole_milliseconds_stay_as_they_are(whole: float) -> None:
    assert alarms.on_grid(whole) == whole


def test_budgets_microseconds_apart_share_a_delay() -> None:
    """What is left of a 1 s timeout after a few microseconds, request after request: one queue's delay."""
    assert {alarms.on_grid(1.0 - spent) for spent in (0.0, 1e-6, 3.7e-5, 0.00042, 0.000999)} == {1.0}


def test_current_task_is_asyncios_in_a_task_and_none_in_a_callback() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert alarms.current_task(loop) is asyncio.current_task()
        seen: list[object] = []

        async def child() -> None:
            seen.append(alarms.current_task(loop))

        task = asyncio.ensure_future(child())
        await task
        assert seen == [task]
        called = loop.create_future()
        loop.call_soon(lambda: called.set_result(alarms.current_task(loop)))
        assert await called is None  # a plain callback runs in no task

    asyncio.run(main())


def test_asyncios_task_map_is_read_only_where_current_task_is_the_python_function_that_reads_it() -> None:
    python_function = isinstance(asyncio.current_task, types.FunctionType)  # 3.11; C from 3.12
    assert (alarms._tasks_by_loop() is not None) == python_function


def test_current_task_of_another_loop_is_none() -> None:
    other = asyncio.new_event_loop()
    try:

        async def main() -> None:
            assert alarms.current_task(other) is None

        asyncio.run(main())
    finally:
        other.close()
