"""What a config holds, as plain JSON: compares a pydantic model and the record a serving process made of it.

Imports nothing of meshlib at import, so a process can load it before it switches the config models to records.
"""

from __future__ import annotations

from typing import Any


def shape(value: Any) -> Any:
    """``value`` as JSON: a model (pydantic's or a record) by class, fields given and every field's shape."""
    fields = getattr(type(value), "model_fields", None)
    if fields is not None and not isinstance(value, type):
        return {
            "class": f"{type(value).__module__}.{type(value).__qualname__}",
            "given": sorted(value.model_fields_set),
            "fields": {name: shape(getattr(value, name)) for name in fields},
        }
    if isinstance(value, dict):
        return {"dict": [[shape(k), shape(v)] for k, v in value.items()]}
    if isinstance(value, list | tuple | set | frozenset):
        items = [shape(v) for v in value]
        return {type(value).__name__: sorted(items, key=repr) if isinstance(value, set | frozenset) else items}
    return {type(value).__name__: repr(value)}


def made_by_the_serving_side() -> list[Any]:
    """The configs compile.py and the mesh make themselves (an implicit route per cluster, default settings):
    records, where records are on."""
    from meshlib._config.models import MeshConfig, RouteConfig, RouteMatchConfig
    from meshlib._config.resilience import RetryBudgetConfig, RetryConfig
    from meshlib._config.security import InboundConfig
    from meshlib._config.sidecar import SidecarConfig

    return [
        RouteConfig(cluster="-"),
        RouteConfig(name="cluster:reviews", match=RouteMatchConfig(host="reviews"), cluster="reviews"),
        RetryBudgetConfig(),
        RetryConfig(),
        InboundConfig(),
        SidecarConfig(),
        MeshConfig(allow_empty=True),
    ]
