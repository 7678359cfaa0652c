"""The mypyc build (hatch_build.py): what it compiles, that it falls back to pure Python, and which mode runs."""

from __future__ import annotations

import ast
import importlib
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
hatch_build = importlib.import_module("hatch_build")
sys.path.remove(str(ROOT))


def _pyproject() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def test_the_configured_modules_exist_and_are_meshlib_modules() -> None:
    modules = hatch_build.configured_modules()
    assert len(modules) >= 40
    assert len(set(modules)) == len(modules)
    for module in modules:
        path = ROOT / module
        assert path.is_file(), module
        assert module.startswith("meshlib/")
        assert module.endswith(".py")
        assert path.name != "__init__.py"


@pytest.mark.parametrize("module", hatch_build.configured_modules())
def test_a_compiled_module_has_nothing_mypyc_cannot_compile(module: str) -> None:
    """What broke the build, the import or the errors once: async generators, a module-level ``__getattr__``,
    ``raise ... from``."""
    tree = ast.parse((ROOT / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncFunctionDef):
            yields = [n for n in ast.walk(node) if isinstance(n, ast.Yield | ast.YieldFrom)]
            assert not yields, f"{module}:{node.lineno}: {node.name} is an async generator"
        # mypyc drops the "from" of "raise ... from ...": meshlib._errors.chained sets the cause instead.
        assert not (isinstance(node, ast.Raise) and node.cause is not None), f"{module}:{node.lineno}: raise ... from"
    top_level = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "__getattr__" not in top_level, f"{module} has a module-level __getattr__"
    # A compiled dataclass's annotations are built at import, a field typed with a plain class as that class
    # (a union or a generic as `type` or its origin): a class imported for type checking only is not there then (a
    # compiled one is a null pointer: CallContext's import crashed).
    checking_only = _type_checking_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in node.decorator_list):
            for field in node.body:
                if isinstance(field, ast.AnnAssign) and isinstance(field.annotation, ast.Name):
                    assert field.annotation.id not in checking_only, (
                        f"{module}:{field.lineno}: dataclass {node.name} has a field of type {field.annotation.id}, "
                        "imported for type checking only"
                    )


def _type_checking_names(tree: ast.Module) -> set[str]:
    """The names a module imports under ``if TYPE_CHECKING:``."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for child in ast.walk(node):
                if isinstance(child, ast.Import | ast.ImportFrom):
                    names.update((alias.asname or alias.name).split(".")[0] for alias in child.names)
    return names


def test_the_build_dependencies_are_the_compile_extra() -> None:
    project = _pyproject()
    hook = project["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]  # type: ignore[index]
    extra = project["project"]["optional-dependencies"]["compile"]  # type: ignore[index]
    assert hook["dependencies"] == extra
    assert hook["require-runtime-dependencies"] is True  # mypy types the code against httpx, pydantic, …


def test_no_c_compiler_means_no_compiled_modules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(hatch_build.NoCompilerError, match="no C compiler: '/nonexistent/cc' is not on PATH"):
        hatch_build.compile_modules(ROOT, hatch_build.configured_modules(), tmp_path / "work")
    assert not (tmp_path / "work").exists()  # it stopped before mypy ran


def _hook(target_name: str = "wheel") -> Any:
    """The hook without hatchling's constructor: the attributes ``initialize`` reads, as class attributes (they
    are read-only properties of hatchling's base class, where hatchling is installed)."""
    attributes = {
        "__init__": lambda self: None,
        "target_name": target_name,
        "root": str(ROOT),
        "config": {"modules": hatch_build.configured_modules()},
    }
    return type("Hook", (hatch_build.CustomBuildHook,), attributes)()


def _build_data() -> dict[str, object]:
    return {"force_include": {}, "pure_python": True, "infer_tag": False}


@pytest.mark.parametrize(
    ("mode", "version", "target"),
    [("0", "standard", "wheel"), ("auto", "editable", "wheel"), ("1", "standard", "sdist")],
)
def test_pure_python_when_asked_for_an_editable_install_and_in_an_sdist(
    monkeypatch: pytest.MonkeyPatch, mode: str, version: str, target: str
) -> None:
    monkeypatch.setenv("MESHLIB_MYPYC", mode)
    monkeypatch.setattr(hatch_build, "compile_modules", _must_not_compile)
    data = _build_data()
    _hook(target).initialize(version, data)
    assert data == _build_data()


def _must_not_compile(*args: object) -> list[tuple[Path, str]]:
    raise AssertionError("compiled")


def test_auto_falls_back_to_pure_python_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHLIB_MYPYC", "auto")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    data = _build_data()
    with pytest.warns(UserWarning, match=r"meshlib: building pure Python \(no C compiler"):
        _hook().initialize("standard", data)
    assert data == _build_data()


def test_mode_1_fails_the_build_without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHLIB_MYPYC", "1")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(hatch_build.NoCompilerError):
        _hook().initialize("standard", _build_data())


def test_a_bad_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHLIB_MYPYC", "yes")
    with pytest.raises(ValueError, match="MESHLIB_MYPYC must be auto, 0 or 1, not 'yes'"):
        _hook().initialize("standard", _build_data())


def test_compiled_modules_go_into_the_wheel_which_is_then_platform_specific(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    built = [(tmp_path / "server.so", "meshlib/_sidecar/server.so"), (tmp_path / "g.so", "meshlib__mypyc.so")]
    monkeypatch.setenv("MESHLIB_MYPYC", "auto")
    monkeypatch.setattr(hatch_build, "compile_modules", lambda root, modules, work: built)
    data = _build_data()
    _hook().initialize("standard", data)
    assert data == {
        "force_include": {str(path): target for path, target in built},
        "pure_python": False,
        "infer_tag": True,
    }


def test_the_script_refuses_unknown_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert hatch_build.main(["--bogus"]) == 2
    assert "python hatch_build.py --inplace" in capsys.readouterr().err


def test_no_module_that_defines_a_public_name_is_compiled() -> None:
    """mypyc keeps no docstrings and no annotations: what users read with help() stays interpreted."""
    import meshlib
    import meshlib.asgi
    import meshlib.testing
    import meshlib.wsgi

    compiled = {module.removesuffix(".py").replace("/", ".") for module in hatch_build.configured_modules()}
    for namespace in (meshlib, meshlib.asgi, meshlib.wsgi, meshlib.testing):
        for name in namespace.__all__:
            defined_in = getattr(getattr(namespace, name), "__module__", None)
            assert defined_in not in compiled, f"{namespace.__name__}.{name} is defined in {defined_in}"


def test_meshlib_says_whether_it_runs_compiled() -> None:
    import meshlib._sidecar.server as server
    from meshlib._cli import build_kind

    compiled = server.__file__ is not None and server.__file__.endswith(hatch_build.EXT_SUFFIX)
    assert build_kind() == ("compiled with mypyc" if compiled else "pure Python")
