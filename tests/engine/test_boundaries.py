"""Architecture checks: the engine imports no front door, and each stack is built in the order its module documents.

Each level's module says its order in its docstring and builds it
(``route_stack.build_route_stack``, ``cluster_stack.build_leg``,
``endpoint_stack.endpoint_filters``, ``inbound_stack.build_inbound_stack``):
the checks below hand each builder a stand-in for every filter it takes and
compare what it built with the docstring, then check compiled meshes too.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

import meshlib._engine
from meshlib._engine import cluster_stack, endpoint_stack, inbound_stack, route_stack
from meshlib._engine.base import AsyncHandler, Filter, Request, Response, SyncHandler
from meshlib._engine.inbound_context import Denial, InboundContext, InboundFilter
from tests.conftest import MakeMesh

ENGINE_DIR = Path(meshlib._engine.__file__).parent
FORBIDDEN = ("meshlib._frontdoors", "meshlib._sidecar", "meshlib.asgi", "meshlib.wsgi", "meshlib._mesh")


def _imported_modules(source: str, package: str = "meshlib._engine") -> set[str]:
    """Every module ``source`` imports, anywhere in the file (also inside functions and TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against the package
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _forbidden(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)}


ENGINE_MODULES = sorted(ENGINE_DIR.glob("*.py"))


def test_the_engine_package_has_modules_to_check() -> None:
    assert {p.name for p in ENGINE_MODULES} >= {
        "outbound.py",
        "route_stack.py",
        "cluster_stack.py",
        "endpoint_stack.py",
    }


@pytest.mark.parametrize("path", ENGINE_MODULES, ids=lambda p: p.name)
def test_engine_module_imports_no_front_door(path: Path) -> None:
    bad = _forbidden(_imported_modules(path.read_text()))
    assert not bad, f"{path.name} imports {sorted(bad)}: the engine must not know about front doors"


def test_the_import_scan_catches_every_spelling_of_a_forbidden_import() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from meshlib._frontdoors import httpx_transport\n"
        "def f():\n    import meshlib.asgi\n"
        "from .._sidecar import listener\n"
        "from meshlib import wsgi\n"
        "from meshlib._engine import base\n"
    )
    assert _forbidden(_imported_modules(source)) == {
        "meshlib._frontdoors",
        "meshlib._frontdoors.httpx_transport",
        "meshlib.asgi",
        "meshlib._sidecar",
        "meshlib._sidecar.listener",
        "meshlib.wsgi",
    }


def _source(module: ModuleType) -> str:
    """A module's source (its ``__file__`` is an extension module's where it is compiled with mypyc)."""
    assert module.__file__ is not None
    return (Path(module.__file__).parent / (module.__name__.rpartition(".")[2] + ".py")).read_text()


def _doc(module: ModuleType) -> str | None:
    """A module's docstring, read from its source: a module compiled with mypyc has no ``__doc__``."""
    return ast.get_docstring(ast.parse(_source(module)))


def _documented_order(doc: str | None, first: str) -> list[str]:
    """The stages of the ``a → b → c`` line of a module docstring that starts with ``first``."""
    assert doc is not None
    line = next(line.strip() for line in doc.splitlines() if line.strip().startswith(first))
    return [stage.strip() for stage in line.split("→")]


def _slots(builder: Callable[..., Any], annotation: str) -> list[str]:
    """The builder's keyword-only parameters that take a filter (annotated ``annotation``), in signature order.

    Read from the source: a function compiled with mypyc keeps no annotations.
    """
    [found] = [
        node
        for node in ast.parse(_source(sys.modules[builder.__module__])).body
        if isinstance(node, ast.FunctionDef) and node.name == builder.__name__
    ]
    return [
        arg.arg
        for arg in found.args.kwonlyargs
        if arg.annotation is not None and ast.unparse(arg.annotation) == annotation
    ]


class _Stage:
    """A filter that only passes the request on; its class's ``name`` is the builder keyword it was given as."""

    name = "stage"

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        return call_next(request)

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        return await call_next(request)

    def apply(self, ctx: InboundContext) -> Denial | None:
        return None


def _stand_ins(slots: list[str]) -> dict[str, Any]:
    """One stand-in per slot, named after it; passed in reverse so that keyword order cannot be what orders them."""
    return {slot: type(f"_{slot}", (_Stage,), {"name": slot})() for slot in reversed(slots)}


def _names(filters: Any) -> list[str]:
    return [f.name for f in filters]


def test_the_route_builder_builds_the_documented_order() -> None:
    """build_route_stack puts every filter it takes where route_stack.py's docstring says."""
    documented = _documented_order(_doc(route_stack), "Route level:")
    documented[0] = documented[0].removeprefix("Route level:").strip()
    assert documented[-1].startswith("split")
    assert documented[-1].rstrip(".").endswith("or direct response")
    slots = _slots(route_stack.build_route_stack, "Filter | None")
    # The docstring's words for the builder's keywords.
    spelled = {"fault": "fault", "headers": "header edits", "rewrite": "rewrite", "mirror": "mirror"}
    assert set(slots) == set(spelled), "a filter slot of build_route_stack the docstring does not name"
    built = route_stack.build_route_stack({}, **_stand_ins(slots), direct_response=lambda r: httpx.Response(204))
    assert [spelled[name] for name in _names(built.filters)] == documented[:-1]
    assert built.handle(httpx.Request("GET", "http://x/")).status_code == 204


def test_the_leg_and_endpoint_builders_build_the_documented_order(make_mesh: MakeMesh) -> None:
    """build_leg (and endpoint_filters below it) put every filter where cluster_stack.py's docstring says."""
    documented = _documented_order(_doc(cluster_stack), "timeout →")
    pick = documented.index("[pick endpoint]")
    assert documented[-1] == "send"
    slots = _slots(cluster_stack.build_leg, "Filter | None")
    assert slots == [s for s in documented if s not in ("[pick endpoint]", "send")]
    cluster = make_mesh({"clusters": {"a": {"endpoints": ["http://127.0.0.1:9001"]}}}).snapshot.clusters["a"]
    leg = cluster_stack.build_leg(cluster, **_stand_ins(slots))
    assert _names(leg.filters) == documented[:pick]
    assert _names(leg.endpoint_filters) == documented[pick + 1 : -1]
    assert leg.filter_names == slots
    # The endpoint level's own docstring says the same as the leg's, from the pick on.
    endpoint = _documented_order(_doc(endpoint_stack), "Endpoint level:")
    endpoint[0] = endpoint[0].removeprefix("Endpoint level:").strip()
    endpoint[-1] = endpoint[-1].split(",")[0]
    assert endpoint == documented[pick + 1 :]
    endpoint_slots = _slots(endpoint_stack.endpoint_filters, "Filter | None")
    assert _names(endpoint_stack.endpoint_filters(**_stand_ins(endpoint_slots))) == endpoint[:-1]


def test_the_inbound_builder_builds_the_documented_order() -> None:
    """build_inbound_stack puts every filter it takes where inbound_stack.py's docstring says."""
    doc = _doc(inbound_stack)
    assert doc is not None
    line = doc.splitlines()[0].removeprefix("Inbound:").split(";")[0]
    documented = [stage.strip() for stage in line.split("→")]
    spelled = {"normalize": "normalise", "peer_authn": "peer authn (mTLS)", "jwt": "JWT authn", "authz": "authz"}
    slots = [*_slots(inbound_stack.build_inbound_stack, "InboundFilter"), "peer_authn", "jwt", "authz"]
    assert _slots(inbound_stack.build_inbound_stack, "InboundFilter | None") == slots[1:]
    assert set(slots) == set(spelled), "a filter slot of build_inbound_stack the docstring does not name"
    built = inbound_stack.build_inbound_stack(None, trusted=lambda address: False, **_stand_ins(slots))
    assert [spelled[name] for name in built.names] == documented


def test_the_stand_ins_are_filters() -> None:
    stage: Filter = _stand_ins(["x"])["x"]
    inbound: InboundFilter = _stand_ins(["y"])["y"]
    assert (stage.name, inbound.name) == ("x", "y")


def test_route_filters_run_in_the_documented_order(make_mesh: MakeMesh) -> None:
    """route_stack.py documents: fault → header edits → rewrite → mirror → split or direct response."""
    doc = _doc(route_stack)
    assert doc is not None
    assert doc.startswith("Route level: fault → header edits → rewrite → mirror → split")
    mesh = make_mesh(
        {
            "clusters": {"a": {"endpoints": ["http://127.0.0.1:9001"]}, "s": {"endpoints": ["http://127.0.0.1:9002"]}},
            "routes": [
                {
                    "name": "everything",
                    "match": {"host": "e"},
                    "cluster": "a",
                    "mirror": {"cluster": "s"},
                    "rewrite": {"path_prefix": "/"},
                    "headers": {"request": {"set": {"x-a": "1"}}},
                    "fault": {"abort": {"status": 503, "percent": 0}},
                },
                {
                    "name": "full",
                    "match": {"host": "a", "path_prefix": "/api/"},
                    "cluster": "a",
                    "rewrite": {"path_prefix": "/"},
                    "headers": {"request": {"set": {"x-a": "1"}}},
                },
                {"name": "rewrite-only", "match": {"host": "b"}, "cluster": "a", "rewrite": {"host": "x"}},
                {"name": "plain", "match": {"host": "c"}, "cluster": "a"},
                {
                    "name": "direct",
                    "match": {"host": "d"},
                    "direct_response": {"status": 503},
                    "headers": {"response": {"set": {"x-b": "1"}}},
                },
                {
                    "name": "fault-mirror",
                    "match": {"host": "f"},
                    "cluster": "a",
                    "mirror": {"cluster": "s"},
                    "fault": {"delay": {"duration": "1s", "percent": 0}},
                },
            ],
        }
    )
    names = {route.name: [f.name for f in route.filters] for route in mesh.snapshot.routes.routes}
    assert names["everything"] == ["fault", "headers", "rewrite", "mirror"]
    assert names["fault-mirror"] == ["fault", "mirror"]
    assert names["full"] == ["headers", "rewrite"]
    assert names["rewrite-only"] == ["rewrite"]
    assert names["plain"] == []
    assert names["direct"] == ["headers"]
    assert names["cluster:a"] == []


def test_leg_filters_run_in_the_documented_order(make_mesh: MakeMesh) -> None:
    """cluster_stack.py documents the leg: timeout → rate_limit → retry → hedge → circuit_breaker → … → send."""
    documented = _documented_order(_doc(cluster_stack), "timeout →")
    assert documented[0] == "timeout"
    assert documented[-1] == "send"
    every_policy = {
        "endpoints": ["http://127.0.0.1:9001"],
        "timeout": "2s",
        "rate_limit": {"rate": "100/second"},
        "retry": {"attempts": 3, "per_try_timeout": "500ms"},
        "hedge": {"after": "50ms"},
        "circuit_breaker": {},
        "outlier_detection": {},
    }
    mesh = make_mesh(
        {
            "clusters": {"full": every_policy, "bare": {"endpoints": ["http://127.0.0.1:9002"]}},
            "routes": [
                {"name": "to-full", "match": {"host": "full"}, "cluster": "full"},
                # A route's own retry and hedge take the same places as the cluster's would.
                {
                    "name": "hedged",
                    "match": {"host": "bare"},
                    "cluster": "bare",
                    "hedge": {"after": "10ms"},
                    "retry": {"attempts": 2},
                },
            ],
        }
    )
    routes = {route.name: route for route in mesh.snapshot.routes.routes}
    expected = ["timeout", "rate_limit", "retry", "hedge", "circuit_breaker", "outlier", "per_try_timeout"]
    assert [s for s in documented if s not in ("[pick endpoint]", "send")] == expected
    assert routes["to-full"].legs["full"].filter_names == expected
    assert routes["hedged"].legs["bare"].filter_names == ["retry", "hedge"]
    assert routes["cluster:bare"].legs["bare"].filter_names == []
