"""The ``meshlib validate`` and ``meshlib schema`` commands: output, exit codes and the schema's contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]  # stubs: types-jsonschema
import pytest
import yaml

from meshlib._cli import main

EXAMPLE = Path(__file__).parent / "config" / "issue_example.yaml"
GOOD = "clusters:\n  ratings:\n    endpoints: [http://127.0.0.1:9090]\n"
BAD = GOOD + "routes:\n  - cluster: ratings\n  - cluster: reviews\n"
BAD_LINE = "  routes[1].cluster: unknown cluster 'reviews'"


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _issue_example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    return data


def test_validate_a_good_file_prints_ok_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    # The issue's example loads, with a warning: its maintenance route comes after one taking every reviews request.
    shadowed = (
        "warning: routes[2]: never matches: every request it matches is taken first by routes[1] ('reviews-canary')"
    )
    assert (out, err) == ("ok\n", shadowed + "\n")


def test_validate_a_good_json_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "mesh.json", json.dumps(_issue_example()))
    assert main(["validate", path]) == 0
    assert capsys.readouterr().out == "ok\n"


def test_validate_a_bad_file_prints_each_error_path_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "mesh.yaml", BAD)
    assert main(["validate", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"invalid mesh config in {path}:", BAD_LINE]


def test_validate_the_issue_example_broken_as_the_issue_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _issue_example()
    data["routes"][1]["split"][0]["cluster"] = "reviews-v3"
    path = _write(tmp_path, "mesh.yaml", yaml.safe_dump(data))
    assert main(["validate", path]) == 2
    assert "  routes[1].split[0].cluster: unknown cluster 'reviews-v3'" in capsys.readouterr().err.splitlines()


def test_validate_several_good_files_names_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _write(tmp_path, "a.yaml", GOOD), _write(tmp_path, "b.json", '{"service": "b", "allow_empty": true}')
    assert main(["validate", a, b]) == 0
    assert capsys.readouterr() == (f"{a}: ok\n{b}: ok\n", "")


def test_validate_checks_every_file_even_after_a_bad_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad, good, broken = (
        _write(tmp_path, "bad.yaml", BAD),
        _write(tmp_path, "good.yaml", GOOD),
        _write(tmp_path, "broken.json", "{"),
    )
    assert main(["validate", bad, good, broken]) == 2
    out, err = capsys.readouterr()
    assert out == f"{good}: ok\n"
    assert err.splitlines() == [
        f"invalid mesh config in {bad}:",
        BAD_LINE,
        f"invalid mesh config in {broken}:",
        "  invalid JSON at line 1, column 2: Expecting property name enclosed in double quotes",
    ]


def test_validate_a_missing_file_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "missing.yaml")
    assert main(["validate", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"invalid mesh config in {path}:\n  cannot read config file: No such file or directory\n"


def test_validate_with_no_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["validate"])
    assert info.value.code == 2
    assert "the following arguments are required: config" in capsys.readouterr().err


def _schema(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["schema"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    schema: dict[str, Any] = json.loads(out)
    return schema


def test_schema_prints_a_valid_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    schema = _schema(capsys)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == "MeshConfig"
    assert schema["additionalProperties"] is False
    expected = {
        "service",
        "outbound_policy",
        "clusters",
        "routes",
        "sidecar",
        "inbound",
        "allow_empty",
        "tracing",
        "metrics",
        "access_log",
        "registry",
        "config_source",
        "xds",
    }
    assert set(schema["properties"]) == expected


def test_schema_accepts_the_issue_example_with_its_shorthands(capsys: pytest.CaptureFixture[str]) -> None:
    """Endpoint URLs as plain strings, string matches as plain strings and a single method are all in the schema."""
    validator = jsonschema.Draft202012Validator(_schema(capsys))
    data = _issue_example()
    assert list(validator.iter_errors(data)) == []
    data["routes"][0]["match"]["method"] = "GET"
    data["routes"][0]["match"]["headers"]["x-user"] = "alice"
    assert list(validator.iter_errors(data)) == []


@pytest.mark.parametrize(
    ("change", "where"),
    [
        pytest.param(lambda d: d.update(bogus=1), [], id="unknown-top-level-key"),
        pytest.param(
            lambda d: d["clusters"]["ratings"].update(weight=1), ["clusters", "ratings"], id="unknown-cluster-key"
        ),
        pytest.param(lambda d: d.update(outbound_policy="deny"), ["outbound_policy"], id="unknown-outbound-policy"),
        # The schema's anyOf (a list or null) reports at the list, not at the leg.
        pytest.param(
            lambda d: d["routes"][1]["split"][0].update(weight=0), ["routes", 1, "split"], id="split-weight-0"
        ),
        pytest.param(lambda d: d["clusters"].update({"reviews v3": {}}), ["clusters"], id="bad-cluster-name"),
    ],
)
def test_schema_rejects_what_validate_rejects(
    capsys: pytest.CaptureFixture[str], change: Any, where: list[Any]
) -> None:
    validator = jsonschema.Draft202012Validator(_schema(capsys))
    data = _issue_example()
    change(data)
    errors = list(validator.iter_errors(data))
    assert [list(error.absolute_path) for error in errors] == [where]


def test_python_m_meshlib_validate_runs_and_exits_with_the_right_code(tmp_path: Path) -> None:
    good, bad = _write(tmp_path, "good.yaml", GOOD), _write(tmp_path, "bad.yaml", BAD)
    result = subprocess.run(
        [sys.executable, "-m", "meshlib", "validate", good, bad],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == f"{good}: ok\n"
    assert result.stderr.splitlines() == [f"invalid mesh config in {bad}:", BAD_LINE]


def test_validate_refuses_an_access_log_path_that_cannot_take_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = 'clusters: {a: {endpoints: ["http://127.0.0.1:1"]}}\naccess_log: {path: %s}\n'
    missing = _write(tmp_path, "missing.yaml", config % (tmp_path / "no" / "such" / "access.log"))
    directory = _write(tmp_path, "dir.yaml", config % tmp_path)
    fine = _write(tmp_path, "fine.yaml", config % (tmp_path / "access.log"))
    assert main(["validate", missing]) == 2
    assert "access_log.path: cannot open" in capsys.readouterr().err
    assert main(["validate", directory]) == 2
    assert "it is a directory" in capsys.readouterr().err
    assert main(["validate", fine]) == 0
    assert not (tmp_path / "access.log").exists()  # validating creates nothing
