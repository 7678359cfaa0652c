"""What would fail when the mesh is built (or at its first request) is refused by validation, at its field path.

Storage URLs are read by redis-py only when the mesh is built; a huge weight or duration overflows
float, thread, socket or datetime arithmetic; a control character in a path makes an invalid URL.
Each is a ``ConfigError`` from ``MeshConfig`` and ``meshlib validate`` (exit 2), never a ``ValueError``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import meshlib
from meshlib._cli import main

ENDPOINT = "http://127.0.0.1:9081"

BAD_STORAGES = [
    pytest.param("redis://127.0.0.1:notaport/0", "the port must be a number from 1 to 65535", id="port-not-a-number"),
    pytest.param("redis://127.0.0.1:99999/0", "the port must be a number from 1 to 65535", id="port-too-big"),
    pytest.param("redis://127.0.0.1:0/0", "the port must be a number from 1 to 65535", id="port-0"),
    pytest.param("redis:///0", "it names no host", id="no-host"),
    pytest.param("redis://bad host:6379/0", "invalid host 'bad host'", id="bad-host"),
    pytest.param("redis://127.0.0.1:6379/zero", "the database must be a number", id="db-not-a-number"),
    pytest.param("redis://127.0.0.1:6379/0?db=x", "Invalid value for 'db'", id="db-option"),
    pytest.param("redis://127.0.0.1:6379/0?foo=1", "redis does not take 'foo' in the URL's query", id="unknown-option"),
    pytest.param("redis://127.0.0.1:6379/0?ssl_certfile=/c.pem", "ssl_ options need rediss://", id="ssl-on-plain"),
    pytest.param("redis://127.0.0.1:6379/0?socket_timeout=-1", "'socket_timeout': a number above 0", id="timeout"),
    pytest.param("redis://127.0.0.1:6379/0?protocol=5", "protocol must be either 2 or 3", id="protocol"),
    pytest.param("redis://127.0.0.1:6379/0#x", "a storage URL takes no #fragment", id="fragment"),
    pytest.param("memory://elsewhere", "memory:// takes no host, path or options", id="memory-with-host"),
    pytest.param("mongodb://127.0.0.1:27017", "unsupported storage", id="other-scheme"),
]
GOOD_STORAGES = [
    "memory://",
    "redis://127.0.0.1:6379",
    "redis://localhost/2",
    "redis://:pw@[::1]:6379/0?socket_timeout=0.5&socket_connect_timeout=0.5",
    "rediss://user:pw@redis.internal:6380/0?ssl_cert_reqs=none",
]


def _with_storage(where: str, storage: str) -> dict[str, Any]:
    policy = {"rate": "10/second", "storage": storage} if where == "rate_limit" else {"storage": storage}
    return {"clusters": {"reviews": {"endpoints": [ENDPOINT], where: policy}}}


def _validate(tmp_path: Path, config: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("where", ["rate_limit", "circuit_breaker"])
@pytest.mark.parametrize(("storage", "why"), BAD_STORAGES)
def test_a_bad_storage_url_fails_validate_with_its_field_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, storage: str, why: str
) -> None:
    code, err = _validate(tmp_path, _with_storage(where, storage), capsys)
    assert code == 2
    assert f"clusters.reviews.{where}.storage: " in err
    assert why in err
    assert "Traceback" not in err


@pytest.mark.parametrize("where", ["rate_limit", "circuit_breaker"])
@pytest.mark.parametrize("storage", GOOD_STORAGES)
def test_good_storage_urls_pass_and_the_mesh_builds(where: str, storage: str) -> None:
    with meshlib.Mesh.from_dict(_with_storage(where, storage)):  # nothing connects until a request
        pass


def test_a_route_rate_limit_storage_is_checked_too() -> None:
    config = {
        "clusters": {"reviews": {"endpoints": [ENDPOINT]}},
        "routes": [{"cluster": "reviews", "rate_limit": {"rate": "1/second", "storage": "redis://h:99999"}}],
    }
    with pytest.raises(meshlib.ConfigError) as raised:
        meshlib.MeshConfig.from_dict(config)
    [(path, _)] = raised.value.errors
    assert path == "routes[0].rate_limit.storage"


def test_a_redis_storage_without_the_redis_package_fails_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis → ImportError
    code, err = _validate(tmp_path, _with_storage("rate_limit", "redis://127.0.0.1:6379/0"), capsys)
    assert code == 2
    assert "clusters.reviews.rate_limit.storage: a redis:// storage needs the redis package: pip install redis" in err


def _cluster(**changes: Any) -> dict[str, Any]:
    return {"clusters": {"reviews": {"endpoints": [ENDPOINT, "http://127.0.0.1:9082"], **changes}}}


@pytest.mark.parametrize(
    ("config", "path", "why"),
    [
        pytest.param(
            _cluster(endpoints=[{"url": ENDPOINT, "weight": 10**400}], lb="ring_hash", hash_on={"header": "x"}),
            "clusters.reviews.endpoints[0].weight",
            "less than or equal to 4294967295",
            id="ring-hash-weight",  # OverflowError when the ring was built
        ),
        pytest.param(
            {**_cluster(), "routes": [{"split": [{"cluster": "reviews", "weight": 2**32}]}]},
            "routes[0].split[0].weight",
            "less than or equal to 4294967295",
            id="split-weight",
        ),
        pytest.param(
            _cluster(health_check={"interval": "9000h"}),
            "clusters.reviews.health_check.interval",
            "must be at most 8760h (365 days)",
            id="health-interval",  # OverflowError in the health-check thread
        ),
        pytest.param(
            _cluster(timeout="10000000h"),
            "clusters.reviews.timeout",
            "must be at most 8760h (365 days)",
            id="timeout",  # OverflowError setting a socket timeout, at the first request
        ),
        pytest.param(
            _cluster(health_check={"path": "/healthz\x01"}),
            "clusters.reviews.health_check.path",
            "has a control character",
            id="health-path",  # httpx.InvalidURL at every probe
        ),
        pytest.param(
            {
                **_cluster(),
                "routes": [{"match": {"path_prefix": "/a"}, "cluster": "reviews", "rewrite": {"path_prefix": "/\x7f"}}],
            },
            "routes[0].rewrite.path_prefix",
            "has a control character",
            id="rewrite-path",  # httpx.InvalidURL at every request
        ),
    ],
)
def test_values_the_runtime_cannot_take_are_refused(config: dict[str, Any], path: str, why: str) -> None:
    with pytest.raises(meshlib.ConfigError) as raised:
        meshlib.MeshConfig.from_dict(config)
    [(actual_path, message)] = raised.value.errors
    assert actual_path == path
    assert why in message


def test_the_longest_duration_still_builds() -> None:
    with meshlib.Mesh.from_dict(_cluster(timeout="8760h", health_check={"interval": "8760h"})):
        pass
