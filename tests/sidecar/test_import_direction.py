"""Imports between the sidecar and the front doors go one way: ``_sidecar`` → ``_frontdoors``.

The sidecar's process wires its listeners to the sidecar front door's
handlers; what the listener and the handlers share lives in the front door
(``sidecar_requests.py``). Any import counts: at module level, in a function,
under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import meshlib._frontdoors

FRONTDOOR_MODULES = sorted(Path(meshlib._frontdoors.__file__).parent.glob("*.py"))


def _imported(source: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from meshlib._frontdoors
                base = ".".join(["meshlib", "_frontdoors"][: 3 - node.level] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("path", FRONTDOOR_MODULES, ids=lambda p: p.name)
def test_no_front_door_imports_the_sidecar_package(path: Path) -> None:
    bad = sorted(m for m in _imported(path.read_text()) if m == "meshlib._sidecar" or m.startswith("meshlib._sidecar."))
    assert not bad, f"{path.name} imports {bad}: the sidecar imports its front door, not the other way round"


def test_the_scan_sees_every_spelling() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from meshlib._sidecar import server\n"
        "def f():\n    import meshlib._sidecar.tunnel\n"
        "from .._sidecar import http1\n"
        "from meshlib import _sidecar\n"
    )
    found = {m for m in _imported(source) if "_sidecar" in m}
    assert found == {"meshlib._sidecar", "meshlib._sidecar.server", "meshlib._sidecar.tunnel", "meshlib._sidecar.http1"}
