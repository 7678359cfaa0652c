"""``meshlib proxy`` serves without pydantic: its configs are validated by a child process and arrive as records.

What a process has loaded is read from outside, in ``/proc/PID/maps``:
pydantic-core's extension module is mapped once pydantic is imported. That
holds across the restart with pydantic that a config needing it (xDS, a
config document in etcd) makes: the same process id, another program.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sidecar import proxy_process
from tests.sidecar.test_process import _to, echo

__all__ = ["echo"]  # the fixture, shared

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")


@pytest.fixture
def plain(tmp_path: Path, echo: dict[str, str]) -> Iterator[proxy_process.ProxyProcess]:
    with proxy_process.running(tmp_path, _to(echo["v1"])) as proxy:
        yield proxy


def test_a_proxy_serves_and_reloads_without_ever_loading_pydantic(
    plain: proxy_process.ProxyProcess, echo: dict[str, str]
) -> None:
    with plain.client(timeout=10) as client:
        assert client.get("http://reviews/x").json()["name"] == "v1"
        assert not proxy_process.loads_pydantic(plain.proc.pid)
        plain.write_config(_to(echo["v2"]))
        reply = client.post(plain.admin_url + "/reload")
        assert reply.status_code == 200, reply.text
        assert reply.json()["version"] == 2
        assert client.get("http://reviews/x").json()["name"] == "v2"
        # What the admin shows of the config was dumped and redacted where it was validated.
        dump = client.get(plain.admin_url + "/config_dump").json()
        assert dump["config"]["clusters"]["reviews"]["endpoints"] == [{"url": echo["v2"], "weight": 1}]
    assert not proxy_process.loads_pydantic(plain.proc.pid)


def test_an_invalid_reload_is_refused_with_the_errors_the_validating_child_found(
    plain: proxy_process.ProxyProcess, echo: dict[str, str]
) -> None:
    plain.write_config({"clusters": {"reviews": {"endpoints": [echo["v2"]], "timeout": "soon"}}})
    with plain.client(timeout=10) as client:
        reply = client.post(plain.admin_url + "/reload")
        assert reply.status_code == 400
        assert "clusters.reviews.timeout" in reply.json()["message"], reply.text
        assert client.get("http://reviews/x").json()["name"] == "v1"  # the old config serves on
        stats = client.get(plain.admin_url + "/stats").json()
    assert stats["reloads"]["refused"] == 1
    assert "clusters.reviews.timeout" in stats["reloads"]["last_error"]
    assert not proxy_process.loads_pydantic(plain.proc.pid)


def test_a_reload_that_adds_a_config_document_from_etcd_asks_for_a_restart(
    plain: proxy_process.ProxyProcess, echo: dict[str, str]
) -> None:
    """Reading config from etcd means validating it as it changes, in the serving process: that needs pydantic."""
    config: dict[str, Any] = {
        **_to(echo["v2"]),
        "registry": {"etcd": {"endpoints": ["http://127.0.0.1:9"]}},
        "config_source": {"etcd": {"key": "/meshlib/config/reviews"}},
    }
    plain.write_config(config)
    with plain.client(timeout=10) as client:
        reply = client.post(plain.admin_url + "/reload")
        assert reply.status_code == 400, reply.text
        assert "config_source: a sidecar started without config_source" in reply.json()["message"]
        assert client.get("http://reviews/x").json()["name"] == "v1"


def test_the_environment_can_keep_pydantic_in_the_serving_process(tmp_path: Path, echo: dict[str, str]) -> None:
    environ = {"MESHLIB_SIDECAR_PYDANTIC": "1"}
    with proxy_process.running(tmp_path, _to(echo["v1"]), environ=environ) as proxy:
        assert proxy_process.loads_pydantic(proxy.proc.pid)
        proxy.write_config(_to(echo["v2"]))
        with proxy.client(timeout=10) as client:
            assert client.post(proxy.admin_url + "/reload").status_code == 200
            assert client.get("http://reviews/x").json()["name"] == "v2"


def test_workers_and_their_supervisor_serve_without_pydantic(tmp_path: Path, echo: dict[str, str]) -> None:
    port = proxy_process.free_port()
    with proxy_process.running(tmp_path, _to(echo["v1"]), "--workers", "2", "--outbound", f"127.0.0.1:{port}") as proxy:
        proxy.outbound = port
        with proxy.client(timeout=10) as client:
            assert client.get("http://reviews/x").status_code == 200
        workers = [int(p) for p in Path(f"/proc/{proxy.proc.pid}/task/{proxy.proc.pid}/children").read_text().split()]
        assert len(workers) == 2
        assert not any(proxy_process.loads_pydantic(pid) for pid in [proxy.proc.pid, *workers])
