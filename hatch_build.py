"""Compiles meshlib's request path with mypyc when a wheel is built, and falls back to pure Python.

The modules listed under ``[tool.hatch.build.targets.wheel.hooks.custom]``
in pyproject.toml are compiled to C extension modules beside their sources
(an extension module is imported before a ``.py`` of the same name). Where
no C compiler works, the wheel is pure Python with the same behaviour.
``MESHLIB_MYPYC`` chooses: ``auto`` (the default: compile if possible),
``1`` (compile or fail the build) or ``0`` (pure Python). An editable
install (``pip install -e .``) is always pure Python, so edits take effect.

As a script, for running the tests against compiled modules in a checkout:

    python hatch_build.py --inplace   # compile and put the extension modules beside the sources
    python hatch_build.py --clean     # remove them again
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import sysconfig
import tomllib
import warnings
from pathlib import Path
from typing import Any

try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # run as a script, where hatchling need not be installed
    BuildHookInterface = object  # type: ignore[assignment,misc]

ROOT = Path(__file__).resolve().parent
GROUP = "meshlib"  # mypyc names the shared library all compiled modules load their code from meshlib__mypyc
EXT_SUFFIX: str = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


class NoCompilerError(RuntimeError):
    """No working C compiler: the build falls back to pure Python."""


def configured_modules(root: Path = ROOT) -> list[str]:
    """The source files pyproject.toml lists for compiling, relative to ``root``."""
    with open(root / "pyproject.toml", "rb") as f:
        config = tomllib.load(f)
    modules: list[str] = config["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]["modules"]
    return modules


def _check_compiler() -> None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    words = shlex.split(cc)
    if not words or shutil.which(words[0]) is None:
        raise NoCompilerError(f"no C compiler: {cc!r} is not on PATH")
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        raise NoCompilerError(f"no Python headers: {include}/Python.h is missing")


def compile_modules(root: Path, modules: list[str], work: Path) -> list[tuple[Path, str]]:
    """Compile ``modules`` under ``root`` with mypyc in ``work``: (extension file, its path in the package)."""
    _check_compiler()
    from mypyc.build import mypycify  # the build's dependency, imported only when compiling
    from setuptools import Distribution

    lib = work / "lib"
    shutil.rmtree(work, ignore_errors=True)
    cwd = os.getcwd()
    os.chdir(root)  # mypy reads its settings ([tool.mypy]) from pyproject.toml here
    try:
        extensions = mypycify(modules, opt_level="3", group_name=GROUP, multi_file=True, target_dir=str(work / "c"))
        dist = Distribution({"name": "meshlib-compiled", "ext_modules": extensions})
        build_ext: Any = dist.get_command_obj("build_ext")
        build_ext.build_lib = str(lib)
        build_ext.build_temp = str(work / "tmp")
        build_ext.parallel = os.cpu_count() or 1
        dist.run_command("build_ext")
    finally:
        os.chdir(cwd)
    built = [(path, path.relative_to(lib).as_posix()) for path in lib.rglob(f"*{EXT_SUFFIX}")]
    if len(built) != len(modules) + 1:  # one per module, and the group's shared library
        raise RuntimeError(f"mypyc built {len(built)} extension modules for {len(modules)} sources")
    return built


def compiled_in_place(root: Path = ROOT) -> list[Path]:
    """The extension modules ``--inplace`` put into the checkout."""
    return [*root.glob(f"{GROUP}__mypyc*{EXT_SUFFIX}"), *(root / "meshlib").rglob(f"*{EXT_SUFFIX}")]


class CustomBuildHook(BuildHookInterface):  # type: ignore[misc,type-arg]
    """hatchling's build hook: adds the compiled modules to a wheel, or leaves it pure Python."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        mode = os.environ.get("MESHLIB_MYPYC", "auto")
        if mode not in ("auto", "0", "1"):
            raise ValueError(f"MESHLIB_MYPYC must be auto, 0 or 1, not {mode!r}")
        if self.target_name != "wheel" or version == "editable" or mode == "0":
            return
        root = Path(self.root)
        try:
            built = compile_modules(root, self.config["modules"], root / "build" / "mypyc")
        except Exception as exc:
            if mode == "1":
                raise
            warnings.warn(f"meshlib: building pure Python ({exc})", stacklevel=1)
            return
        for path, target in built:
            build_data["force_include"][str(path)] = target
        build_data["pure_python"] = False
        build_data["infer_tag"] = True


def main(argv: list[str]) -> int:
    """``--inplace``: compile into the checkout; ``--clean``: remove what that put there."""
    if argv not in (["--inplace"], ["--clean"]):
        print(__doc__, file=sys.stderr)
        return 2
    for path in compiled_in_place():
        path.unlink()
    if argv == ["--inplace"]:
        for path, target in compile_modules(ROOT, configured_modules(), ROOT / "build" / "mypyc"):
            shutil.copy2(path, ROOT / target)
            print(f"compiled {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
