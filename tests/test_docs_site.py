"""The documentation site: the configuration reference is generated from the current models, and the site builds.

docs/reference/config.md is written by docs/gen_config_reference.py from meshlib.MeshConfig and the models
under it; the committed file must be what the script writes now, so that adding or changing a config key
without regenerating fails here. The MkDocs build (``mkdocs build --strict``: no broken link or anchor, every
page in the nav) runs when MkDocs is installed (``pip install -e '.[docs]'``; ``nox -s docs`` runs it too).
"""

from __future__ import annotations

import difflib
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from meshlib import MeshConfig

REPO = Path(__file__).resolve().parents[1]
REGENERATE = "python docs/gen_config_reference.py"


def _load(name: str) -> ModuleType:
    """A script of docs/ as a module (docs/ is no package: MkDocs serves it)."""
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", REPO / "docs" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return _load("gen_config_reference")


def test_the_config_reference_is_generated_from_the_current_models(generator: ModuleType) -> None:
    expected: str = generator.render()
    current = (REPO / "docs" / "reference" / "config.md").read_text(encoding="utf-8")
    if current != expected:
        diff = difflib.unified_diff(
            current.splitlines(keepends=True), expected.splitlines(keepends=True), "committed", "generated", n=1
        )
        shown = "".join(list(diff)[:80])
        pytest.fail(
            "docs/reference/config.md is out of date with the config models (meshlib/_config/): run\n\n"
            f"    {REGENERATE}\n\nand commit the result. A new key is documented by its"
            " Field(description=...), or in the script's DESCRIPTIONS. The difference:\n\n" + shown,
            pytrace=False,
        )


def test_the_check_command_agrees(generator: ModuleType) -> None:
    """`python docs/gen_config_reference.py --check` (what `nox -s docs` runs) passes on the committed file."""
    done = subprocess.run(
        [sys.executable, "docs/gen_config_reference.py", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_xds_feature_table_is_what_the_translation_says() -> None:
    """docs/xds.md's field-by-field table is rendered from meshlib/_xds/translate_features.py's FEATURES."""
    pytest.importorskip("envoy.config.cluster.v3.cluster_pb2")
    done = subprocess.run(
        [sys.executable, "docs/gen_xds_features.py", "--check"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _schema_keys(schema: dict[str, Any]) -> dict[str, set[str]]:
    """Model title → its keys, for every object model in a JSON Schema's ``$defs`` and the root."""
    found: dict[str, set[str]] = {}
    for node in [schema, *schema.get("$defs", {}).values()]:
        for candidate in [node, *node.get("anyOf", [])]:
            if "properties" in candidate:
                found[candidate["title"]] = set(candidate["properties"])
    return found


def test_every_model_and_key_of_the_json_schema_has_its_row(generator: ModuleType) -> None:
    """A check that does not go through the generator's own walk: what `meshlib schema` prints is all there."""
    page = generator.render()
    sections = {section.model.__name__: section for section in generator.sections()}
    for title, keys in _schema_keys(MeshConfig.model_json_schema()).items():
        assert title in sections, f"{title} has no section"
        heading = "## Top level" if title == "MeshConfig" else f"## `{sections[title].path}`"
        body = page.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
        for key in keys:
            assert f"| `{key}` |" in body, f"{title}.{key} is missing from {heading}"


def test_a_stale_description_stops_the_generator(generator: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(generator.DESCRIPTIONS, "RetryConfig.retries", "renamed since")
    with pytest.raises(SystemExit, match=r"DESCRIPTIONS\['RetryConfig.retries'\]"):
        generator.render()


def test_links_to_repository_files_point_at_their_copies_in_the_site() -> None:
    hooks = _load("site_hooks")
    page = "[a](../examples/fastapi_app) [b](../benchmarks/README.md#x) [c](../nowhere/x.md) [d](../README.md)"
    taken = hooks.take_repository_files(REPO, [("docs/index.md", page)], [])
    assert {"examples/fastapi_app/README.md", "benchmarks/README.md"} <= taken
    assert not {"nowhere/x.md", "README.md"} & taken  # not there; a top-level file would land among the pages
    hooks._taken.update(taken)
    assert hooks.site_target("../examples/fastapi_app", "index.md") == "examples/fastapi_app/README.md"
    assert hooks.site_target("../../benchmarks/README.md#x", "cookbook/index.md") == "../benchmarks/README.md#x"
    assert hooks.site_target("../../docs/security.md#jwt", "examples/fastapi_app/README.md") == "../../security.md#jwt"
    assert hooks.site_target("routing.md#1-matching-a-route", "resilience.md") == "routing.md#1-matching-a-route"
    assert hooks.site_target("https://example.org/x", "index.md") == "https://example.org/x"
    assert hooks.site_target("../nowhere/x.md", "index.md") == "../nowhere/x.md"  # MkDocs reports it
    fenced = "```md\n[x](../examples/fastapi_app)\n```\n"
    assert hooks.rewrite_links(fenced, "index.md") == fenced


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
    assert (tmp_path / "site" / "examples" / "fastapi_app" / "index.html").is_file()
