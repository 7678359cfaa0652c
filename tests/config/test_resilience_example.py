"""The resilience issue's examples load verbatim: a mirror onto an undefined cluster and code-less route retries."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshlib import Mesh, MeshConfig
from meshlib._cli import main
from meshlib._policies.retry import RetryFilter
from tests.conftest import MakeMesh

EXAMPLE = Path(__file__).with_name("resilience_example.yaml")
SHADOW_WARNING = (
    "routes[0].mirror.cluster",
    "mirror cluster 'reviews-shadow' is not defined: nothing is mirrored",
)


def _example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    return data


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_validate_accepts_the_example_and_prints_its_warning(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert out == "ok\n"
    assert err == f"warning: {SHADOW_WARNING[0]}: {SHADOW_WARNING[1]}\n"


def test_the_example_builds_a_mesh_that_logs_the_warning_and_mirrors_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="meshlib.config"), Mesh.from_file(EXAMPLE) as mesh:
        [route] = [r for r in mesh.snapshot.routes.routes if not r.implicit]
        assert "mirror" not in route.filter_names
        assert "fault" in route.filter_names
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("meshlib.config", logging.WARNING, ": ".join(SHADOW_WARNING))
    ]


def test_the_example_with_the_shadow_cluster_defined_has_no_warning(tmp_path: Path, make_mesh: MakeMesh) -> None:
    data = _example()
    data["clusters"]["reviews-shadow"] = {"endpoints": ["http://127.0.0.1:9083"]}
    config = MeshConfig.from_file(_write(tmp_path, data))
    assert config.warnings() == []
    mesh = make_mesh(config)
    [route] = [r for r in mesh.snapshot.routes.routes if not r.implicit]
    assert "mirror" in route.filter_names


def test_the_variant_with_a_codeless_route_retry_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_mesh: MakeMesh
) -> None:
    """``retry: {attempts: 2, retry_on: [retriable-status-codes]}`` on the route takes the cluster's 409."""
    data = _example()
    data["routes"][0]["retry"] = {"attempts": 2, "retry_on": ["retriable-status-codes"]}
    path = _write(tmp_path, data)
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == "ok\n"
    config = MeshConfig.from_file(path)
    assert config.warnings() == [SHADOW_WARNING]
    mesh = make_mesh(config)
    [route] = [r for r in mesh.snapshot.routes.routes if not r.implicit]
    [retry] = [f for f in route.legs["reviews"].filters if isinstance(f, RetryFilter)]
    assert retry.policy.statuses == frozenset({409})
