"""The mesh config from an etcd key: the document, how it meets the local file, and the outcome written back.

The key's value is a mesh config document, YAML or JSON text. Its top-level
keys replace the local file's; the keys it leaves out keep the file's values
(so the file can hold the sidecar's listeners), and ``registry`` and
``config_source`` are always the file's: etcd cannot move the mesh off etcd.
Each outcome is written back under ``PREFIX config-status/``, one key per
workload, the way an xDS client ACKs or NACKs: the revision it read, and the
snapshot version it serves or why it refused the document.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from meshlib._config.models import MeshConfig
from meshlib._errors import ConfigError

__all__ = ["LOCAL_ONLY", "STATUS", "effective_config", "instance_id", "parse_document", "status_value"]

# Keys a document from etcd cannot set: they say where the document comes from.
LOCAL_ONLY = ("registry", "config_source")
STATUS = "config-status/"


def parse_document(value: bytes, key: str) -> dict[str, Any]:
    """The mapping in the key's value (YAML or JSON); ConfigError naming the key when it is not one."""
    source = f"etcd key {key}"
    try:
        text = value.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError([("", "the value is not UTF-8 text")], source=source) from None
    from meshlib._config.load import parse_text  # here: YAML, for a config document only

    data = parse_text(text, source=source)
    if not isinstance(data, dict):
        raise ConfigError([("", f"the config must be a mapping, got {type(data).__name__}")], source=source)
    given = [k for k in LOCAL_ONLY if k in data]
    if given:
        message = "is set in the local config file only (it says where this document comes from)"
        raise ConfigError([(k, message) for k in given], source=source)
    return data


def effective_config(local: MeshConfig, document: dict[str, Any] | None, key: str) -> MeshConfig:
    """``local`` with the document's top-level keys in place of its own (raises ConfigError naming the key)."""
    if document is None:
        return local
    from meshlib._config.load import config_from_dict

    base = local.model_dump(mode="json", by_alias=True, exclude_unset=True)
    merged = {k: v for k, v in base.items() if k not in document} | document
    try:
        return config_from_dict(merged, source=f"etcd key {key}")
    except ConfigError:
        raise
    except ValueError as exc:  # pragma: no cover - config_from_dict reports everything as ConfigError
        raise ConfigError([("", str(exc))], source=f"etcd key {key}") from None


def instance_id() -> str:
    """This process's name in status keys: host and pid (the registered address is better when there is one)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def status_value(
    key: str, revision: int, *, version: int | None = None, digest: str | None = None, error: str | None = None
) -> str:
    """The JSON written back for operators: accepted (``version``, ``digest``) or refused (``error``)."""
    doc = {
        "key": key,
        "revision": revision,
        "state": "refused" if error is not None else "accepted",
        "version": version,
        "digest": digest,
        "error": error,
        "time": time.time(),
    }
    return json.dumps(doc, sort_keys=True)
