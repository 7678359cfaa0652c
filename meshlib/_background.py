"""Background work of a mesh (mirrored requests, hedged tries, health probes), in both modes.

Sync callers get thread pools, created on first use: one for fire-and-forget
jobs (``submit``: mirrored copies) and one for tries a caller is waiting on
(``submit_try``: hedged tries). The two are separate so that background jobs
which themselves wait on tries (a mirror into a hedged cluster) can never
take every thread and starve the tries they wait for. Work submitted from a
thread runs in a copy of that thread's ``contextvars`` context, as asyncio
tasks do, so tracing context follows it. Async callers get tasks on their
own event loop, held here so they are not garbage-collected mid-flight.
``close()`` stops both; the mesh calls it from ``Mesh.close()``.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["Background"]

T = TypeVar("T")


class Background:
    """Runs work for the mesh without blocking the caller.

    ``max_workers`` bounds the threads of fire-and-forget jobs (their queue
    is unbounded: callers that care bound what they submit); ``try_workers``
    bounds the threads of concurrent tries, each of which a caller waits on.
    """

    def __init__(self, max_workers: int = 8, try_workers: int = 64) -> None:
        self._max_workers = max_workers
        self._try_workers = try_workers
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._try_executor: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (new work is then refused)."""
        return self._closed

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on the mesh's worker threads, fire-and-forget style."""
        context = contextvars.copy_context()
        with self._lock:
            if self._closed:
                raise RuntimeError("the mesh is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._max_workers, thread_name_prefix="meshlib")
            return self._executor.submit(context.run, fn, *args)

    def submit_try(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on the threads reserved for tries that a caller waits on (hedging)."""
        context = contextvars.copy_context()
        with self._lock:
            if self._closed:
                raise RuntimeError("the mesh is closed")
            if self._try_executor is None:
                self._try_executor = ThreadPoolExecutor(self._try_workers, thread_name_prefix="meshlib-try")
            return self._try_executor.submit(context.run, fn, *args)

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
        """Stop accepting work; cancel the jobs that have not started and the async tasks.

        Tries already submitted still run (a caller is waiting for them); the
        threads exit once idle.
        """
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
            try_executor, self._try_executor = self._try_executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if try_executor is not None:
            try_executor.shutdown(wait=False)
        for task in list(self._tasks):
            task.cancel()
