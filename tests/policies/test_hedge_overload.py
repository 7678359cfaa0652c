"""The overload guard: hedge stragglers, not overload (tail at scale).

A hedge is sent only for a request that is slow while the endpoints the
hedge could go to are not: ``SlowShare`` keeps, per endpoint, the share of
recent first tries that were slower than ``after``, and the hedge filter
refuses a hedge while that share at the other endpoints is at least
``OVERLOAD_SHARE``, before it asks the retry budget. Most tests use one
endpoint, where the share is the cluster's own and the numbers are exact:
each request weighs 0.1, so three slow requests in a row (0.1, 0.19, 0.271)
close the guard, and 13 in time reopen it from 0.96.

The drivers: async inline (asyncio) and task group (other anyio backends)
and sync over a sender the mesh cannot interrupt (respx: every try on a
thread) through the ``mode`` fixture below; the sync inline hedge (the
mesh's own transport) against real servers at the end. Hedge timing is real
time; meshlib's clock (budgets) is the FakeClock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx
import pytest
import respx

import meshlib
import meshlib._policies.hedge as hedge_module
from meshlib._policies.hedge import OVERLOAD_SHARE, SlowShare
from meshlib._policies.retry_budget import RetryBudget
from meshlib.testing import FakeClock, assert_counters, stats_of
from tests.conftest import Caller, MakeMesh, Receive, RunningServer, Scope, Send, echo_app, start_server

pytestmark = pytest.mark.anyio

ENDPOINTS = ["http://127.0.0.1:9081", "http://127.0.0.1:9082", "http://127.0.0.1:9083"]
URL = "http://reviews/x"
# Long enough that a burst's fast requests answer in time even on a loaded machine: the guard is right to refuse
# hedges when they do not (everyone is slow then).
AFTER = "200ms"
STALL = 0.5  # every try of an overloaded upstream
STRAGGLE = 1.0  # a straggler's stalled first try
# The bursts on the real clock below: hedged after BURST_AFTER, their stragglers stalled BURST_STRAGGLE. A loaded
# CI machine once held a whole sync burst back about 0.35 s (its fastest answer took 0.32 s), so that fast requests
# passed a 400 ms `after`, were hedged, counted as slow, and closed the guard: these leave 0.8 s of such delay room.
BURST_AFTER = "800ms"
BURST_STRAGGLE = 2.0
BURST_HEDGED = 1.6  # a hedged answer comes by then, long before a stalled try's
HEDGED = 0.6  # a hedged straggler is answered by then (AFTER, and its hedge's answer at once)
N = 30  # requests in a burst


@pytest.fixture(params=["sync", "async-inline", "async-task-group"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Three drivers: sync over respx (threads), asyncio's inline hedge, and the task-group race."""
    if request.param == "async-task-group":
        monkeypatch.setattr(hedge_module, "_inline_possible", lambda: False)
    return "sync" if request.param == "sync" else "async"


def _config(endpoints: int = 1, retry: Any = None, **cluster: Any) -> dict[str, Any]:
    """Hedging after AFTER; no retry budget unless ``retry`` is given, so that the guard alone decides."""
    settings = {"endpoints": ENDPOINTS[:endpoints], "hedge": {"after": AFTER}, **cluster}
    settings["retry"] = retry if retry is not None else {"attempts": 1, "budget": None}
    return {"clusters": {"reviews": settings}}


class Stalls:
    """A respx side effect: each try waits ``stall(path, port, n)`` seconds (n: earlier tries of its path), then 200.

    ``tries`` counts the tries as they start (respx records a call only once it has answered).
    """

    def __init__(self, mode: str, stall: Callable[[str, int, int], float]) -> None:
        self.mode = mode
        self.stall = stall
        self.tries = 0
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def _begin(self, request: httpx.Request) -> float:
        path, port = request.url.path, request.url.port
        assert port is not None
        with self._lock:
            self.tries += 1
            n = self._seen[path] = self._seen.get(path, -1) + 1
        return self.stall(path, port, n)

    def sync(self, request: httpx.Request) -> httpx.Response:
        time.sleep(self._begin(request))
        return httpx.Response(200, json={"port": request.url.port})

    async def async_(self, request: httpx.Request) -> httpx.Response:
        await anyio.sleep(self._begin(request))
        return httpx.Response(200, json={"port": request.url.port})

    def mock(self, respx_mock: respx.MockRouter) -> Stalls:
        respx_mock.route(host="127.0.0.1").mock(side_effect=self.sync if self.mode == "sync" else self.async_)
        return self


def every_try_slow(path: str, port: int, n: int) -> float:
    return STALL


def first_try_of(slow_path: str, seconds: float = STRAGGLE) -> Callable[[str, int, int], float]:
    """``slow_path``'s first try stalls (a straggler); every other try answers at once."""
    return lambda path, port, n: seconds if path == slow_path and n == 0 else 0.0


async def burst(caller: Caller, mesh: meshlib.Mesh, paths: list[str]) -> list[tuple[int, float]]:
    """GET every path at once (sync: a thread each, through one client): each one's status and seconds taken."""

    def timed_sync(client: httpx.Client, path: str) -> tuple[int, float]:
        started = time.monotonic()
        status = client.get(f"http://reviews{path}").status_code
        return status, time.monotonic() - started

    async def timed_async(client: httpx.AsyncClient, path: str) -> tuple[int, float]:
        started = time.monotonic()
        status = (await client.get(f"http://reviews{path}")).status_code
        return status, time.monotonic() - started

    async with caller(mesh) as client:
        if client.sync_client is not None:
            sync_client = client.sync_client
            with ThreadPoolExecutor(len(paths)) as pool:
                return list(pool.map(lambda path: timed_sync(sync_client, path), paths, timeout=30))
        assert client.async_client is not None
        async_client = client.async_client
        return list(await asyncio.gather(*(timed_async(async_client, path) for path in paths)))


async def sequential(caller: Caller, mesh: meshlib.Mesh, paths: list[str]) -> list[tuple[int, float]]:
    results = []
    async with caller(mesh) as client:
        for path in paths:
            started = time.monotonic()
            status = (await client.get(f"http://reviews{path}")).status_code
            results.append((status, time.monotonic() - started))
    return results


def _load(mesh: meshlib.Mesh, route: str | None = None) -> SlowShare:
    load: SlowShare = mesh._runtime.registry.get("hedge_load", ("reviews", route))
    return load


def _budget(mesh: meshlib.Mesh) -> RetryBudget:
    budget: RetryBudget = mesh._runtime.registry.get("retry_budget", ("reviews", None))
    return budget


# --- overload: every request slow ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("endpoints", "most"), [(1, 3), (3, 6)])
async def test_a_burst_of_slow_requests_is_hardly_hedged(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, mode: str, endpoints: int, most: int
) -> None:
    """Every request is slow: the guard lets the first few hedge, refuses the rest, and every request is answered.

    One endpoint: exactly three (0, 0.1, 0.19 are below 0.25). Three: each
    endpoint's share weighs 0.3 a request, and the guard asks about the other
    two: the first two pass (0 and 0.15), then they are at 0.3; a few more
    when the tries start out of round-robin order (sync threads).
    """
    upstream = Stalls(mode, every_try_slow).mock(respx_mock)
    mesh = make_mesh(_config(endpoints))
    results = await burst(caller, mesh, ["/x"] * N)
    assert [status for status, _ in results] == [200] * N
    counters = stats_of(mesh, "reviews")
    hedges = counters.get("hedges", 0)
    assert 1 <= hedges <= most, counters  # without the guard: N
    if endpoints == 1:
        assert hedges == 3
    # Each request wanted one hedge: sent, or refused by the guard (and it waited for its own try).
    assert hedges + counters.get("hedge_overload_refused", 0) == N
    assert upstream.tries == N + hedges


async def test_a_hedge_the_guard_refuses_spends_no_budget(
    make_mesh: MakeMesh, mesh_clock: FakeClock, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    """The guard decides before the budget: the budget pays for the three hedges sent, nothing else.

    Asked first, the default budget (20% of 30, plus 10) would have paid for
    16 hedges and been drained of its 6 retries.
    """
    Stalls(mode, every_try_slow).mock(respx_mock)
    config = _config()
    del config["clusters"]["reviews"]["retry"]  # hedging alone: the default budget bounds it too
    mesh = make_mesh(config, clock=mesh_clock)
    assert [status for status, _ in await burst(caller, mesh, ["/x"] * N)] == [200] * N
    assert_counters(mesh, "reviews", hedges=3, hedge_overload_refused=N - 3, hedge_budget_exhausted=0)
    assert _budget(mesh).snapshot() == {"requests": N, "retries": 3}


# --- stragglers: slow while the others are not -----------------------------------------------------------------------


async def test_a_straggler_among_fast_requests_is_hedged(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    """One request in 20 stalls its first try for a second; its hedge answers at once."""
    Stalls(mode, first_try_of("/slow", BURST_STRAGGLE)).mock(respx_mock)
    config = _config(2)
    # Only the straggler may be hedged: a fast request answered after ``after`` is hedged too, rightly. On a loaded
    # CI machine four of this burst's once were, after 200 ms (sync: 20 threads start at once): see BURST_AFTER.
    config["clusters"]["reviews"]["hedge"]["after"] = BURST_AFTER
    mesh = make_mesh(config)
    paths = ["/x"] * 19 + ["/slow"]
    results = await burst(caller, mesh, paths)
    assert [status for status, _ in results] == [200] * 20
    counters = stats_of(mesh, "reviews")
    # The counters first, and the times with them: extra hedges then say which requests were late.
    seen = (counters, sorted(round(seconds, 3) for _, seconds in results))
    assert counters.get("hedge_overload_refused", 0) == 0, seen
    assert counters.get("hedges", 0) == counters.get("hedge_wins", 0) == 1, seen
    assert results[-1][1] < BURST_HEDGED < BURST_STRAGGLE, seen  # not the stalled try: the hedge won


async def test_a_stalled_endpoint_is_hedged_around(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    """Half the requests are slow, all at one endpoint: the guard asks about the other, which answers in time.

    A share kept for the whole cluster would be 50% slow, and refuse; here
    the stalled endpoint's requests are stragglers, and each is hedged.
    """
    stalled = httpx.URL(ENDPOINTS[0]).port
    Stalls(mode, lambda path, port, n: BURST_STRAGGLE if port == stalled else 0.0).mock(respx_mock)
    config = _config(2)
    # One fast request not answered by ``after`` counts as slow at the other endpoint and rightly closes the guard
    # for the rest: see BURST_AFTER.
    config["clusters"]["reviews"]["hedge"]["after"] = BURST_AFTER
    mesh = make_mesh(config)
    results = await burst(caller, mesh, ["/x"] * 12)
    assert [status for status, _ in results] == [200] * 12
    counters = stats_of(mesh, "reviews")
    # The counters first, and the times with them: a late answer then says whether a hedge was refused or slow.
    seen = (counters, sorted(round(seconds, 3) for _, seconds in results))
    assert counters.get("hedge_overload_refused", 0) == 0, seen
    assert counters["hedges"] == counters["hedge_wins"] >= 5, seen  # about half of the first tries stalled
    assert max(seconds for _, seconds in results) < BURST_HEDGED < BURST_STRAGGLE, seen
    assert _load(mesh).shares[ENDPOINTS[0]] > OVERLOAD_SHARE  # the stalled endpoint's own share is high


async def test_hedging_resumes_once_requests_answer_in_time(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    """After an overload the share decays by 0.9 per request in time: 5 are not enough to reopen the guard, 20 are."""

    def stall(path: str, port: int, n: int) -> float:
        if path == "/burst":
            return STALL
        return STRAGGLE if path.startswith("/straggler") and n == 0 else 0.0

    Stalls(mode, stall).mock(respx_mock)
    mesh = make_mesh(_config())
    await burst(caller, mesh, ["/burst"] * 10)  # 1 - 0.9**10 = 0.65 slow
    assert_counters(mesh, "reviews", hedges=3, hedge_overload_refused=7)
    await sequential(caller, mesh, ["/x"] * 5)  # 0.65 × 0.9**5 = 0.38: still overloaded
    [(status, seconds)] = await sequential(caller, mesh, ["/straggler-1"])
    assert (status, seconds >= STRAGGLE) == (200, True)  # refused: it waited for its own try
    assert_counters(mesh, "reviews", hedges=3, hedge_overload_refused=8)
    await sequential(caller, mesh, ["/x"] * 20)
    # Counted from here: on a loaded machine one of those 20 may take over AFTER itself, and be hedged.
    before = stats_of(mesh, "reviews")
    [(status, seconds)] = await sequential(caller, mesh, ["/straggler-2"])
    assert (status, seconds < HEDGED) == (200, True)  # hedged: the hedge answered at once
    after = stats_of(mesh, "reviews")
    assert after.get("hedges", 0) - before.get("hedges", 0) == 1, after
    assert after.get("hedge_wins", 0) - before.get("hedge_wins", 0) == 1, after
    assert after.get("hedge_overload_refused", 0) == 8, after


async def test_requests_in_time_write_nothing(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    """The fast path: an endpoint that was never slow has nothing to decay, and nothing is written."""
    Stalls(mode, lambda path, port, n: 0.0).mock(respx_mock)
    mesh = make_mesh(_config(2))
    await sequential(caller, mesh, ["/x"] * 5)
    assert _load(mesh).shares == {}
    assert stats_of(mesh, "reviews") == {}


# --- one estimate per cluster, and per route that sets its own hedge; kept across reloads -------------------------


async def test_a_route_with_its_own_hedge_has_its_own_guard(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    """A slow burst closes the cluster's guard; a route with its own ``hedge`` (its own ``after``) still hedges."""

    def stall(path: str, port: int, n: int) -> float:
        return STALL if path == "/x" else (STRAGGLE if n == 0 else 0.0)

    Stalls(mode, stall).mock(respx_mock)
    config = _config()
    config["routes"] = [
        {"name": "own", "match": {"path_prefix": "/own"}, "cluster": "reviews", "hedge": {"after": "150ms"}},
        {"name": "shared", "match": {"path_prefix": "/shared"}, "cluster": "reviews"},
    ]
    mesh = make_mesh(config)
    await burst(caller, mesh, ["/x"] * 10)
    assert_counters(mesh, "reviews", hedges=3, hedge_overload_refused=7)
    [(_, shared)] = await sequential(caller, mesh, ["/shared"])  # the cluster's hedge, the cluster's guard
    [(_, own)] = await sequential(caller, mesh, ["/own"])
    assert (shared >= STRAGGLE, own < HEDGED) == (True, True)
    assert_counters(mesh, "reviews", hedges=4, hedge_overload_refused=8)
    assert _load(mesh, "own").shares == {ENDPOINTS[0]: pytest.approx(0.1)}


async def test_a_reload_keeps_the_estimate_unless_after_changes(
    make_mesh: MakeMesh, caller: Caller, respx_mock: respx.MockRouter, mode: str
) -> None:
    Stalls(mode, every_try_slow).mock(respx_mock)
    mesh = make_mesh(_config())
    await burst(caller, mesh, ["/x"] * 5)
    load = _load(mesh)
    mesh.reload(_config(connect_timeout="1s"))
    assert _load(mesh) is load  # the overload the cluster is in does not end with a reload
    changed = _config()
    changed["clusters"]["reviews"]["hedge"] = {"after": "250ms"}
    mesh.reload(changed)
    assert _load(mesh) is not load
    assert _load(mesh).shares == {}  # another `after`, another meaning of slow: counted afresh


# --- SlowShare's arithmetic ------------------------------------------------------------------------------------------


def test_the_share_is_the_other_endpoints() -> None:
    share = SlowShare()
    urls = ("a", "b", "c")
    assert share.judge("a", urls, 0.5, slow=True) == 0.0  # b and c: never slow
    assert share.shares == {"a": 0.5}
    assert share.judge("b", urls, 0.5, slow=True) == pytest.approx(0.25)  # (a 0.5 + c 0) / 2
    assert share.judge("a", urls, 0.5, slow=False) == pytest.approx(0.25)  # a later hedge: counts nothing more
    assert share.shares == {"a": 0.5, "b": 0.5}
    assert share.judge(None, urls, 0.5, slow=True) == pytest.approx(1 / 3)  # no endpoint yet: all of them


def test_with_one_endpoint_the_share_is_its_own_before_this_request() -> None:
    share = SlowShare()
    assert [share.judge("a", ("a",), 0.1, slow=True) for _ in range(4)] == pytest.approx([0.0, 0.1, 0.19, 0.271])


def test_endpoints_a_reload_removed_are_forgotten() -> None:
    share = SlowShare()
    for n in range(20):
        share.judge(f"old-{n}", (f"old-{n}",), 0.1, slow=True)
    share.judge("new", ("new",), 0.1, slow=True)
    assert share.shares == {"new": pytest.approx(0.1)}


# --- the sync inline hedge (the mesh's own transport) against real servers -----------------------------------------


def _slow_app(seconds: float, calls: list[int]) -> Any:
    inner = echo_app(f"slow-{seconds}")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(1)
        await anyio.sleep(seconds)
        await inner(scope, receive, send)

    return app


@pytest.fixture
def servers() -> Iterator[Callable[..., RunningServer]]:
    running: list[RunningServer] = []

    def start(app: Any) -> RunningServer:
        running.append(start_server(app, "upstream"))
        return running[-1]

    yield start
    for server in running:
        server.server.should_exit = True
    for server in running:
        server.stop()


def _inline_config(urls: list[str]) -> dict[str, Any]:
    config = _config()
    config["clusters"]["reviews"]["endpoints"] = urls
    return config


def test_the_sync_inline_hedge_hardly_hedges_a_slow_burst(
    make_mesh: MakeMesh, servers: Callable[..., RunningServer]
) -> None:
    calls: list[int] = []
    server = servers(_slow_app(STALL, calls))
    mesh = make_mesh(_inline_config([server.url]))
    with mesh.client() as client, ThreadPoolExecutor(N) as pool:
        assert hedge_module.interruptible(client._transport.inner)  # type: ignore[attr-defined]
        statuses = list(pool.map(lambda _: client.get(URL).status_code, range(N), timeout=30))
    assert statuses == [200] * N
    assert_counters(mesh, "reviews", hedges=3, hedge_overload_refused=N - 3)
    assert len(calls) == N + 3


def test_the_sync_inline_hedge_hedges_around_a_stalled_endpoint(
    make_mesh: MakeMesh, servers: Callable[..., RunningServer]
) -> None:
    """Round robin puts every first try on the stalled server: all of them slow, and all hedged, to the fast one."""
    slow, fast = servers(_slow_app(5.0, [])), servers(echo_app("fast"))
    mesh = make_mesh(_inline_config([slow.url, fast.url]))
    with mesh.client() as client:
        for _ in range(10):
            started = time.monotonic()
            assert client.get(URL).json()["name"] == "fast"
            assert time.monotonic() - started < HEDGED
    assert_counters(mesh, "reviews", hedges=10, hedge_wins=10, hedge_overload_refused=0)


def test_the_sync_inline_hedge_hedges_a_straggler_after_fast_requests(
    make_mesh: MakeMesh, servers: Callable[..., RunningServer]
) -> None:
    stalls = {"/slow": STRAGGLE}
    inner = echo_app("upstream")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(stalls.pop(scope["path"], 0.0))  # the first try of /slow only
        await inner(scope, receive, send)

    server = servers(app)
    mesh = make_mesh(_inline_config([server.url]))
    with mesh.client() as client:
        for _ in range(10):
            assert client.get(URL).status_code == 200
        started = time.monotonic()
        assert client.get("http://reviews/slow").status_code == 200
        assert time.monotonic() - started < HEDGED
    assert_counters(mesh, "reviews", hedges=1, hedge_wins=1, hedge_overload_refused=0)
    assert _load(mesh).shares == {server.url: pytest.approx(0.1)}
