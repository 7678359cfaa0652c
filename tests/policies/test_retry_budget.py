"""Retry budgets: RetryBudget on a fake clock, and the no-retry-storm property through the whole engine."""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
import pytest
import respx

from meshlib._config.resilience import RetryBudgetConfig
from meshlib._errors import UpstreamConnectError
from meshlib._policies.retry_budget import RetryBudget
from meshlib.testing import FakeClock, MeshFactory, assert_counters, stats_of
from tests.conftest import Caller

A = "http://127.0.0.1:9081"
URL = "http://reviews/x"


def budget(clock: FakeClock, **config: Any) -> RetryBudget:
    return RetryBudget(RetryBudgetConfig.model_validate(config), clock)


def withdrawals(b: RetryBudget, n: int) -> int:
    """How many of ``n`` withdrawals the budget allows."""
    return sum(b.withdraw() for _ in range(n))


def test_retries_may_add_ratio_of_the_requests() -> None:
    b = budget(FakeClock(), ratio=0.2, min_retries_per_second=0)
    for _ in range(10):
        b.deposit()
    assert withdrawals(b, 5) == 2
    for _ in range(5):
        b.deposit()
    assert withdrawals(b, 5) == 1  # 15 requests: 3 retries in all
    assert b.snapshot() == {"requests": 15, "retries": 3}


def test_no_requests_and_no_reserve_means_no_retries() -> None:
    assert withdrawals(budget(FakeClock(), ratio=1.0, min_retries_per_second=0), 3) == 0


def test_the_reserve_allows_min_retries_per_second_on_top() -> None:
    clock = FakeClock()
    b = budget(clock, ratio=0.0, min_retries_per_second=3)
    assert withdrawals(b, 5) == 3
    clock.advance(0.5)
    assert withdrawals(b, 5) == 0  # the same second still
    clock.advance(0.5)
    assert withdrawals(b, 5) == 3  # a second after the first reserve retries


def test_the_reserve_is_used_only_when_the_ratio_refuses() -> None:
    clock = FakeClock()
    b = budget(clock, ratio=0.5, min_retries_per_second=1)
    for _ in range(4):
        b.deposit()
    assert withdrawals(b, 4) == 3  # 2 from the ratio, then 1 from the reserve
    assert b.snapshot()["retries"] == 2  # reserve retries are not charged to the ratio


def test_requests_and_retries_leave_the_window() -> None:
    clock = FakeClock()
    b = budget(clock, ratio=0.5, min_retries_per_second=0, window="10s")
    for _ in range(4):
        b.deposit()
    assert withdrawals(b, 4) == 2
    clock.advance(5)
    for _ in range(2):
        b.deposit()
    assert withdrawals(b, 2) == 1  # 6 requests, 2 retries in the window: one more
    clock.advance(4.9)
    assert b.snapshot() == {"requests": 6, "retries": 3}
    clock.advance(0.1)  # t = 10: the deposits and retries of t = 0 have left the window
    assert b.snapshot() == {"requests": 2, "retries": 1}
    assert withdrawals(b, 1) == 0  # 1 retry already spent of 2 × 0.5
    clock.advance(5)  # t = 15: everything of t = 5 is gone too
    assert b.snapshot() == {"requests": 0, "retries": 0}
    b.deposit()
    b.deposit()
    assert withdrawals(b, 2) == 1


def test_concurrent_withdrawals_never_overspend() -> None:
    b = budget(FakeClock(), ratio=0.1, min_retries_per_second=0)
    for _ in range(1000):
        b.deposit()
    allowed: list[int] = []

    def spend() -> None:
        allowed.append(withdrawals(b, 100))

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sum(allowed) == 100


def _budget_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "meshlib.retry"]


def test_running_out_is_logged_once_and_so_is_recovering(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="meshlib")
    clock = FakeClock()
    config = RetryBudgetConfig(ratio=0.2, min_retries_per_second=0, window="10s")
    b = RetryBudget(config, clock, "cluster 'reviews'")
    for _ in range(10):
        b.deposit()
    assert withdrawals(b, 5) == 2
    [(level, message)] = _budget_records(caplog)
    assert level == "WARNING"
    assert message.startswith("retry budget of cluster 'reviews' exhausted: 2 retries for 10 requests in the last 10s")
    for _ in range(50):  # a steady outage: allowed and refused by turns, still one episode
        for _ in range(5):
            b.deposit()
        assert withdrawals(b, 3) == 1
        clock.advance(0.1)
    assert len(_budget_records(caplog)) == 1
    clock.advance(10)  # a whole window without a refusal
    for _ in range(10):
        b.deposit()
    assert withdrawals(b, 2) == 2
    assert _budget_records(caplog)[1:] == [
        ("INFO", "retry budget of cluster 'reviews': retries allowed again (103 refused meanwhile)")
    ]


def _storm_config(retry_budget: dict[str, Any] | None) -> dict[str, Any]:
    # Backoff of at most 2 ms so that the whole storm fits in one second of the fake clock: the reserve then adds
    # min_retries_per_second once, and the bound is exactly (1 + ratio) × requests + min_retries_per_second.
    retry = {"attempts": 3, "retry_on": ["5xx"], "backoff": {"base": "1ms", "max": "2ms"}, "budget": retry_budget}
    return {"clusters": {"reviews": {"endpoints": [A], "retry": retry}}}


REQUESTS = 1000


@pytest.mark.anyio
async def test_an_upstream_failing_every_request_gets_no_retry_storm(
    respx_mock: respx.MockRouter,
    mesh_factory: MeshFactory,
    mesh_clock: FakeClock,
    caller: Caller,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The issue's property: calls ≤ (1 + ratio) × requests + min_retries_per_second, and the refusals are counted."""
    upstream = respx_mock.get(f"{A}/x").mock(return_value=httpx.Response(503))
    mesh = mesh_factory(_storm_config({"ratio": 0.2, "min_retries_per_second": 10}))
    async with caller(mesh) as client:
        for _ in range(REQUESTS):
            assert (await client.get(URL)).status_code == 503
    assert mesh_clock.monotonic() < 1.0  # the premise of the bound (see _storm_config)
    calls = upstream.call_count
    assert calls <= 1.2 * REQUESTS + 10
    assert calls >= 1.19 * REQUESTS  # and the budget is spent, not refused wholesale
    counters = stats_of(mesh, "reviews")
    assert counters["retries"] == calls - REQUESTS
    # A request ends early only when the budget refuses it, once; the others took all 3 tries (2 retries each).
    assert REQUESTS - counters["retries"] // 2 <= counters["retry_budget_exhausted"] <= REQUESTS
    # Hundreds of refusals, one line: the storm is one episode.
    assert [level for level, _ in _budget_records(caplog)] == ["WARNING"]


def test_without_a_budget_the_same_outage_triples_the_calls(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory
) -> None:
    """The contrast: ``budget: null`` lets every request take all 3 tries (sync only: the arithmetic is the same)."""
    upstream = respx_mock.get(f"{A}/x").mock(return_value=httpx.Response(503))
    mesh = mesh_factory(_storm_config(None))
    with mesh.client() as client:
        for _ in range(REQUESTS):
            assert client.get(URL).status_code == 503
    assert upstream.call_count == 3 * REQUESTS
    assert_counters(mesh, "reviews", retries=2 * REQUESTS, retry_budget_exhausted=0, retried_requests=REQUESTS)


@pytest.mark.anyio
async def test_past_the_budget_a_request_fails_without_retrying(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    """An exhausted budget ends the request with its first outcome: the 5xx response, or the error raised."""
    answers = respx_mock.get(f"{A}/x").mock(return_value=httpx.Response(503))
    refused = respx_mock.get(f"{A}/refused").mock(side_effect=httpx.ConnectError("refused"))
    config = _storm_config({"ratio": 0.2, "min_retries_per_second": 0})
    config["clusters"]["reviews"]["retry"]["retry_on"] = ["5xx", "connect-failure"]
    mesh = mesh_factory(config)
    async with caller(mesh) as client:
        assert (await client.get(URL)).status_code == 503
        with pytest.raises(UpstreamConnectError):
            await client.get("http://reviews/refused")
    assert (answers.call_count, refused.call_count) == (1, 1)
    assert_counters(mesh, "reviews", retries=0, retry_budget_exhausted=2)
