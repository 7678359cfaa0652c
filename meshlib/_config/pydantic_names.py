"""pydantic's names as the config models use them: pydantic's own, or the records' stand-ins.

Every config module takes them from here rather than from pydantic, so that
the serving process of ``meshlib proxy`` (which switches
:mod:`meshlib._config.records` on first) defines the same models as plain
records and never loads pydantic. Anywhere else, these are pydantic's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshlib._config import records

__all__ = [
    "AfterValidator",
    "BaseModel",
    "BeforeValidator",
    "ConfigDict",
    "CoreSchema",
    "ErrorDetails",
    "Field",
    "FieldInfo",
    "GetJsonSchemaHandler",
    "InitErrorDetails",
    "JsonSchemaValue",
    "PlainSerializer",
    "PydanticCustomError",
    "TypeAdapter",
    "ValidationError",
    "ValidationInfo",
    "WithJsonSchema",
    "field_validator",
    "model_validator",
]

if TYPE_CHECKING or not records.ACTIVE:
    from pydantic import (
        AfterValidator,
        BaseModel,
        BeforeValidator,
        ConfigDict,
        Field,
        GetJsonSchemaHandler,
        PlainSerializer,
        TypeAdapter,
        ValidationError,
        ValidationInfo,
        WithJsonSchema,
        field_validator,
        model_validator,
    )
    from pydantic.fields import FieldInfo
    from pydantic.json_schema import JsonSchemaValue
    from pydantic_core import CoreSchema, ErrorDetails, InitErrorDetails, PydanticCustomError
else:  # the same names, from the records module
    globals().update({name: getattr(records, name) for name in __all__})
