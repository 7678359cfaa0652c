"""Watch a config file: poll it in a daemon thread and reload when its content changes.

Polling needs no dependency and sees every kind of save (in place, rename
over, a ConfigMap's symlink swap). Each poll is one ``stat``; the file is read
and hashed only when the stat changed, or when the file was modified within
the last :data:`RACY_WINDOW` seconds (so a same-size save within the
filesystem's mtime granularity is not missed, as git does for its index).
A reload fires when the content's digest differs from the one last loaded:
touching the file, or saving it unchanged, reloads nothing.

Used by ``Mesh.from_file(path, watch=True)`` and by ``meshlib proxy``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from meshlib._control.reload import describe_failure, file_digest

__all__ = ["RACY_WINDOW", "FileWatcher", "Stamp", "stamp"]

logger = logging.getLogger("meshlib.config")

# Seconds after a modification during which an unchanged stat does not prove an unchanged file.
RACY_WINDOW: Final = 2.0
# How long close() waits for a reload in progress (one may wait out an empty read: about a second).
_JOIN_TIMEOUT: Final = 2.0

Stamp = tuple[int, int, int]  # (st_mtime_ns, st_size, st_ino)


def stamp(path: Path) -> Stamp | None:
    """What one ``stat`` says of ``path`` (mtime, size, inode), or None when it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class FileWatcher:
    """Polls ``path`` every ``interval`` seconds in a daemon thread; calls ``reload()`` when its content changed.

    ``reload`` runs in the watcher's thread and returns the digest of the
    content it loaded (or None when it does not know it, e.g. it refused the
    file); exceptions it raises are logged and the watching goes on.
    ``loaded`` is the digest of the content in force at start (None: unknown).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        reload: Callable[[], str | None],
        *,
        interval: float,
        loaded: str | None = None,
        name: str = "meshlib-watch",
    ) -> None:
        if interval <= 0:
            raise ValueError(f"the watch interval must be above 0 seconds, not {interval!r}")
        self.path = Path(path)
        self.interval = interval
        self._reload = reload
        self._name = name
        self._digest = loaded
        self._stamp: Stamp | None = None  # the first check reads the file whatever its stat says
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start polling (once; later calls do nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # a bug must not end the watching: the file may be fixed later
                logger.exception("watching %s failed", self.path)

    def check(self) -> bool:
        """Look at the file once, in this thread, and reload if its content changed; whether it reloaded."""
        seen = stamp(self.path)
        if seen is not None and seen == self._stamp and time.time_ns() - seen[0] > RACY_WINDOW * 1e9:
            return False
        self._stamp = seen
        digest = file_digest(self.path)
        if digest == self._digest:
            return False
        # What the reload is about to read; if it does not say what it loaded, this change is not looked at again.
        self._digest = digest
        try:
            loaded = self._reload()
        except Exception as exc:  # one line; the traceback only at DEBUG
            logger.error("reloading %s failed: %s", self.path, describe_failure(exc))
            logger.debug("traceback of the failed reload", exc_info=exc)
            return True
        if loaded is not None:
            self._digest = loaded
        return True

    def close(self) -> None:
        """Stop polling and wait briefly for a reload in progress. Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
