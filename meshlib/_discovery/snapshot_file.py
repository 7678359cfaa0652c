"""The last good view of etcd on local disk, to start from when etcd is down.

``registry.etcd.snapshot`` names a JSON file holding the registrations and the
config document last seen, with the revision they were read at. It is
written atomically (a temporary file renamed over it), at most once per
:data:`MIN_INTERVAL` while things change and once more at close, so that a
restart while etcd is unreachable serves what the fleet looked like, not
nothing. A file that can't be read is logged and ignored, never fatal.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

__all__ = ["MIN_INTERVAL", "SnapshotFile"]

logger = logging.getLogger("meshlib.discovery")

MIN_INTERVAL: Final = 1.0
_FORMAT = 1


class SnapshotFile:
    """Saves and loads ``(view, revision)``: the etcd keys meshlib uses (key → value) at one revision."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._pending: tuple[dict[str, bytes], int] | None = None
        self._last_write = 0.0
        self._timer: threading.Timer | None = None
        self.writes = 0

    def load(self) -> tuple[dict[str, bytes], int] | None:
        """The saved view and revision, or None (logged unless the file does not exist)."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if doc.get("format") != _FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            view = {str(k): base64.b64decode(v) for k, v in doc["kvs"].items()}
            return view, int(doc["revision"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("ignoring the etcd snapshot %s: %s", self.path, exc)
            return None

    def save(self, view: Mapping[str, bytes], revision: int) -> None:
        """Write soon: now if the last write is old enough, else once :data:`MIN_INTERVAL` has passed."""
        with self._lock:
            self._pending = (dict(view), revision)
            due = self._last_write + MIN_INTERVAL - time.monotonic()
            if self._timer is not None:
                return  # a write is scheduled: it takes the newest view
            if due > 0:
                self._timer = threading.Timer(due, self.flush)
                self._timer.daemon = True
                self._timer.start()
                return
        self.flush()

    def flush(self) -> None:
        """Write the pending view now, if there is one."""
        with self._lock:
            pending, self._pending = self._pending, None
            self._timer = None
            if pending is None:
                return
            self._last_write = time.monotonic()
            view, revision = pending
            doc = {
                "format": _FORMAT,
                "revision": revision,
                "saved_at": time.time(),
                "kvs": {k: base64.b64encode(v).decode("ascii") for k, v in sorted(view.items())},
            }
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(doc, out)
                os.replace(tmp, self.path)
                self.writes += 1
            except OSError as exc:
                logger.warning("cannot write the etcd snapshot %s: %s", self.path, exc)

    def close(self) -> None:
        with self._lock:
            timer = self._timer
        if timer is not None:
            timer.cancel()
        self.flush()
