"""A file's config with what xDS says: the control plane's clusters and routes beside the file's own."""

from __future__ import annotations

from typing import Any

from meshlib._config.models import ClusterConfig, MeshConfig, RouteConfig
from meshlib._errors import ConfigError

__all__ = ["with_xds"]


def with_xds(config: MeshConfig, translated: dict[str, Any]) -> MeshConfig:
    """``config`` plus the translated ``clusters`` and ``routes`` (ConfigError: the translation is invalid).

    xDS routes come first: each names the exact authority of its listener, so a
    file's routes still claim every other request. A file cluster and an xDS
    cluster of the same name is an error, not a silent override.
    """
    clusters = translated.get("clusters", {})
    routes = translated.get("routes", [])
    if not clusters and not routes:
        return config
    part = MeshConfig.from_dict({"clusters": clusters, "routes": routes, "allow_empty": True}, source="xDS")
    clashes = sorted(set(part.clusters) & set(config.clusters))
    if clashes:
        raise ConfigError([(f"clusters.{name}", "defined by the file and by xDS") for name in clashes], source="xDS")
    merged_clusters: dict[str, ClusterConfig] = {**part.clusters, **config.clusters}
    merged_routes: list[RouteConfig] = [*part.routes, *config.routes]
    return config.model_copy(update={"clusters": merged_clusters, "routes": merged_routes})
