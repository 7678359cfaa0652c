"""AsyncHTTP1Transport's name lookups: one at a time per host, so a name that resolves slowly cannot clog the resolver.

The proxy's wedge (issue 9): a config without a cluster sends its host's
requests through (``outbound_policy: allow_any``), each one looking the name
up. Lookups run on a small thread pool; a burst of them for a name that
resolves slowly or not at all queued there, and every later connection that
needed a lookup (to ``localhost``, to a cluster back in the config) waited
behind them: every request timed out. Here the loop's resolver is a fake
with its own two-thread pool and a slow name, on asyncio (whose
``getaddrinfo`` is a method a test can replace).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from meshlib._transport import AsyncHTTP1Transport
from tests.conftest import RunningServer, echo_app, start_server

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningServer]:
    server = start_server(echo_app("up"), "up")
    try:
        yield server
    finally:
        server.stop()


class Resolver:
    """Stands in for the loop's ``getaddrinfo``: every name is 127.0.0.1, ``slow.test`` after ``delay`` seconds
    and ``gone.test`` not at all (after ``delay``); lookups run on ``threads`` threads, like libuv's pool."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, threads: int = 2) -> None:
        self.loop = loop
        self.delay = delay
        self.calls: Counter[str] = Counter()
        self.pool = ThreadPoolExecutor(threads)

    def _lookup(self, host: str, port: int, args: dict[str, Any]) -> Any:
        if host in ("slow.test", "gone.test"):
            time.sleep(self.delay)
        if host == "gone.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return socket.getaddrinfo("127.0.0.1", port, **args)

    async def getaddrinfo(self, host: str, port: int, **args: Any) -> Any:
        self.calls[host] += 1
        return await self.loop.run_in_executor(self.pool, self._lookup, host, port, args)


@pytest.fixture
async def resolver(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Resolver]:
    loop = asyncio.get_running_loop()
    fake = Resolver(loop, delay=0.3)
    monkeypatch.setattr(loop, "getaddrinfo", fake.getaddrinfo)
    yield fake
    fake.pool.shutdown(wait=True)


def _port(server: RunningServer) -> int:
    return httpx.URL(server.url).port or 80


async def _get(client: httpx.AsyncClient, url: str) -> int | str:
    try:
        return (await client.get(url)).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


async def test_concurrent_connections_to_one_name_share_one_lookup(upstream: RunningServer, resolver: Resolver) -> None:
    port = _port(upstream)
    async with httpx.AsyncClient(transport=AsyncHTTP1Transport()) as client:
        results = await asyncio.gather(*(_get(client, f"http://gone.test:{port}/") for _ in range(20)))
        assert results == ["ConnectError"] * 20
        assert resolver.calls["gone.test"] == 1
        # Nothing is cached: the next connection looks the name up again.
        assert await _get(client, f"http://slow.test:{port}/") == 200
        assert await _get(client, f"http://gone.test:{port}/") == "ConnectError"
    assert resolver.calls == {"gone.test": 2, "slow.test": 1}


async def test_a_name_that_resolves_slowly_does_not_hold_up_other_names(
    upstream: RunningServer, resolver: Resolver
) -> None:
    """The wedge: with a lookup per request, 30 lookups of gone.test take 30 × 0.3 s / 2 threads = 4.5 s."""
    port = _port(upstream)
    async with httpx.AsyncClient(transport=AsyncHTTP1Transport()) as client:
        stuck = [asyncio.ensure_future(_get(client, f"http://gone.test:{port}/")) for _ in range(30)]
        await asyncio.sleep(0.01)  # their lookups have started
        started = time.monotonic()
        assert await _get(client, f"http://localhost:{port}/") == 200
        assert time.monotonic() - started < 0.25  # not queued behind gone.test
        assert await asyncio.gather(*stuck) == ["ConnectError"] * 30


async def test_a_waiter_that_gives_up_leaves_the_lookup_to_the_others(
    upstream: RunningServer, resolver: Resolver
) -> None:
    url = f"http://slow.test:{_port(upstream)}/"
    async with httpx.AsyncClient(transport=AsyncHTTP1Transport()) as client:
        hasty = asyncio.ensure_future(client.get(url, timeout=httpx.Timeout(5, connect=0.05)))
        patient = asyncio.ensure_future(client.get(url))
        with pytest.raises(httpx.ConnectTimeout):
            await hasty
        assert (await patient).status_code == 200
    assert resolver.calls["slow.test"] == 1
