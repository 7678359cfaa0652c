"""Reload from a file without ever blanking the mesh: settle an empty read, validate, and count what happened.

Editors that save in place truncate the file and then write it, so a reader
can catch it empty (or, for a moment, missing). :func:`load_settled` reads
again every ``poll`` seconds, for up to ``settle`` seconds, before it lets
such a read through to validation, which refuses it (an empty config needs
``allow_empty: true``). :class:`ReloadStats` counts reloads accepted and
refused and logs each one (logger ``meshlib.config``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Final

from meshlib._config import records
from meshlib._config.models import MeshConfig
from meshlib._errors import ConfigError

__all__ = ["EMPTY_READ_POLL", "EMPTY_READ_SETTLE", "ReloadStats", "describe_failure", "file_digest", "load_settled"]

logger = logging.getLogger("meshlib.config")

# How long an empty or missing file is read again before validation refuses it, and how often.
EMPTY_READ_SETTLE: Final = 1.0
EMPTY_READ_POLL: Final = 0.05


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def file_digest(path: str | os.PathLike[str]) -> str | None:
    """A digest of the file's bytes, or None when it cannot be read."""
    data = _read(Path(path))
    return None if data is None else _digest(data)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def load_settled(path: str | os.PathLike[str], *, settle: float | None = None) -> tuple[MeshConfig, str | None]:
    """Load the config file, reading it again while it is empty or missing, for up to ``settle`` seconds.

    ``settle`` defaults to :data:`EMPTY_READ_SETTLE`; the file is read every :data:`EMPTY_READ_POLL` seconds.

    Returns the config and the digest of the bytes it was loaded from (None
    if the file changed while it was being loaded: the caller cannot know
    which version it got, so a watcher will look again). Raises
    :class:`meshlib.ConfigError` when the file is invalid, or still empty or
    missing after ``settle`` seconds.
    """
    if records.ACTIVE:  # a serving process without pydantic: validated by a child process
        from meshlib._config import offload

        return offload.call(load_settled, path, settle=settle)
    from meshlib._config.load import load_file  # here: a serving process without pydantic never loads it

    file = Path(path)
    deadline = time.monotonic() + (EMPTY_READ_SETTLE if settle is None else settle)
    before = _read(file)
    while (before is None or not before.strip()) and time.monotonic() < deadline:
        time.sleep(EMPTY_READ_POLL)
        before = _read(file)
    config = load_file(file)
    after = _read(file)
    return config, (_digest(after) if after is not None and after == before else None)


def describe_failure(error: BaseException) -> str:
    """Why a reload failed, on one line: a config's errors, or ``internal error: TYPE: MESSAGE`` for anything else."""
    text = " ".join(str(error).split())  # one line, whatever the error's shape
    if isinstance(error, ConfigError):
        return text
    return f"internal error: {type(error).__name__}" + (f": {text}" if text else "")


class ReloadStats:
    """Reloads accepted and refused, and why the last refused one was; each one is logged once.

    Thread-safe: a file watcher, a signal and an API call may reload at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accepted = 0
        self.refused = 0
        self.last_error: str | None = None

    def accept(self, source: str | None, version: int) -> None:
        with self._lock:
            self.accepted += 1
        logger.info("reloaded%s: config version %d", f" {source}" if source else "", version)

    def refuse(self, serving: int, error: BaseException) -> None:
        """Count a reload that did not happen and log one line: WARNING for an invalid config, ERROR for a bug."""
        why = describe_failure(error)
        with self._lock:
            self.refused += 1
            self.last_error = why
        if isinstance(error, ConfigError):
            # The error names the file when there is one ("invalid mesh config in mesh.yaml: ...").
            logger.warning("reload refused, still serving config version %d: %s", serving, why)
        else:  # not the config's fault: one line, and the traceback only for whoever asks for DEBUG
            logger.error("reload failed, still serving config version %d: %s", serving, why)
            logger.debug("traceback of the failed reload", exc_info=error)

    def as_dict(self) -> dict[str, Any]:
        """``{"accepted": N, "refused": N, "last_error": str | None}``."""
        with self._lock:
            return {"accepted": self.accepted, "refused": self.refused, "last_error": self.last_error}
