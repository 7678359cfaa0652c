"""No timer structure grows with the number of requests: the sidecar's data path under a route timeout and retries.

Each request's read wait is bounded by what is left of its budget, a different
delay every time; before the fix each distinct delay kept a queue (and often a
loop timer) for the life of the loop, about 24 bytes a request for ever.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from meshlib._engine import alarms
from meshlib._transport import AsyncHTTP1Transport
from tests.conftest import MakeMesh

pytestmark = pytest.mark.anyio


def _timers(loop: asyncio.AbstractEventLoop) -> tuple[int, int, int]:
    """(alarm queues, alarms queued, live loop timers) on asyncio's default loop."""
    queues, queued = alarms.live_queues(loop)
    live = sum(not handle.cancelled() for handle in loop._scheduled)  # type: ignore[attr-defined]
    return queues, queued, live


async def test_timer_structures_do_not_grow_with_requests(make_mesh: MakeMesh, upstreams: dict[str, str]) -> None:
    mesh = make_mesh(
        {
            "clusters": {
                "reviews": {
                    "endpoints": [upstreams["reviews-v1-a"], upstreams["reviews-v1-b"]],
                    "timeout": "1s",
                    "retry": {"attempts": 3, "retry_on": ["5xx", "connect-failure"]},
                }
            }
        }
    )
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(transport=mesh.async_transport(inner=AsyncHTTP1Transport())) as client:

        async def burst(n: int) -> None:
            async def one() -> None:
                for _ in range(n // 8):
                    assert (await client.get("http://reviews/x")).status_code == 200

            await asyncio.wait_for(asyncio.gather(*(one() for _ in range(8))), 60)

        await burst(200)
        after_few = _timers(loop)
        await burst(1600)
        after_many = _timers(loop)
    assert after_many[0] <= alarms.MAX_QUEUES
    # Eight times the requests, and no more queued alarms or loop timers than eight requests in flight hold.
    assert after_many[1] <= after_few[1] + 64
    assert after_many[2] <= after_few[2] + 16
    # A read wait shares a queue when its delay equals the last one on its origin (requests that started together
    # can have the same remaining budget), and the queue goes once its last alarm's delay (1 s here) has passed:
    # none stays for good.
    await asyncio.sleep(1.1)
    assert _timers(loop)[0] == 0
