"""What ``POST /reload`` answers, also under ``--workers N``, and what start-up says about a config it cannot run.

With workers, the file is validated once (by worker 0), and 200 comes only once every worker runs the new
config; bad storage URLs are refused at start-up (exit 2, field paths) and on reload (400), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from meshlib._errors import ConfigError
from meshlib._sidecar import launch, process
from meshlib._sidecar.admin import ReloadAnswer, reload_answer
from meshlib._sidecar.launch import ProxyOptions, run_proxy
from meshlib._sidecar.process import workers_answer
from tests.sidecar import proxy_process
from tests.sidecar.proxy_process import ProxyProcess, running

BAD_STORAGE = "redis://:s3cret@127.0.0.1:notaport/0"


def _config(route: str = "first", *, filler: int = 0) -> dict[str, Any]:
    # Filler clusters make a reload take some 50 ms to compile: long enough to tell a 200 sent before it ended.
    clusters = {
        f"filler-{i}": {"endpoints": [f"http://127.0.0.1:{10000 + i}"], "retry": {"attempts": 3}, "circuit_breaker": {}}
        for i in range(filler)
    }
    return {
        "clusters": {"reviews": {"endpoints": ["http://127.0.0.1:9081"]}, **clusters},
        "routes": [{"name": route, "match": {"host": "reviews"}, "cluster": "reviews"}],
    }


def _bad_storage() -> dict[str, Any]:
    config = _config()
    config["clusters"]["reviews"]["rate_limit"] = {"rate": "10/second", "storage": BAD_STORAGE}
    return config


def _admin(proxy: ProxyProcess, method: str, path: str) -> httpx.Response:
    return httpx.request(method, proxy.admin_url + path, trust_env=False, timeout=30)


# The answer worker 0 makes of every worker's


def _own(digest: str = "d1") -> ReloadAnswer:
    return reload_answer(version=4, digest=digest)


def _peer(index: int, digest: str = "d1", version: int = 2) -> tuple[bool, dict[str, Any]]:
    return True, {"worker": index, **reload_answer(version=version, digest=digest).body}


def test_every_worker_on_the_new_digest_is_200() -> None:
    answer = workers_answer(_own(), [_peer(1), _peer(2, version=7)])
    assert answer.status == 200
    assert answer.body["reloaded"] is True
    assert [(w["worker"], w["digest"]) for w in answer.body["workers"]] == [(0, "d1"), (1, "d1"), (2, "d1")]


def test_a_worker_that_did_not_answer_is_504_and_named() -> None:
    silent = (False, {"worker": 2, "reloaded": False, "message": "did not answer within 10s"})
    answer = workers_answer(_own(), [_peer(1), silent])
    assert answer.status == 504
    assert answer.body["reloaded"] is False
    assert answer.body["message"] == (
        "not every worker runs the new config (digest d1): worker 2: did not answer within 10s"
    )


def test_a_worker_on_other_content_or_refusing_is_500_and_says_what_it_runs() -> None:
    refused = (True, {"worker": 2, **reload_answer(RuntimeError("boom"), version=3, digest="d0").body})
    answer = workers_answer(_own(), [_peer(1, digest="d2", version=5), refused])
    assert answer.status == 500
    assert answer.body["message"] == (
        "not every worker runs the new config (digest d1): worker 1 runs config version 5 (digest d2);"
        " worker 2: internal error: RuntimeError: boom; still runs config version 3 (digest d0)"
    )


# A real proxy of two workers


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_invalid_reload_is_400_with_the_errors_and_every_worker_keeps_its_config(
    tmp_path: Path, workers: str
) -> None:
    with running(tmp_path, _config(), "--workers", workers, "--watch-interval", "0") as proxy:
        before = _admin(proxy, "GET", "/stats").json()
        proxy.write_config(_bad_storage())
        response = _admin(proxy, "POST", "/reload")
        assert response.status_code == 400
        body = response.json()
        assert body["reloaded"] is False
        assert "clusters.reviews.rate_limit.storage: invalid storage" in body["message"]
        assert "s3cret" not in body["message"]
        assert body["digest"] == before["digest"]  # what still serves
        after = _admin(proxy, "GET", "/stats").json()
        assert after["digest"] == before["digest"]
        if workers == "2":  # worker 0 refused it alone: nothing was relayed
            assert [(w["version"], w["digest"]) for w in after["workers"]] == [(1, before["digest"])] * 2
            assert [w["reloads"]["refused"] for w in after["workers"]] == [1, 0]
        assert _admin(proxy, "GET", "/config_dump").json()["config"]["routes"][0]["name"] == "first"
        assert "Traceback" not in proxy.log
        assert "s3cret" not in proxy.log


@pytest.mark.parametrize(
    "watch",
    [
        pytest.param("0", id="reloaded-by-post-only"),
        # The file watchers reload too, racing POST /reload: versions differ between workers, digests line up.
        pytest.param("0.05", id="racing-the-watchers"),
    ],
)
def test_twenty_reloads_in_a_row_each_200_once_every_worker_runs_it(tmp_path: Path, watch: str) -> None:
    with running(tmp_path, _config(filler=60), "--workers", "2", "--watch-interval", watch) as proxy:
        for i in range(20):
            proxy.write_config(_config(f"route-{i}", filler=60))
            response = _admin(proxy, "POST", "/reload")
            assert response.status_code == 200, response.text
            body = response.json()
            dump = _admin(proxy, "GET", "/config_dump").json()
            assert dump["config"]["routes"][0]["name"] == f"route-{i}"
            assert dump["digest"] == body["digest"]
            assert [w["worker"] for w in body["workers"]] == [0, 1]
            assert {w["digest"] for w in body["workers"]} == {body["digest"]}
        workers = _admin(proxy, "GET", "/stats").json()["workers"]
        assert {w["digest"] for w in workers} == {body["digest"]}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_bad_storage_url_at_start_up_exits_2_with_field_paths(tmp_path: Path, workers: str) -> None:
    config = _bad_storage()
    config["clusters"]["reviews"]["circuit_breaker"] = {"storage": "redis://127.0.0.1:99999/0"}
    proxy = proxy_process.start(tmp_path, config, "--workers", workers)
    try:
        assert proxy.wait() == 2
        proxy.wait_for_line("clusters.reviews.rate_limit.storage: invalid storage")
        proxy.wait_for_line("clusters.reviews.circuit_breaker.storage: invalid storage")
    finally:
        proxy.stop()
    assert "Traceback" not in proxy.log
    assert "s3cret" not in proxy.log


def test_a_config_error_found_only_when_the_mesh_is_built_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Validation catches all it can; should building still find one, start-up says so as validate would."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ConfigError([("clusters.reviews.rate_limit.storage", "found while building")])

    monkeypatch.setattr(process, "Mesh", refuse)
    monkeypatch.setattr(launch, "configure_logging", lambda level: None)  # the test process's logging stays
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(_config()))
    assert run_proxy(ProxyOptions(config=path), environ={}) == 2
    assert "clusters.reviews.rate_limit.storage: found while building" in capsys.readouterr().err
