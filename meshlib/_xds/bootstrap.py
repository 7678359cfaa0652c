"""The gRPC xDS bootstrap (gRFC A27): where the control plane is, how to reach it, and who this node is.

Read exactly as gRPC reads it: the file that ``xds.bootstrap`` names, else
the file named by ``GRPC_XDS_BOOTSTRAP``, else the JSON in
``GRPC_XDS_BOOTSTRAP_CONFIG``. Istio's agent writes this file for proxyless
workloads. Every problem is a :class:`meshlib.ConfigError` at ``xds.bootstrap``
that names the file (or variable) and the JSON path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshlib._errors import ConfigError

__all__ = ["Bootstrap", "ChannelCreds", "XdsServer", "load_bootstrap"]

ENV_FILE = "GRPC_XDS_BOOTSTRAP"
ENV_CONFIG = "GRPC_XDS_BOOTSTRAP_CONFIG"
# Channel credential types meshlib can use, as gRPC names them; the first one of these in the list is used.
_CRED_TYPES = ("insecure", "tls")


@dataclass(frozen=True)
class ChannelCreds:
    """``insecure``, or ``tls`` with gRPC's file-watcher style config (every file optional)."""

    type: str
    ca_certificate_file: str | None = None
    certificate_file: str | None = None
    private_key_file: str | None = None


@dataclass(frozen=True)
class XdsServer:
    """One ``xds_servers`` entry: a gRPC target (``host:port``, ``dns:///…``, ``unix:///…``) and its credentials."""

    server_uri: str
    creds: ChannelCreds
    server_features: tuple[str, ...] = ()

    @property
    def ignore_resource_deletion(self) -> bool:
        """gRFC A53: a Listener or Cluster missing from a response is kept, not deleted."""
        return "ignore_resource_deletion" in self.server_features


@dataclass(frozen=True)
class Bootstrap:
    """What meshlib uses of a bootstrap: the first server, the node, and the certificate providers."""

    server: XdsServer
    node: Mapping[str, Any]
    certificate_providers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str = ""


def load_bootstrap(path: str | None) -> Bootstrap:
    """The bootstrap at ``path``, or from the environment when ``path`` is None."""
    if path is not None:
        return parse_bootstrap(_read(path, path), path)
    env_path = os.environ.get(ENV_FILE)
    if env_path:
        return parse_bootstrap(_read(env_path, f"{env_path} (from {ENV_FILE})"), f"{env_path} (from {ENV_FILE})")
    inline = os.environ.get(ENV_CONFIG)
    if inline:
        return parse_bootstrap(inline, ENV_CONFIG)
    raise _error("", f"no bootstrap: set xds.bootstrap, or {ENV_FILE} (a file) or {ENV_CONFIG} (the JSON)")


def _read(path: str, source: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise _error("", f"cannot read the bootstrap file {source}: {exc.strerror or exc}") from None


def _error(where: str, message: str, source: str = "") -> ConfigError:
    text = f"{source}: {where}: {message}" if where else (f"{source}: {message}" if source else message)
    return ConfigError([("xds.bootstrap", text)])


def parse_bootstrap(text: str, source: str) -> Bootstrap:
    """Parse and check a bootstrap's JSON text (``source`` names it in errors)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise _error("", f"not valid JSON: {exc}", source) from None
    if not isinstance(data, dict):
        raise _error("", "must be a JSON object", source)
    servers = data.get("xds_servers")
    if not isinstance(servers, list) or not servers:
        raise _error("xds_servers", "must be a non-empty list", source)
    server = _server(servers[0], "xds_servers[0]", source)
    node = data.get("node", {})
    if not isinstance(node, dict):
        raise _error("node", "must be an object", source)
    for key in ("id", "cluster"):
        if key in node and not isinstance(node[key], str):
            raise _error(f"node.{key}", "must be a string", source)
    for key in ("metadata", "locality"):
        if key in node and not isinstance(node[key], dict):
            raise _error(f"node.{key}", "must be an object", source)
    providers = data.get("certificate_providers", {})
    if not isinstance(providers, dict) or not all(isinstance(v, dict) for v in providers.values()):
        raise _error("certificate_providers", "must map instance names to objects", source)
    for name, provider in providers.items():
        if provider.get("plugin_name") != "file_watcher":
            message = f"plugin {provider.get('plugin_name')!r} is not supported (only file_watcher)"
            raise _error(f"certificate_providers.{name}.plugin_name", message, source)
        if not isinstance(provider.get("config", {}), dict):
            raise _error(f"certificate_providers.{name}.config", "must be an object", source)
    return Bootstrap(server=server, node=node, certificate_providers=providers, source=source)


def _server(entry: object, where: str, source: str) -> XdsServer:
    if not isinstance(entry, dict):
        raise _error(where, "must be an object", source)
    uri = entry.get("server_uri")
    if not isinstance(uri, str) or not uri:
        raise _error(f"{where}.server_uri", "must be a non-empty string", source)
    creds_list = entry.get("channel_creds")
    if not isinstance(creds_list, list) or not creds_list:
        raise _error(f"{where}.channel_creds", "must be a non-empty list", source)
    creds = None
    for i, cred in enumerate(creds_list):
        if not isinstance(cred, dict) or not isinstance(cred.get("type"), str):
            raise _error(f"{where}.channel_creds[{i}]", "must be an object with a 'type'", source)
        if cred["type"] in _CRED_TYPES:
            creds = _creds(cred, f"{where}.channel_creds[{i}]", source)
            break
    if creds is None:
        types = [c["type"] for c in creds_list]
        raise _error(f"{where}.channel_creds", f"none of {types} is supported (insecure, tls)", source)
    features = entry.get("server_features", [])
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise _error(f"{where}.server_features", "must be a list of strings", source)
    return XdsServer(server_uri=uri, creds=creds, server_features=tuple(features))


def _creds(cred: dict[str, Any], where: str, source: str) -> ChannelCreds:
    config = cred.get("config", {})
    if not isinstance(config, dict):
        raise _error(f"{where}.config", "must be an object", source)
    files = {}
    for key in ("ca_certificate_file", "certificate_file", "private_key_file"):
        value = config.get(key)
        if value is not None and not isinstance(value, str):
            raise _error(f"{where}.config.{key}", "must be a string", source)
        files[key] = value
    if (files["certificate_file"] is None) != (files["private_key_file"] is None):
        raise _error(f"{where}.config", "certificate_file and private_key_file go together", source)
    return ChannelCreds(type=cred["type"], **files)
