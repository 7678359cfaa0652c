"""YAML/JSON file or dict → MeshConfig; every error names its field path."""

from __future__ import annotations

import json
import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from meshlib._config import records
from meshlib._config.base import format_loc, model_at
from meshlib._config.models import MeshConfig, _type_name
from meshlib._config.pydantic_names import ErrorDetails, ValidationError
from meshlib._config.redact import redactor_at
from meshlib._errors import ConfigError

__all__ = ["config_error_from", "config_from_dict", "format_loc", "load_file", "parse_text"]

# Friendlier words for pydantic's most common error types.
_MESSAGES = {
    "missing": "required",
}
_NULL_TAG = "tag:yaml.org,2002:null"


def _message(err: ErrorDetails) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        *where, key = err["loc"]
        model = model_at(MeshConfig, tuple(where))
        return model.unknown_key_message(key) if model else f"unknown key {key!r}"
    if kind == "model_type":  # pydantic says "... or instance of ClusterConfig", a class users never see
        return f"expected a mapping, got {_type_name(err['input'])}"
    if kind == "too_short" and err.get("ctx", {}).get("min_length") == 1:
        return "must not be empty"
    message = _MESSAGES.get(kind, err["msg"]).removeprefix("Value error, ")
    # A message may quote its input: never a credential (errors are logged and shown by the admin's /stats).
    value = err.get("input")
    if isinstance(value, str) and value:
        message = message.replace(repr(value), repr(redactor_at(MeshConfig, tuple(err["loc"]))(value)))
    return message


def _misspelt(errors: list[ErrorDetails]) -> set[tuple[int | str, ...]]:
    """Where a required field is missing only because its key is misspelt (reported as unknown, with the fix)."""
    found: set[tuple[int | str, ...]] = set()
    for err in errors:
        if err["type"] == "extra_forbidden":
            *where, key = err["loc"]
            model = model_at(MeshConfig, tuple(where))
            meant = model.suggested_field(key) if model else None
            if meant is not None:
                found.add((*where, meant))
    return found


def config_error_from(exc: ValidationError, *, source: str | None = None) -> ConfigError:
    """Turn pydantic's errors into one ConfigError with a ``path: message`` pair each."""
    details = exc.errors(include_url=False)
    misspelt = _misspelt(details)
    errors = [
        (format_loc(err["loc"]), _message(err))
        for err in details
        if not (err["type"] == "missing" and tuple(err["loc"]) in misspelt)
    ]
    return ConfigError(errors, source=source)


def config_from_dict(data: Any, *, source: str | None = None) -> MeshConfig:
    """Validate ``data`` (parsed YAML/JSON) as a MeshConfig; raises :class:`ConfigError`."""
    if records.ACTIVE:  # a serving process without pydantic: validated by a child process
        from meshlib._config import offload

        return offload.call(config_from_dict, data, source=source)
    if not isinstance(data, dict):
        raise ConfigError([("", f"the config must be a mapping, got {_type_name(data)}")], source=source)
    try:
        return MeshConfig.model_validate(data)
    except ConfigError as exc:  # MeshConfig.__init__ already turned pydantic's errors into ours
        raise ConfigError(exc.errors, source=source) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
    # Only keys written in this mapping must be unique: keys it writes over a merge (<<: *base) win, as in YAML.
    written: set[Hashable] = set()
    for key_node, _ in node.value:
        where = f"line {key_node.start_mark.line + 1}, column {key_node.start_mark.column + 1}"
        key = "<<" if key_node.tag == "tag:yaml.org,2002:merge" else loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            raise ConfigError([("", f"a mapping key cannot be a list or a mapping, at {where}")])
        if key in written:
            raise ConfigError([("", f"duplicate key {key!r} at {where}")])
        written.add(key)
    loader.flatten_mapping(node)
    return {loader.construct_object(k, deep=deep): loader.construct_object(v, deep=deep) for k, v in node.value}


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _unique_json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError([("", f"duplicate key {key!r}")])
        out[key] = value
    return out


def _json_duplicate(text: str, error: ConfigError) -> ConfigError:
    """The json module gives no position, so find the duplicate's line with the YAML loader (JSON is YAML)."""
    try:
        yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as located:
        return located
    except yaml.YAMLError:  # the rare JSON PyYAML can't read: keep the message without a position
        pass
    return error


def parse_text(text: str, *, source: str | None = None, fmt: str | None = None) -> Any:
    """Parse YAML (the default) or JSON text, refusing duplicate keys."""
    try:
        if fmt == "json":
            try:
                return json.loads(text, object_pairs_hook=_unique_json_object)
            except ConfigError as exc:
                raise _json_duplicate(text, exc) from None
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(exc.errors, source=source) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [("", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")], source=source
        ) from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([("", _yaml_message(exc))], source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"invalid YAML: {exc}")], source=source) from None


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    """``invalid YAML at line 3, column 5: PROBLEM (CONTEXT)``, in the same shape as the JSON errors."""
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = exc.problem or exc.context or "unreadable"
    context = f" ({exc.context})" if exc.problem and exc.context else ""
    return f"invalid YAML{where}: {problem}{context}"


def load_file(path: str | os.PathLike[str]) -> MeshConfig:
    """Read a ``.yaml``/``.yml``/``.json`` file into a MeshConfig; raises :class:`ConfigError`."""
    if records.ACTIVE:
        from meshlib._config import offload

        return offload.call(load_file, path)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")  # -sig: a leading byte-order mark is dropped, not parsed
    except OSError as exc:
        raise ConfigError([("", f"cannot read config file: {exc.strerror or exc}")], source=str(file)) from None
    except UnicodeDecodeError as exc:
        message = f"config file is not UTF-8: {exc.reason} at byte {exc.start}"
        raise ConfigError([("", message)], source=str(file)) from None
    fmt = "json" if file.suffix.lower() == ".json" else None
    data = parse_text(text, source=str(file), fmt=fmt)
    if data is None and fmt is None and _empty_yaml(text):
        raise ConfigError([("", "the config file is empty")], source=str(file))
    return config_from_dict(data, source=str(file))


def _empty_yaml(text: str) -> bool:
    """Whether YAML ``text`` has no content (blank, comments, a bare ``---``), not even an explicit ``null``."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)  # parsed already: this cannot fail
    return node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG and node.value == "")
