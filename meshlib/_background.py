"""Background work of a mesh (mirrored requests, hedged tries, health probes), in both modes.

Sync callers get a small thread pool, created on first use; async callers get
tasks on their own event loop, held here so they are not garbage-collected
mid-flight. ``close()`` stops both; the mesh calls it from ``Mesh.close()``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["Background"]

T = TypeVar("T")


class Background:
    """Runs fire-and-forget work for the mesh without blocking the caller."""

    def __init__(self, max_workers: int = 8) -> None:
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on the mesh's worker threads."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the mesh is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._max_workers, thread_name_prefix="meshlib")
            return self._executor.submit(fn, *args)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` as a task on the running event loop, keeping it referenced until done."""
        if self._closed:
            coro.close()
            raise RuntimeError("the mesh is closed")
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def close(self) -> None:
        """Stop accepting work; cancel what has not started and the async tasks."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        for task in list(self._tasks):
            task.cancel()
