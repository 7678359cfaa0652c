"""The in-memory moving window decides exactly as limits' moving window does."""

from __future__ import annotations

import limits
import limits.storage
import limits.strategies
import time_machine
from hypothesis import given, settings, strategies as st

from meshlib._policies.rate_limit import MovingWindow

START = 1_700_000_000.0


@settings(max_examples=60, deadline=None)
@given(
    amount=st.integers(min_value=1, max_value=5),
    seconds=st.sampled_from([1, 2, 10]),
    steps=st.lists(st.floats(min_value=0.0, max_value=1.5, allow_nan=False), min_size=1, max_size=40),
)
def test_same_decisions_as_limits(amount: int, seconds: int, steps: list[float]) -> None:
    item = limits.parse(f"{amount}/{seconds} second")
    reference = limits.strategies.MovingWindowRateLimiter(limits.storage.MemoryStorage())
    window = MovingWindow(item)
    now = START
    with time_machine.travel(now, tick=False) as traveller:
        for step in steps:
            now += step
            traveller.move_to(now)
            assert window.hit(now) == reference.hit(item, "key"), f"at {now - START:.3f}s"


def test_refuses_the_hit_past_the_amount_until_the_oldest_leaves_the_window() -> None:
    window = MovingWindow(limits.parse("2/second"))
    assert window.hit(10.0)
    assert window.hit(10.5)
    assert not window.hit(10.9)
    assert not window.hit(11.0)  # the hit at 10.0 is still inside [10.0, 11.0]
    assert window.hit(11.01)
    assert not window.hit(11.4)  # 10.5 and 11.01 are inside


def test_holds_only_the_hits_inside_the_window_whatever_the_amount() -> None:
    """A generous limit (a million a second) at 1,000 hits a second keeps one second of hits, not a million."""
    window = MovingWindow(limits.parse("1000000/second"))
    now = 100.0
    for _ in range(20_000):  # 20 s at 1,000 hits a second
        now += 0.001
        assert window.hit(now)
    assert len(window.hits) <= 1001
