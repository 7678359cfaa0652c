"""Layering: which of meshlib's subpackages import which, and the cycles between them.

Imports are read from the source (ast), anywhere in a file: at module level,
inside functions (the lazy imports of heavy libraries' users), and under
``if TYPE_CHECKING:``, which are kept apart: they cost nothing at run time
but still tie the packages together for a reader.

The direction the architecture wants (docs/architecture.md) for the pipeline
is config → snapshot → policies → engine: the snapshot compiles config into
policies and hands them to the engine's stack builders; a policy is a filter
built on the engine's currency (base.py, context.py, ...); the engine sees
the snapshot only through protocols of its own (route_stack.Route,
outbound.OutboundSnapshot). Run this file as a script for the whole graph.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import meshlib

ROOT = Path(meshlib.__file__).parent
PACKAGES = sorted(p.parent.name for p in ROOT.glob("_*/__init__.py"))
# module: at import time; function: inside a function or method; type: under TYPE_CHECKING.
KINDS = ("module", "function", "type")
RUNTIME = ("module", "function")

# Cycles between two packages that predate this test, each with the imports that make it one. A new
# one fails test_no_new_cycle_between_packages. Take a cycle off once it is broken, so that it cannot
# come back: running this file as a script lists the ones that are gone.
KNOWN_CYCLES: dict[frozenset[str], str] = {
    frozenset({"_engine", "_observe"}): "_observe/hooks.py imports _engine/streams.py; the stacks import hooks",
    frozenset({"_engine", "_tls"}): "_engine/errors.py imports _tls/identity.py; _tls imports errors, interrupt",
    frozenset({"_engine", "_upstream"}): "cluster_stack imports _upstream's state and lb; outlier.py is a filter",
    frozenset({"_tls", "_upstream"}): "_tls/cluster.py imports _upstream; _upstream/health.py lazily _tls/senders",
    frozenset({"_frontdoors", "_observe"}): "_observe/metrics.py imports _frontdoors/asgi.py; doors import _observe",
}
# Cycles only through imports under TYPE_CHECKING (free at run time, still a knot for a reader).
KNOWN_TYPE_CYCLES: dict[frozenset[str], str] = {
    frozenset({"_observe", "_snapshot"}): "_observe's observers name _snapshot/compile.py's Runtime in their types",
}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, kind: str = "module") -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(node, kind)]
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        return [found for child in node.body for found in _imports(child, "type")] + [
            found for child in node.orelse for found in _imports(child, kind)
        ]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and kind == "module":
        kind = "function"
    return [found for child in ast.iter_child_nodes(node) for found in _imports(child, kind)]


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "meshlib" and len(parts) > 1 and parts[1] in PACKAGES else None


def import_graph() -> dict[tuple[str, str], dict[str, set[str]]]:
    """(importing package, imported package) → kind → the imports (``file: module``) that make the edge."""
    edges: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        source = parts[1] if len(parts) > 2 else None
        if source not in PACKAGES:
            continue
        package = ".".join(parts[:-1])  # what a relative import is relative to
        for node, kind in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                modules = [f"{base}.{alias.name}" for alias in node.names] if base == "meshlib" else [base]
            for module in modules:
                target = _package_of(module)
                if target is not None and target != source:
                    edges[(source, target)][kind].add(f"{path.relative_to(ROOT.parent).as_posix()}: {module}")
    return edges


def _cycles(edges: dict[tuple[str, str], dict[str, set[str]]], kinds: tuple[str, ...]) -> set[frozenset[str]]:
    """The pairs of packages that import each other through imports of ``kinds``."""
    linked = {pair for pair, by_kind in edges.items() if any(by_kind.get(kind) for kind in kinds)}
    return {frozenset(pair) for pair in linked if (pair[1], pair[0]) in linked}


GRAPH = import_graph()


def test_the_scan_sees_the_packages_and_every_kind_of_import() -> None:
    assert {"_engine", "_policies", "_snapshot", "_config", "_frontdoors"} <= set(PACKAGES)
    assert GRAPH[("_snapshot", "_engine")]["module"]
    assert GRAPH[("_snapshot", "_policies")]["function"]  # compile.py's lazy imports (rate_limit, jwks, ...)
    assert GRAPH[("_engine", "_tls")]["type"]


def test_no_new_cycle_between_packages() -> None:
    new = _cycles(GRAPH, RUNTIME) - KNOWN_CYCLES.keys()
    details = {
        "<->".join(sorted(pair)): sorted(
            f"[{kind}] {found}"
            for a, b in (sorted(pair), sorted(pair)[::-1])
            for kind in RUNTIME
            for found in GRAPH[(a, b)].get(kind, ())
        )
        for pair in new
    }
    assert not new, f"packages that now import each other: {details}"


def test_no_new_cycle_through_type_checking_imports() -> None:
    new = _cycles(GRAPH, KINDS) - KNOWN_CYCLES.keys() - KNOWN_TYPE_CYCLES.keys()
    assert not new, f"packages that now import each other for types: {sorted(sorted(pair) for pair in new)}"


def _edge(source: str, target: str) -> dict[str, list[str]]:
    """The imports of ``target`` in ``source``, by kind (empty: none, of any kind)."""
    return {kind: sorted(imports) for kind, imports in GRAPH.get((source, target), {}).items() if imports}


def test_the_engine_does_not_import_the_snapshot() -> None:
    """The snapshot holds compiled stacks; the engine sees it only through its own protocols, even for types."""
    assert _edge("_engine", "_snapshot") == {}


def test_policies_do_not_import_the_snapshot() -> None:
    assert _edge("_policies", "_snapshot") == {}


def test_no_front_door_imports_the_sidecar() -> None:
    """The sidecar wires its listeners to its front door's handlers; what both use lives in the front door
    (``_frontdoors/sidecar_requests.py``)."""
    assert _edge("_frontdoors", "_sidecar") == {}
    assert _edge("_sidecar", "_frontdoors")["module"]


def test_the_engine_imports_no_policy() -> None:
    """Policies build on the engine; the stacks take policies as filters, made by _snapshot/compile.py.

    The timeout errors every layer raises are the engine's own (_engine/timeouts.py).
    """
    assert _edge("_engine", "_policies") == {}


def test_discovery_feeds_the_mesh_and_stays_off_the_request_path() -> None:
    """Discovery hands endpoint URLs and config documents to the mesh, which compiles them; it imports nothing
    a request goes through, and nothing on that path imports it."""
    request_path = ("_engine", "_policies", "_snapshot", "_frontdoors", "_sidecar", "_transport", "_upstream")
    for package in request_path:
        assert _edge("_discovery", package) == {}, package
        assert _edge(package, "_discovery") == {}, package


def test_xds_feeds_the_mesh_and_stays_off_the_request_path() -> None:
    """xDS hands a translated config and endpoints to the mesh, which compiles them; the request path knows
    xDS only through the engine's own ``outbound.LateRoutes`` protocol (the gate first requests wait at)."""
    request_path = ("_engine", "_policies", "_snapshot", "_frontdoors", "_sidecar", "_transport", "_upstream")
    for package in request_path:
        assert _edge("_xds", package) == {}, package
        assert _edge(package, "_xds") == {}, package


def main() -> None:
    """Print the graph: every edge between packages with its imports by kind, then the cycles."""
    verbose = "-v" in sys.argv
    for (source, target), by_kind in sorted(GRAPH.items()):
        counts = ", ".join(f"{kind}={len(by_kind[kind])}" for kind in KINDS if by_kind.get(kind))
        print(f"{source} -> {target}: {counts}")
        if verbose:
            for kind in KINDS:
                for found in sorted(by_kind.get(kind, ())):
                    print(f"    [{kind}] {found}")
    for label, kinds in (("module-level", KINDS[:1]), ("run time", RUNTIME), ("with TYPE_CHECKING", KINDS)):
        print(f"cycles ({label}):", sorted(sorted(pair) for pair in _cycles(GRAPH, kinds)))
    gone = (KNOWN_CYCLES.keys() - _cycles(GRAPH, RUNTIME)) | (KNOWN_TYPE_CYCLES.keys() - _cycles(GRAPH, KINDS))
    print("known cycles that are gone (take them off the lists):", sorted(sorted(pair) for pair in gone))


if __name__ == "__main__":
    main()
