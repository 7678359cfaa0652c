"""``Mesh.reload`` from a file, and ``Mesh.from_file(path, watch=True)``: a bad file never replaces a good config."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import respx
import yaml

import meshlib
from meshlib._control import reload as reload_module
from tests.conftest import wait_for

A, B = "http://127.0.0.1:9081", "http://127.0.0.1:9082"


def _to(endpoint: str) -> dict[str, Any]:
    return {"clusters": {"reviews": {"endpoints": [endpoint]}}}


def _write(path: Path, config: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(config))


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "mesh.yaml"
    _write(path, _to(A))
    return path


@pytest.fixture
def upstreams(respx_mock: respx.MockRouter) -> respx.MockRouter:
    for url in (A, B):
        respx_mock.get(url=f"{url}/x").respond(200, text=url)
    return respx_mock


def _serving(mesh: meshlib.Mesh) -> str:
    with mesh.client() as client:
        return client.get("http://reviews/x").text


def _reloads(mesh: meshlib.Mesh) -> dict[str, Any]:
    reloads: dict[str, Any] = mesh.stats()["reloads"]
    return reloads


# reload(path)


@pytest.mark.parametrize("as_type", [str, Path], ids=["str", "Path"])
def test_reload_takes_a_path(
    config_file: Path, upstreams: respx.MockRouter, as_type: type[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshlib.config")
    with meshlib.Mesh.from_file(config_file) as mesh:
        _write(config_file, _to(B))
        snapshot = mesh.reload(as_type(config_file))
        assert snapshot.version == 2
        assert _serving(mesh) == B
        assert _reloads(mesh) == {"accepted": 1, "refused": 0, "last_error": None}
    assert [r.getMessage() for r in caplog.records] == [f"reloaded {config_file}: config version 2"]


def test_reload_of_a_bad_file_or_dict_is_refused_counted_and_logged(
    config_file: Path, tmp_path: Path, upstreams: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    with meshlib.Mesh.from_file(config_file) as mesh:
        with pytest.raises(meshlib.ConfigError, match="cannot read config file"):
            mesh.reload(str(tmp_path / "missing.yaml"))
        with pytest.raises(meshlib.ConfigError, match=r"clusters\.reviews\.endpoints\[0\]"):
            mesh.reload({"clusters": {"reviews": {"endpoints": ["not a url"]}}})
        assert mesh.snapshot.version == 1
        assert _serving(mesh) == A
        reloads = _reloads(mesh)
    assert (reloads["accepted"], reloads["refused"]) == (0, 2)
    assert "clusters.reviews.endpoints[0]" in reloads["last_error"]
    refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(refusals) == 2
    assert all(m.startswith("reload refused, still serving config version 1: invalid mesh config") for m in refusals)


@pytest.mark.parametrize(
    ("text", "why"),
    [("", "empty"), ("- reviews\n- ratings\n", "must be a mapping"), ("routes: []\n", "allow_empty")],
    ids=["empty", "a-list", "no-clusters-no-routes"],
)
def test_reload_refuses_a_file_that_would_blank_the_mesh(
    config_file: Path, upstreams: respx.MockRouter, short_settle: None, text: str, why: str
) -> None:
    with meshlib.Mesh.from_file(config_file) as mesh:
        config_file.write_text(text)
        with pytest.raises(meshlib.ConfigError, match=why):
            mesh.reload(config_file)
        assert _serving(mesh) == A
        assert _reloads(mesh)["refused"] == 1


# from_file(watch=True)


@pytest.fixture
def short_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reload_module, "EMPTY_READ_SETTLE", 0.2)
    monkeypatch.setattr(reload_module, "EMPTY_READ_POLL", 0.01)


@pytest.fixture
def watched(config_file: Path) -> Iterator[meshlib.Mesh]:
    with meshlib.Mesh.from_file(config_file, watch=True, watch_interval=0.01) as mesh:
        yield mesh


def test_a_watched_file_reloads_when_it_changes(
    config_file: Path, watched: meshlib.Mesh, upstreams: respx.MockRouter
) -> None:
    _write(config_file, _to(B))
    wait_for(lambda: watched.snapshot.version == 2)
    assert _serving(watched) == B
    assert _reloads(watched)["accepted"] == 1


def test_a_save_in_place_reloads_once_and_never_blanks_the_mesh(
    config_file: Path, watched: meshlib.Mesh, upstreams: respx.MockRouter
) -> None:
    text = yaml.safe_dump(_to(B))
    seen: list[str] = []

    def save() -> None:  # an editor's non-atomic save: truncate, then (a few polls later) write
        with config_file.open("w") as f:
            f.flush()
            time.sleep(0.05)
            f.write(text)

    writer = threading.Thread(target=save)
    writer.start()
    while writer.is_alive():
        seen.append(_serving(watched))
    writer.join()
    wait_for(lambda: watched.snapshot.version == 2)
    time.sleep(0.05)  # a few more polls: the content loaded is not loaded again
    assert _reloads(watched) == {"accepted": 1, "refused": 0, "last_error": None}
    assert set(seen) <= {A, B}  # every request routed, before and after
    assert _serving(watched) == B


def test_a_file_left_empty_is_refused_once_and_the_old_config_serves(
    config_file: Path, watched: meshlib.Mesh, upstreams: respx.MockRouter, short_settle: None
) -> None:
    config_file.write_text("")
    wait_for(lambda: _reloads(watched)["refused"] == 1)
    assert _serving(watched) == A
    assert watched.snapshot.version == 1
    time.sleep(0.05)
    assert _reloads(watched)["refused"] == 1  # once for that content, not once per poll
    _write(config_file, _to(B))  # fixed: the watcher goes on
    wait_for(lambda: watched.snapshot.version == 2)
    assert _serving(watched) == B


def test_a_file_dropping_every_cluster_needs_allow_empty(
    config_file: Path, watched: meshlib.Mesh, upstreams: respx.MockRouter
) -> None:
    _write(config_file, {"routes": []})
    wait_for(lambda: _reloads(watched)["refused"] == 1)
    assert _serving(watched) == A
    _write(config_file, {"allow_empty": True})
    wait_for(lambda: watched.snapshot.version == 2)  # said explicitly: accepted
    assert watched.config.clusters == {}


def test_close_stops_the_watching(config_file: Path, upstreams: respx.MockRouter) -> None:
    mesh = meshlib.Mesh.from_file(config_file, watch=True, watch_interval=0.01)
    watcher = mesh._watcher
    assert watcher is not None
    assert watcher.running
    mesh.close()
    assert not watcher.running
    _write(config_file, _to(B))
    time.sleep(0.05)
    assert mesh.snapshot.version == 1


def test_watch_interval_must_be_positive(config_file: Path) -> None:
    with pytest.raises(ValueError, match="watch_interval"):
        meshlib.Mesh.from_file(config_file, watch=True, watch_interval=0)
