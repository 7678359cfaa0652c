"""YAML/JSON file or dict → MeshConfig; every error names its field path."""

from __future__ import annotations

import json
import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from meshlib._config.models import MeshConfig
from meshlib._errors import ConfigError

__all__ = ["config_error_from", "config_from_dict", "format_loc", "load_file", "parse_text"]

# Friendlier words for pydantic's most common error types.
_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required",
}


def format_loc(loc: tuple[int | str, ...]) -> str:
    """``("routes", 1, "split", 0, "cluster")`` → ``routes[1].split[0].cluster``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def config_error_from(exc: ValidationError, *, source: str | None = None) -> ConfigError:
    """Turn pydantic's errors into one ConfigError with a ``path: message`` pair each."""
    errors = []
    for err in exc.errors(include_url=False):
        message = _MESSAGES.get(err["type"], err["msg"])
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            message = f"unknown key {err['loc'][-1]!r}"
        errors.append((format_loc(err["loc"]), message))
    return ConfigError(errors, source=source)


def config_from_dict(data: Any, *, source: str | None = None) -> MeshConfig:
    """Validate ``data`` (parsed YAML/JSON) as a MeshConfig; raises :class:`ConfigError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([("", f"the config must be a mapping, got {type(data).__name__}")], source=source)
    try:
        return MeshConfig.model_validate(data)
    except ConfigError as exc:  # MeshConfig.__init__ already turned pydantic's errors into ours
        raise ConfigError(exc.errors, source=source) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Hashable, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            mark = key_node.start_mark
            raise ConfigError([("", f"duplicate key {key!r} at line {mark.line + 1}, column {mark.column + 1}")])
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _unique_json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError([("", f"duplicate key {key!r}")])
        out[key] = value
    return out


def parse_text(text: str, *, source: str | None = None, fmt: str | None = None) -> Any:
    """Parse YAML (the default) or JSON text, refusing duplicate keys."""
    try:
        if fmt == "json":
            return json.loads(text, object_pairs_hook=_unique_json_object)
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(exc.errors, source=source) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [("", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")], source=source
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"invalid YAML: {exc}")], source=source) from None


def load_file(path: str | os.PathLike[str]) -> MeshConfig:
    """Read a ``.yaml``/``.yml``/``.json`` file into a MeshConfig; raises :class:`ConfigError`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read config file: {exc.strerror or exc}")], source=str(file)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([("", f"config file is not UTF-8: {exc.reason}")], source=str(file)) from None
    fmt = "json" if file.suffix.lower() == ".json" else None
    return config_from_dict(parse_text(text, source=str(file), fmt=fmt), source=str(file))
