"""Shared pieces of the config models: the strict base model and small field types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = ["ConfigModel", "NonNegativeInt", "Percent", "PositiveInt", "StatusCode", "fail"]

PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
StatusCode = Annotated[int, Field(strict=True, ge=100, le=599)]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]


class ConfigModel(BaseModel):
    """Every config model: unknown keys are errors, and a validated config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def fail(loc: tuple[str | int, ...], message: str, value: object = None) -> ValidationError:
    """An error at ``loc`` inside the model being validated (pydantic prefixes the model's own path)."""
    details = InitErrorDetails(type=PydanticCustomError("config", message), loc=loc, input=value)
    return ValidationError.from_exception_data("config", [details])
