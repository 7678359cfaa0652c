"""Validation in a child process, for a serving process whose config models are records (no pydantic).

:func:`call` runs a loading function (``load_settled``, ``config_from_dict``,
the proxy's first load) in a fresh interpreter with this one's import path,
where the config models are pydantic's, and returns its result, unpickled
here into records. A config it returns (a :class:`MeshConfig`, alone or in a
tuple) comes with its JSON dump and the redacted one, made there (the
snapshot's digest and the admin's ``/config_dump`` read them). An exception
it raises is raised here: a :class:`ConfigError` as it was, anything else as
itself when it pickles, else as a :class:`RuntimeError` naming it.

The child reads the call from its stdin and writes the answer to its stdout
(both pickles); what the function prints goes to stderr, which it shares
with the proxy, so an error it prints reads as it would in one process.
Each call starts an interpreter that imports pydantic and validates from
scratch: a reload of the benchmark's config takes about 0.4 s (4 ms in a
process that keeps pydantic), none of it in the serving process. The first
load runs while the serving process imports the rest (:func:`start`, then
:func:`finish`).
"""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["call", "finish", "main", "start"]

T = TypeVar("T")


# The child: this process's import path first (the same packages, whatever its working directory holds), then
# the call. -P: nothing is put before that path.
_CHILD = (
    "import pickle, sys; sys.path[:] = pickle.load(sys.stdin.buffer); from meshlib._config.offload import main; main()"
)


def start(function: Callable[..., Any], *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``function(*args, **kwargs)`` in a child interpreter; :func:`finish` waits for its result."""
    child = subprocess.Popen([sys.executable, "-P", "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None
    try:
        child.stdin.write(pickle.dumps(sys.path, protocol=5))
        child.stdin.write(pickle.dumps((function.__module__, function.__qualname__, args, kwargs), protocol=5))
        child.stdin.close()
    except BrokenPipeError:  # it died at start: finish() says so
        pass
    return child


def finish(child: subprocess.Popen[bytes]) -> Any:
    """The result of the call ``child`` runs (see :func:`start`), or its exception raised here."""
    from meshlib._config import records

    assert child.stdout is not None
    with child.stdout:
        output = child.stdout.read()
    child.wait()
    try:
        answer = pickle.loads(output)
    except Exception:
        raise RuntimeError(f"the config validation process failed (exit code {child.returncode})") from None
    kind, value, dumps = answer
    if kind == "raised":
        raise value
    if records.ACTIVE:  # a pydantic model (a process that validates itself) dumps itself
        for index, (dump, redacted) in dumps.items():
            records.attach_dumps(value if index is None else value[index], dump, redacted)
    return value


def call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` run in a child interpreter with pydantic; see the module's docstring."""
    result: T = finish(start(function, *args, **kwargs))
    return result


def _dumps(value: object) -> dict[int | None, tuple[dict[str, Any], dict[str, Any]]]:
    """The dumps of the configs in a result: the result itself (key None) or a tuple's items (their index)."""
    from meshlib._config.models import MeshConfig
    from meshlib._config.redact import redact_config

    def both(config: MeshConfig) -> tuple[dict[str, Any], dict[str, Any]]:
        return config.model_dump(mode="json", by_alias=True), redact_config(config)

    if isinstance(value, MeshConfig):
        return {None: both(value)}
    if isinstance(value, tuple):
        return {i: both(item) for i, item in enumerate(value) if isinstance(item, MeshConfig)}
    return {}


def _raised(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a RuntimeError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def main() -> None:
    """The child (after ``_CHILD`` set its import path): read a call from stdin, run it, answer on stdout."""
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # what the function prints reads as the proxy's own lines
    module, name, args, kwargs = pickle.load(sys.stdin.buffer)
    function: Any = importlib.import_module(module)
    for part in name.split("."):
        function = getattr(function, part)
    try:
        value = function(*args, **kwargs)
        answer: tuple[str, Any, Any] = ("returned", value, _dumps(value))
    except Exception as exc:
        answer = ("raised", _raised(exc), {})
    try:
        out.write(pickle.dumps(answer, protocol=5))
        out.flush()
    except BrokenPipeError:  # the proxy is gone (stopped while starting): nobody to answer
        pass
