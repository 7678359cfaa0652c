"""One list-then-watch of everything under the prefix, kept whole across etcd's failures.

etcd is a cache of what the fleet says, never the only copy: the view here is
replaced only by a complete list or amended by watch events, so a lost member,
a lost leader or a restarted etcd leaves the last known view serving. The loop
lists (range over the prefix), then watches from the list's revision + 1. A
broken watch resumes from the last revision seen, after a capped, jittered
backoff (a restarted etcd is back in use within about two seconds); a watch
whose revision was compacted lists again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from meshlib._discovery.etcd_client import Compacted, EtcdClient, EtcdError, WatchBatch

__all__ = ["BACKOFF_BASE", "BACKOFF_CAP", "EtcdWatch", "backoff"]

logger = logging.getLogger("meshlib.discovery")

# Reconnecting: full jitter over base × 2^attempt, capped, as gRPC's and Envoy's backoffs do.
BACKOFF_BASE: Final = 0.1
BACKOFF_CAP: Final = 2.0


def backoff(attempt: int, rng: random.Random | None = None) -> float:
    """How long to wait before reconnect attempt ``attempt`` (0-based): full jitter, capped at BACKOFF_CAP."""
    return (rng or random).uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))


Changed = Callable[[int], None]


class EtcdWatch:
    """The keys under ``prefix`` and their values, kept current by a daemon thread; ``on_change`` hears each change.

    ``on_change(revision)`` is called after each list and each batch of watch
    events, on the watch thread: it should only take note. The caller reads
    :meth:`view_at` when it needs the keys (endpoint sets, the config document).
    """

    def __init__(self, client: EtcdClient, prefix: str, on_change: Changed) -> None:
        self._client = client
        self._prefix = prefix
        self._on_change = on_change
        self._lock = threading.Lock()
        self._view: dict[str, bytes] = {}
        self._revision = 0
        self._connected = False
        self._stale_since: float | None = time.time()
        self._reconnects = 0
        self._relists = 0
        self._last_error: str | None = None
        self._closed = threading.Event()
        self._watch: Any = None
        self._thread: threading.Thread | None = None

    # --- state ---------------------------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    def view_at(self) -> tuple[dict[str, bytes], int]:
        """A copy of the keys and values, and the revision they are at."""
        with self._lock:
            return dict(self._view), self._revision

    def stats(self) -> dict[str, Any]:
        """``connected``, ``stale_since`` (unix time the view stopped being current, or None), ``revision``..."""
        with self._lock:
            return {
                "connected": self._connected,
                "stale_since": self._stale_since,
                "revision": self._revision,
                "member": self._client.member,
                "keys": len(self._view),
                "reconnects": self._reconnects,
                "relists": self._relists,
                "last_error": self._last_error,
            }

    # --- the loop ------------------------------------------------------------------------------------------------

    def list_once(self) -> None:
        """List every key under the prefix and replace the view with it (raises EtcdError when etcd can't answer)."""
        revision, kvs = self._client.range(self._prefix, prefix=True)
        with self._lock:
            self._view = {kv.key: kv.value for kv in kvs}
            self._revision = revision
            self._relists += 1
        self._connected_now()
        self._on_change(revision)

    def seed(self, view: Mapping[str, bytes], revision: int) -> None:
        """Start from a saved view (the snapshot file) while etcd cannot be listed; the loop lists when it can."""
        with self._lock:
            self._view = dict(view)
            self._revision = revision
        self._on_change(revision)

    def start(self, *, listed: bool) -> None:
        """Run the loop on a daemon thread; ``listed``: :meth:`list_once` succeeded (so watch from its revision)."""
        self._thread = threading.Thread(target=self._run, args=(listed,), name="meshlib-etcd-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        watch = self._watch
        if watch is not None:
            watch.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self, listed: bool) -> None:
        attempt = 0
        while not self._closed.is_set():
            try:
                if not listed:
                    self.list_once()
                    listed = True
                self._watch_from(self._revision + 1)
                attempt = 0  # the stream ran and ended: start the backoff over
            except Compacted as exc:
                logger.warning("etcd compacted revision %d: listing %s again", exc.compact_revision, self._prefix)
                listed = False
                continue
            except EtcdError as exc:
                self._lost(exc)
            except Exception as exc:  # a bug must not end discovery: log it, keep the view, try again
                logger.exception("etcd watch failed")
                self._lost(exc)
            if self._closed.wait(backoff(attempt)):
                return
            attempt += 1
            with self._lock:
                self._reconnects += 1

    def _watch_from(self, revision: int) -> None:
        with self._client.watch(self._prefix, prefix=True, start_revision=revision) as watch:
            self._watch = watch
            if self._closed.is_set():
                return
            self._connected_now()
            for batch in watch:
                self._apply(batch)
                if self._closed.is_set():
                    return

    def _apply(self, batch: WatchBatch) -> None:
        if not batch.events:
            return  # progress notification
        with self._lock:
            for event in batch.events:
                if event.type == "put":
                    self._view[event.kv.key] = event.kv.value
                else:
                    self._view.pop(event.kv.key, None)
            self._revision = max(self._revision, batch.revision)
        self._on_change(batch.revision)

    def _connected_now(self) -> None:
        with self._lock:
            was = self._connected
            self._connected = True
            self._stale_since = None
            self._last_error = None
        if not was:
            logger.info("etcd watch of %s at revision %d on %s", self._prefix, self._revision, self._client.member)

    def _lost(self, exc: BaseException) -> None:
        with self._lock:
            was = self._connected
            self._connected = False
            if self._stale_since is None:
                self._stale_since = time.time()
            self._last_error = str(exc) or type(exc).__name__
        if was:
            logger.warning("lost etcd (%s): serving the last known endpoints and config, reconnecting", exc)
