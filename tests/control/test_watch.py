"""Reading a config file while an editor saves it, and watching it: load_settled, FileWatcher, ReloadStats."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import meshlib
from meshlib._control import reload as reload_module
from meshlib._control.reload import ReloadStats, file_digest, load_settled
from meshlib._control.watch import FileWatcher
from tests.conftest import wait_for

GOOD = "clusters:\n  reviews:\n    endpoints: [http://127.0.0.1:9081]\n"
OTHER = "clusters:\n  ratings:\n    endpoints: [http://127.0.0.1:9082]\n"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "mesh.yaml"
    path.write_text(GOOD)
    return path


@pytest.fixture
def short_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty read is read again for 0.2 s, every 10 ms (the real defaults: about 1 s, every 50 ms)."""
    monkeypatch.setattr(reload_module, "EMPTY_READ_SETTLE", 0.2)
    monkeypatch.setattr(reload_module, "EMPTY_READ_POLL", 0.01)


def _save_in_place(path: Path, text: str, pause: float) -> threading.Thread:
    """An editor's non-atomic save in another thread: truncate, wait ``pause`` seconds, write."""

    def save() -> None:
        with path.open("w") as f:
            f.flush()
            time.sleep(pause)
            f.write(text)

    writer = threading.Thread(target=save)
    writer.start()
    return writer


# load_settled


def test_a_save_in_place_caught_empty_loads_what_the_editor_wrote(config_file: Path) -> None:
    with config_file.open("w"):
        pass  # truncated: what a reader sees between an editor's truncate and its write
    writer = _save_in_place(config_file, OTHER, pause=0.05)
    config, digest = load_settled(config_file)
    writer.join(timeout=5)
    assert list(config.clusters) == ["ratings"]
    assert digest == file_digest(config_file)


def test_a_file_left_empty_is_refused_after_settling(config_file: Path, short_settle: None) -> None:
    config_file.write_text("  \n")
    started = time.monotonic()
    with pytest.raises(meshlib.ConfigError) as refused:
        load_settled(config_file)
    assert time.monotonic() - started >= 0.2  # read again meanwhile
    assert str(config_file) in str(refused.value)


def test_a_missing_file_is_waited_for_then_refused(tmp_path: Path, short_settle: None) -> None:
    with pytest.raises(meshlib.ConfigError, match="cannot read config file"):
        load_settled(tmp_path / "gone.yaml")
    later = tmp_path / "later.yaml"
    threading.Timer(0.05, later.write_text, args=(GOOD,)).start()
    config, _ = load_settled(later)  # an editor that deletes, then writes anew
    assert list(config.clusters) == ["reviews"]


def test_no_settling_at_all_when_asked(config_file: Path) -> None:
    config_file.write_text("")
    started = time.monotonic()
    with pytest.raises(meshlib.ConfigError):
        load_settled(config_file, settle=0)
    assert time.monotonic() - started < 0.5


# FileWatcher


@pytest.fixture
def reloads() -> list[str | None]:
    return []


@pytest.fixture
def watcher(config_file: Path, reloads: list[str | None]) -> Iterator[FileWatcher]:
    def reload() -> str | None:
        digest = file_digest(config_file)
        reloads.append(config_file.read_text())
        return digest

    w = FileWatcher(config_file, reload, interval=0.01, loaded=file_digest(config_file))
    yield w
    w.close()


def test_only_a_change_of_content_reloads(config_file: Path, watcher: FileWatcher, reloads: list[str]) -> None:
    assert not watcher.check()
    os.utime(config_file)  # touched
    config_file.write_text(GOOD)  # saved unchanged
    assert not watcher.check()
    config_file.write_text(OTHER)
    assert watcher.check()
    assert not watcher.check()
    assert reloads == [OTHER]


def test_a_same_size_save_within_the_mtime_granularity_is_seen(
    config_file: Path, watcher: FileWatcher, reloads: list[str]
) -> None:
    stat = config_file.stat()
    assert not watcher.check()
    same_size = GOOD.replace("9081", "9089")
    config_file.write_text(same_size)
    os.utime(config_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # a filesystem with coarse mtimes
    assert config_file.stat().st_size == stat.st_size
    assert watcher.check()
    assert reloads == [same_size]


def test_the_thread_reloads_and_survives_a_failing_reload(config_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="meshlib.config")
    calls: list[str] = []

    def reload() -> str | None:
        calls.append(config_file.read_text())
        if len(calls) == 1:
            raise RuntimeError("a bug in the reload")
        return None

    w = FileWatcher(config_file, reload, interval=0.01, loaded=file_digest(config_file))
    w.start()
    try:
        config_file.write_text(OTHER)
        wait_for(lambda: len(calls) == 1)
        config_file.write_text(GOOD + "# edited\n")
        wait_for(lambda: len(calls) == 2)
        assert w.running
    finally:
        w.close()
    assert not w.running
    # One line at ERROR; the traceback only at DEBUG.
    [failed, traceback] = [r for r in caplog.records if r.name == "meshlib.config"]
    assert (failed.levelname, failed.exc_info) == ("ERROR", None)
    assert failed.getMessage() == f"reloading {config_file} failed: internal error: RuntimeError: a bug in the reload"
    assert traceback.levelname == "DEBUG"
    assert traceback.exc_info is not None


def test_close_stops_the_watching(config_file: Path, reloads: list[str], watcher: FileWatcher) -> None:
    watcher.start()
    watcher.close()
    config_file.write_text(OTHER)
    time.sleep(0.05)
    assert reloads == []


def test_the_interval_must_be_positive(config_file: Path) -> None:
    with pytest.raises(ValueError, match="above 0"):
        FileWatcher(config_file, lambda: None, interval=0)


# ReloadStats


def test_reload_stats_count_and_log_each_reload(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshlib.config")
    stats = ReloadStats()
    stats.accept("mesh.yaml", 2)
    stats.refuse(2, meshlib.ConfigError([("clusters.a", "bad"), ("routes[0]", "worse")], source="mesh.yaml"))
    assert stats.as_dict() == {
        "accepted": 1,
        "refused": 1,
        "last_error": "invalid mesh config in mesh.yaml: clusters.a: bad routes[0]: worse",
    }
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "reloaded mesh.yaml: config version 2"),
        (
            "WARNING",
            "reload refused, still serving config version 2: "
            "invalid mesh config in mesh.yaml: clusters.a: bad routes[0]: worse",
        ),
    ]


def test_reload_stats_log_a_failure_that_is_no_config_error_as_one_error_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="meshlib.config")
    stats = ReloadStats()
    stats.refuse(3, OSError(24, "Too many open files"))
    assert stats.as_dict()["last_error"] == "internal error: OSError: [Errno 24] Too many open files"
    assert [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records] == [
        (
            "ERROR",
            "reload failed, still serving config version 3: internal error: OSError: [Errno 24] Too many open files",
            None,
        )
    ]
