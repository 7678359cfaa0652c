"""Hedges spend the retry budget (gRFC A6, Envoy): under load, hedging cannot double the tries.

Every test sends a burst of concurrent requests whose every try is slower than
``hedge.after``, so each request wants a hedge, and checks that the budget
decides how many are sent: at most ratio × requests + the reserve. The
budget's window runs on the mesh's FakeClock (nothing moves it here), so its
reserve is spent once; hedge timing is real time.

Such a burst is an overload, which the overload guard (SlowShare) refuses to
hedge before the budget is asked: these tests switch the guard off, so that
the budget alone decides; tests/policies/test_hedge_overload.py tests the two
together.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx
import pytest
import respx

import meshlib
import meshlib._policies.hedge as hedge_module
from meshlib._policies.retry_budget import RetryBudget
from meshlib.testing import FakeClock, assert_counters, stats_of
from tests.conftest import Caller, MakeMesh, Receive, RunningServer, Scope, Send, echo_app, start_server

pytestmark = pytest.mark.anyio

ENDPOINTS = ["http://127.0.0.1:9081", "http://127.0.0.1:9082", "http://127.0.0.1:9083"]
URL = "http://reviews/x"
STALL = 0.3  # every try's time: far slower than AFTER
AFTER = "50ms"
N = 30  # requests in a burst; unthrottled that is 60 tries, within the sync try pool's 64 threads
_DEFAULT = object()


@pytest.fixture(autouse=True)
def no_overload_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget alone: no share of slow requests refuses a hedge."""
    monkeypatch.setattr(hedge_module, "OVERLOAD_SHARE", math.inf)


@pytest.fixture(params=["sync", "async-inline", "async-task-group"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each case once per driver: sync over respx (every try on a thread), and both async drivers, asyncio's
    inline hedge and the task-group race of other anyio backends. (Overrides tests/conftest.py's ``mode``.)"""
    if request.param == "async-task-group":
        monkeypatch.setattr(hedge_module, "_inline_possible", lambda: False)
    return "sync" if request.param == "sync" else "async"


def _config(retry: Any = _DEFAULT, max_extra: int = 1) -> dict[str, Any]:
    cluster: dict[str, Any] = {"endpoints": ENDPOINTS, "hedge": {"after": AFTER, "max_extra": max_extra}}
    if retry is not _DEFAULT:
        cluster["retry"] = retry
    return {"clusters": {"reviews": cluster}}


def _budget(ratio: float, reserve: int) -> dict[str, Any]:
    """A retry that never retries (attempts: 1): only its budget, for the hedges."""
    return {"attempts": 1, "budget": {"ratio": ratio, "min_retries_per_second": reserve}}


class Slow:
    """A respx side effect answering ``status`` after STALL seconds; ``tries`` counts the tries as they start.

    (respx records a call only when it has answered, after a dropped try's caller has gone.)
    """

    def __init__(self, mode: str, status: int = 200) -> None:
        self.mode = mode
        self.status = status
        self.tries = 0
        self._lock = threading.Lock()

    def _start(self) -> None:
        with self._lock:
            self.tries += 1

    def sync(self, request: httpx.Request) -> httpx.Response:
        self._start()
        time.sleep(STALL)
        return httpx.Response(self.status)

    async def async_(self, request: httpx.Request) -> httpx.Response:
        self._start()
        await anyio.sleep(STALL)
        return httpx.Response(self.status)

    def mock(self, respx_mock: respx.MockRouter) -> Slow:
        respx_mock.route(host="127.0.0.1").mock(side_effect=self.sync if self.mode == "sync" else self.async_)
        return self


async def burst(caller: Caller, mesh: meshlib.Mesh, n: int = N) -> list[int]:
    """The statuses of ``n`` concurrent GETs (sync: one thread each, through one client)."""
    async with caller(mesh) as client:
        if client.sync_client is not None:
            sync_client = client.sync_client
            with ThreadPoolExecutor(n) as pool:
                return list(pool.map(lambda _: sync_client.get(URL).status_code, range(n), timeout=30))
        responses = await asyncio.gather(*(client.get(URL) for _ in range(n)))
        return [r.status_code for r in responses]


def _budget_of(mesh: meshlib.Mesh, route: str | None = None) -> RetryBudget:
    budget: RetryBudget = mesh._runtime.registry.get("retry_budget", ("reviews", route))
    return budget


def _check_spent(mesh: meshlib.Mesh, tries: int, ratio: float, reserve: int) -> int:
    """The bound and the accounting every throttled burst obeys; returns the hedges sent."""
    counters = stats_of(mesh, "reviews")
    hedges = counters.get("hedges", 0)
    assert tries <= math.floor(N * (1 + ratio)) + reserve, counters  # not 2N
    assert hedges == tries - N
    # Every request wanted one hedge: it was sent, or the budget refused it (and the request waited).
    assert hedges + counters.get("hedge_budget_exhausted", 0) == N
    # The budget's base is the requests, each once; its spending is the hedges.
    assert _budget_of(mesh).snapshot() == {"requests": N, "retries": hedges - reserve}
    return hedges


async def test_hedges_spend_the_retry_budget(
    make_mesh: MakeMesh, mesh_clock: FakeClock, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    upstream = Slow(mode).mock(respx_mock)
    mesh = make_mesh(_config(retry=_budget(0.2, 2)), clock=mesh_clock)
    assert await burst(caller, mesh) == [200] * N  # a refused hedge does not fail its request
    hedges = _check_spent(mesh, upstream.tries, 0.2, 2)
    assert hedges >= 2  # the budget pays for hedges: the reserve at least


async def test_without_a_retry_hedges_spend_the_default_budget(
    make_mesh: MakeMesh, mesh_clock: FakeClock, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    """Only ``hedge`` configured: the default budget (20% + 10/s) still bounds the hedges."""
    upstream = Slow(mode).mock(respx_mock)
    mesh = make_mesh(_config(), clock=mesh_clock)
    assert await burst(caller, mesh) == [200] * N
    _check_spent(mesh, upstream.tries, 0.2, 10)
    assert stats_of(mesh, "reviews")["hedge_budget_exhausted"] >= N - 16  # at most 6 + 10 were paid for


async def test_budget_null_leaves_hedges_unthrottled(
    make_mesh: MakeMesh, mesh_clock: FakeClock, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    """The contrast, and the way out: ``retry.budget: null`` hedges every slow request."""
    upstream = Slow(mode).mock(respx_mock)
    mesh = make_mesh(_config(retry={"attempts": 1, "budget": None}), clock=mesh_clock)
    assert await burst(caller, mesh) == [200] * N
    assert upstream.tries == 2 * N
    assert_counters(mesh, "reviews", hedges=N, hedge_budget_exhausted=0)


async def test_a_refused_hedge_stops_the_requests_hedging_and_it_waits_for_its_try(
    make_mesh: MakeMesh, mesh_clock: FakeClock, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    """An empty budget: no hedge at all, one refusal per request however large ``max_extra``, every answer kept."""
    upstream = Slow(mode, status=203).mock(respx_mock)
    mesh = make_mesh(_config(retry=_budget(0.0, 0), max_extra=2), clock=mesh_clock)
    started = time.monotonic()
    assert await burst(caller, mesh, 5) == [203] * 5
    assert time.monotonic() - started >= STALL  # each request waited on its own try
    assert upstream.tries == 5
    assert_counters(mesh, "reviews", hedges=0, hedge_budget_exhausted=5)


async def test_a_retried_request_counts_once_in_the_budget(
    make_mesh: MakeMesh, mesh_clock: FakeClock, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    """With a retry filter above, it counts each request in the budget; the hedge below must not count it again."""
    upstream = Slow(mode).mock(respx_mock)
    retry = {"attempts": 3, "retry_on": ["5xx"], "budget": {"ratio": 0.2, "min_retries_per_second": 2}}
    mesh = make_mesh(_config(retry=retry), clock=mesh_clock)
    assert await burst(caller, mesh) == [200] * N
    _check_spent(mesh, upstream.tries, 0.2, 2)
    assert stats_of(mesh, "reviews").get("retries", 0) == 0  # the hedges were not retries


async def test_a_route_with_its_own_retry_hedges_on_its_own_budget(
    make_mesh: MakeMesh, mesh_clock: FakeClock, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    """One budget per cluster, and one per route that sets its own ``retry``: hedges spend the one retries spend."""
    Slow(mode).mock(respx_mock)
    config = _config()
    match = {"host": "reviews", "path_prefix": "/tight"}
    config["routes"] = [{"name": "tight", "match": match, "cluster": "reviews", "retry": _budget(0.0, 0)}]
    mesh = make_mesh(config, clock=mesh_clock)
    async with caller(mesh) as client:
        assert (await client.get("http://reviews/tight")).status_code == 200
        assert_counters(mesh, "reviews", hedges=0, hedge_budget_exhausted=1)
        assert (await client.get(URL)).status_code == 200  # the implicit route: the cluster's default budget
        assert_counters(mesh, "reviews", hedges=1, hedge_budget_exhausted=1)
    assert _budget_of(mesh, "tight").snapshot() == {"requests": 1, "retries": 0}


async def test_an_answer_in_time_spends_nothing(
    make_mesh: MakeMesh, mesh_clock: FakeClock, caller: Caller, respx_mock: respx.MockRouter
) -> None:
    respx_mock.route(host="127.0.0.1").mock(return_value=httpx.Response(200))
    mesh = make_mesh(_config(retry=_budget(0.2, 0)), clock=mesh_clock)
    async with caller(mesh) as client:
        for _ in range(5):
            assert (await client.get(URL)).status_code == 200
    assert _budget_of(mesh).snapshot() == {"requests": 5, "retries": 0}
    assert stats_of(mesh, "reviews") == {}


# The sync inline hedge runs only over real sockets: a burst of threads against real, slow servers.


class Counting:
    """A slow ASGI upstream that counts the requests it got."""

    def __init__(self, name: str) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        self._inner = echo_app(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        with self._lock:
            self.calls += 1
        await anyio.sleep(STALL)
        await self._inner(scope, receive, send)


@pytest.fixture
def slow_servers() -> Iterator[tuple[list[Counting], list[RunningServer]]]:
    apps = [Counting("a"), Counting("b")]
    servers: list[RunningServer] = []
    try:
        for app in apps:
            servers.append(start_server(app, "slow"))
        yield apps, servers
    finally:
        for server in servers:
            server.stop()


def test_the_sync_inline_hedge_spends_the_budget(
    make_mesh: MakeMesh, mesh_clock: FakeClock, slow_servers: tuple[list[Counting], list[RunningServer]]
) -> None:
    apps, servers = slow_servers
    config = _config(retry=_budget(0.2, 2))
    config["clusters"]["reviews"]["endpoints"] = [s.url for s in servers]
    mesh = make_mesh(config, clock=mesh_clock)
    with mesh.client() as client, ThreadPoolExecutor(N) as pool:
        assert hedge_module.interruptible(client._transport.inner)  # type: ignore[attr-defined]
        statuses = list(pool.map(lambda _: client.get(URL).status_code, range(N), timeout=30))
    assert statuses == [200] * N
    hedges = _check_spent(mesh, sum(app.calls for app in apps), 0.2, 2)
    assert hedges >= 2


def test_the_sync_inline_hedge_stops_at_a_refusal(
    make_mesh: MakeMesh, mesh_clock: FakeClock, slow_servers: tuple[list[Counting], list[RunningServer]]
) -> None:
    """An empty budget: the timer thread sends no hedge and schedules no more, however large ``max_extra``."""
    apps, servers = slow_servers
    config = _config(retry=_budget(0.0, 0), max_extra=2)
    config["clusters"]["reviews"]["endpoints"] = [s.url for s in servers]
    mesh = make_mesh(config, clock=mesh_clock)
    with mesh.client() as client, ThreadPoolExecutor(3) as pool:
        statuses = list(pool.map(lambda _: client.get(URL).status_code, range(3), timeout=30))
    assert statuses == [200] * 3
    assert sum(app.calls for app in apps) == 3
    assert_counters(mesh, "reviews", hedges=0, hedge_budget_exhausted=3)
