"""What a config holds, as plain JSON: compares a pydantic model and the record a serving process made of it.

Imports nothing of meshlib, so a process can load it before it switches the config models to records.
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
