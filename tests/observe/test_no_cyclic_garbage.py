"""An observed request leaves no reference cycle behind: refcounting frees it as soon as it ends.

Cyclic garbage outlives its request until the collector runs: under load in the sidecar that was several MB of
RSS climbing for minutes and a share of every request's CPU in the collector (meshlib/_sidecar/process.py's
_GC_THRESHOLDS). The mesh's transports are driven directly here, as the sidecar does, with no httpx client
(whose own Response ↔ stream cycle is httpx's).
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

import meshlib


class _Answer(httpx.AsyncBaseTransport, httpx.BaseTransport):
    """An upstream that answers 503 to the first try of each request and 200 to the retry, body streamed."""

    def __init__(self) -> None:
        self.calls = 0

    def _response(self) -> httpx.Response:
        self.calls += 1
        return httpx.Response(503 if self.calls % 2 else 200, stream=httpx.ByteStream(b"body"))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._response()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return self._response()


def _config(tmp_path: Path) -> dict[str, Any]:
    return {
        "metrics": {"enabled": True},
        "tracing": {"sampling": 0.5},
        "access_log": {"path": str(tmp_path / "access.log")},
        "clusters": {
            "a": {
                "endpoints": ["http://127.0.0.1:9001"],
                "timeout": "1s",
                "retry": {"attempts": 2, "retry_on": ["5xx"], "budget": None},
                "circuit_breaker": {"failure_threshold": 50},
            }
        },
    }


@contextmanager
def saved_garbage() -> Iterator[list[object]]:
    """Everything the collector finds unreachable meanwhile, kept for the test to look at."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def _kinds(garbage: list[object]) -> Counter[str]:
    gc.collect()
    return Counter(type(o).__name__ for o in garbage)


def test_sync_requests_with_every_observer_leave_no_cycles(tmp_path: Path) -> None:
    with meshlib.Mesh.from_dict(_config(tmp_path)) as mesh:
        transport = mesh.transport(_Answer())

        def send() -> None:
            response = transport.handle_request(httpx.Request("GET", "http://a/"))
            assert response.status_code == 200  # after a retry
            response.read()
            response.close()

        send()  # the first request builds what every later one reuses
        with saved_garbage() as garbage:
            for _ in range(20):
                send()
            assert _kinds(garbage) == Counter()


def test_async_requests_with_every_observer_leave_no_cycles(tmp_path: Path) -> None:
    async def main() -> None:
        with meshlib.Mesh.from_dict(_config(tmp_path)) as mesh:
            transport = mesh.async_transport(_Answer())

            async def send() -> None:
                response = await transport.handle_async_request(httpx.Request("GET", "http://a/"))
                assert response.status_code == 200
                await response.aread()
                await response.aclose()

            await send()
            with saved_garbage() as garbage:
                for _ in range(20):
                    await send()
                assert _kinds(garbage) == Counter()

    asyncio.run(main())
