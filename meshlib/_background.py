"""Background work of a mesh (mirrored requests, hedged tries, health probes), in both modes.

Sync callers get thread pools, created on first use: one for fire-and-forget
jobs (``submit``: mirrored copies) and one for tries a caller is waiting on
(``submit_try``: hedged tries). The two are separate so that background jobs
which themselves wait on tries (a mirror into a hedged cluster) can never
take every thread and starve the tries they wait for. Work submitted from a
thread runs in a copy of that thread's ``contextvars`` context, as asyncio
tasks do, so tracing context follows it. Async callers get tasks on their
own event loop, held here so they are not garbage-collected mid-flight.
``call_later`` runs a function on one timer thread after a delay (the sync
hedge's "this try is slow" alarm), without a thread per timer.
``close()`` stops all of it; the mesh calls it from ``Mesh.close()``.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, TypeVar

__all__ = ["Background", "TimerHandle"]

T = TypeVar("T")
logger = logging.getLogger("meshlib")


class TimerHandle:
    """A call scheduled by :meth:`Background.call_later`; ``cancel()`` stops it if it has not run."""

    __slots__ = ("cancelled", "fn")

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


# Queues of one delay the timer thread keeps; any other delay goes on its heap (see _Timers).
MAX_TIMER_QUEUES: Final = 16


class _Timers:
    """One thread that runs calls when they are due.

    Built for many short-lived timers of a few fixed delays (one per hedge
    policy), nearly all cancelled before they are due: calls of one delay are
    due in the order they were made, so each delay keeps a FIFO queue. A new
    call appends to its queue and first drops the cancelled calls at the
    queue's head, so when tries answer in time the queues stay short and the
    thread wakes about once per delay, not once per call. Scheduling costs a
    lock and two deque operations; no heap, no thread per timer.

    Nothing grows with the number of calls, whatever delays callers pass:
    at most :data:`MAX_TIMER_QUEUES` queues, each dropped once it runs dry;
    calls of any other delay go on a heap, from which cancelled calls are
    dropped whenever they outnumber the live ones.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queues: dict[float, deque[tuple[float, TimerHandle]]] = {}
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = 0  # ties on the heap break by order of scheduling, never by comparing handles
        self._wake_at = math.inf  # when the thread will look next; -inf while it is awake
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_later(self, delay: float, fn: Callable[[], object]) -> TimerHandle:
        handle = TimerHandle(fn)
        when = time.monotonic() + delay
        with self._lock:
            if self._closed:
                raise RuntimeError("the mesh is closed")
            queue = self._queues.get(delay)
            if queue is None and len(self._queues) < MAX_TIMER_QUEUES:
                queue = self._queues[delay] = deque()
            if queue is not None:
                while queue and queue[0][1].cancelled:
                    queue.popleft()
                queue.append((when, handle))
            else:
                self._push(when, handle)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="meshlib-timer", daemon=True)
                self._thread.start()
            elif when < self._wake_at:
                self._cond.notify()
        return handle

    def _push(self, when: float, handle: TimerHandle) -> None:
        heap = self._heap
        if len(heap) >= 64 and sum(h.cancelled for _, _, h in heap) * 2 > len(heap):
            heap[:] = [entry for entry in heap if not entry[2].cancelled]
            heapq.heapify(heap)
        self._seq += 1
        heapq.heappush(heap, (when, self._seq, handle))

    def _due(self, now: float) -> tuple[list[TimerHandle], float]:
        """Take the calls due at ``now`` off the queues (lock held); and when the next one is due."""
        due = []
        next_at = math.inf
        dry = []
        for delay, queue in self._queues.items():
            while queue and (queue[0][1].cancelled or queue[0][0] <= now):
                _, handle = queue.popleft()
                if not handle.cancelled:
                    due.append(handle)
            if queue:
                next_at = min(next_at, queue[0][0])
            else:
                dry.append(delay)
        for delay in dry:
            del self._queues[delay]
        heap = self._heap
        while heap and (heap[0][2].cancelled or heap[0][0] <= now):
            _, _, handle = heapq.heappop(heap)
            if not handle.cancelled:
                due.append(handle)
        if heap:
            next_at = min(next_at, heap[0][0])
        return due, next_at

    def live(self) -> tuple[int, int]:
        """How many queues there are and how many calls they and the heap hold (cancelled ones included)."""
        with self._lock:
            return len(self._queues), sum(len(q) for q in self._queues.values()) + len(self._heap)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                due, next_at = self._due(now)
                if due:
                    self._cond.release()
                    try:
                        for handle in due:
                            if not handle.cancelled:
                                self._call(handle)
                    finally:
                        self._cond.acquire()
                    continue
                self._wake_at = next_at
                self._cond.wait(None if next_at == math.inf else next_at - now)
                self._wake_at = -math.inf  # awake: a new call needs no notify, the loop looks again

    @staticmethod
    def _call(handle: TimerHandle) -> None:
        try:
            handle.fn()
        except Exception:  # one bad callback must not stop every later timer
            logger.exception("meshlib timer callback failed")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._queues.clear()
            self._heap.clear()
            self._cond.notify()


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
        self._timers = _Timers()
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

    def call_later(self, delay: float, fn: Callable[[], object]) -> TimerHandle:
        """Run ``fn()`` on the mesh's timer thread after ``delay`` seconds (real time), unless cancelled first.

        ``fn`` must be quick (it delays every later timer): hand real work to :meth:`submit_try`.
        """
        return self._timers.call_later(delay, fn)

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
        self._timers.close()
        for task in list(self._tasks):
            task.cancel()
