"""The FIFO alarms behind async hedging and per-try timeouts."""

from __future__ import annotations

import asyncio

import pytest

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
