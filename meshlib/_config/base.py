"""Shared pieces of the config models: the strict base model, small field types and whole-model checks.

pydantic runs a model's own validators only once all its fields are valid, so a
config with a bad field would report its cross-field problems (``ring_hash``
without ``hash_on``, duplicate endpoints) only in a later run. Whole-model
rules are therefore written as ``@check`` methods that :func:`raw_check_errors`
can also run, best effort, on the raw input of a config that failed: one run
reports every error it can find.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Annotated, Any, ClassVar, Self, Union, get_args, get_origin

from meshlib._config.pydantic_names import (
    BaseModel,
    ConfigDict,
    Field,
    InitErrorDetails,
    PydanticCustomError,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)

__all__ = [
    "INVALID",
    "CheckError",
    "ConfigModel",
    "Loc",
    "NonNegativeInt",
    "Percent",
    "PositiveInt",
    "StatusCode",
    "Weight",
    "check",
    "check_path",
    "fail",
    "fail_all",
    "field_of",
    "format_loc",
    "model_at",
    "raw_check_errors",
]

PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
StatusCode = Annotated[int, Field(strict=True, ge=100, le=599)]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
# A relative weight, at most 2³²-1 as Envoy's: the load balancers and splits do float arithmetic with weights.
Weight = Annotated[int, Field(strict=True, ge=1, le=2**32 - 1)]


def check_path(path: str) -> str:
    """``path`` if it can be a URL path (the mesh builds request URLs from some): starts with '/', no controls."""
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} must start with '/'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise ValueError(f"path {path!r} has a control character")
    return path


Loc = tuple[str | int, ...]
# A mapping key that reads unambiguously in a dotted path; any other key is quoted: clusters['a b'].
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def format_loc(loc: tuple[int | str, ...]) -> str:
    """``("routes", 1, "split", 0, "cluster")`` → ``routes[1].split[0].cluster``."""
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for "the key itself is bad"; the key is the part before
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _PLAIN_KEY.match(part):
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else part
    return out


CheckError = tuple[Loc, str, object]
"""``(loc, message, value)``: a problem at ``loc``, relative to the model that found it."""

# Validation context key: validate fields only (raw_check_errors runs the checks itself).
_FIELDS_ONLY = "meshlib.fields_only"
_NO_CHECKS = {_FIELDS_ONLY: True}


class _Invalid:
    """The value of a field that failed validation, in a model rebuilt from raw input."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Any = _Invalid()
"""Stands for a field that failed validation; counts as given (it is not None) but has no usable value."""

CheckMethod = Callable[[Any], Iterable[CheckError]]


def check(*needs: str) -> Callable[[CheckMethod], CheckMethod]:
    """Mark a :class:`ConfigModel` method as a whole-model check that yields :data:`CheckError` s.

    ``needs`` names the fields whose values the check reads: on raw input it is
    skipped while any of them is invalid. A field it only tests for presence
    (``is None``) needs no listing, since an invalid value still counts as given.
    """

    def mark(method: CheckMethod) -> CheckMethod:
        method.__config_check_needs__ = needs  # type: ignore[attr-defined]
        return method

    return mark


def fail_all(errors: Iterable[CheckError], title: str = "config") -> ValidationError:
    """One ValidationError holding ``errors`` (pydantic prefixes each loc with the path of the model raising it)."""
    details = [
        InitErrorDetails(type=PydanticCustomError("config", message), loc=loc, input=value)
        for loc, message, value in errors
    ]
    return ValidationError.from_exception_data(title, details)


def fail(loc: Loc, message: str, value: object = None) -> ValidationError:
    """An error at ``loc`` inside the model being validated."""
    return fail_all([(loc, message, value)])


def field_of(obj: object, key: str) -> object:
    """``obj[key]`` of raw input or ``obj.key`` of a model; None for anything else, so raw checks never crash."""
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None) if isinstance(obj, BaseModel) else None


@functools.cache
def _checks(cls: type[ConfigModel]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(method name, needs)`` of every ``@check`` of ``cls``, bases first, each in definition order."""
    found: dict[str, tuple[str, ...]] = {}
    for klass in reversed(cls.__mro__):
        for name, attr in list(vars(klass).items()):  # a deferred model build may add to it meanwhile
            needs = getattr(attr, "__config_check_needs__", None)
            if needs is not None:
                found[name] = needs
    return tuple(found.items())


class ConfigModel(BaseModel):
    """Every config model: unknown keys are errors, a validated config never changes, and ``@check`` s run."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
    # Keys users write here that belong in another model: key → the error saying where.
    misplaced_keys: ClassVar[Mapping[str, str]] = {}

    def check_errors(self) -> list[CheckError]:
        """What this model's ``@check`` s find, skipping those that need an invalid field."""
        errors: list[CheckError] = []
        for name, needs in _checks(type(self)):
            if not any(getattr(self, field, INVALID) is INVALID for field in needs):
                errors.extend(getattr(self, name)())
        return errors

    @classmethod
    def suggested_field(cls, key: str | int) -> str | None:
        """The field a user who wrote the unknown ``key`` most likely meant, if one is close enough."""
        if key in cls.misplaced_keys:
            return None
        import difflib  # here: only a config with an unknown key needs it

        close = difflib.get_close_matches(str(key), list(cls.model_fields), n=1)
        return close[0] if close else None

    @classmethod
    def unknown_key_message(cls, key: str | int) -> str:
        """The error for a key this model does not have: where it belongs, or the closest field name."""
        if key in cls.misplaced_keys:
            return cls.misplaced_keys[str(key)]
        field = cls.suggested_field(key)
        if field is None:
            return f"unknown key {key!r}"
        written = cls.model_fields[field].alias or field  # as users write it: `from`, not `from_`
        return f"unknown key {key!r} (did you mean {written!r}?)"

    @model_validator(mode="after")
    def _run_checks(self, info: ValidationInfo) -> Self:
        if info.context is not None and info.context.get(_FIELDS_ONLY):
            return self
        errors = self.check_errors()
        if errors:
            raise fail_all(errors, type(self).__name__)
        return self


def _members(tp: Any) -> list[Any]:
    """``tp`` without ``Annotated``, a union split into its members, ``None`` left out."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(tp) if arg is not type(None) for m in _members(arg)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, ConfigModel)


def _inner(tp: Any, part: str | int) -> Any:
    """The type found at ``part`` (a field name, list index or mapping key) inside a value of type ``tp``."""
    for member in _members(tp):
        if _is_model(member):
            if isinstance(part, str) and part in member.model_fields:
                return member.model_fields[part].annotation
        elif get_origin(member) is list and isinstance(part, int):
            return get_args(member)[0]
        elif get_origin(member) is dict and isinstance(part, str):
            return get_args(member)[1]
    return None


def model_at(root: type[ConfigModel], loc: Loc) -> type[ConfigModel] | None:
    """The config model at ``loc`` (a pydantic error's loc) under ``root``, or None where there is none."""
    tp: Any = root
    for part in loc:
        tp = _inner(tp, part)
        if tp is None:
            return None
    found: list[type[ConfigModel]] = [m for m in _members(tp) if _is_model(m)]
    return found[0] if found else None


@functools.cache
def _adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def _under(failed: Collection[Loc], loc: Loc) -> list[Loc]:
    return [f for f in failed if f[: len(loc)] == loc]


def _field_value(cls: type[ConfigModel], name: str, raw: object, loc: Loc, failed: Collection[Loc]) -> Any:
    """The value validation gave field ``name`` (checks off), INVALID if it failed; a list keeps its good items."""
    bad = _under(failed, loc)
    if not bad:
        target = cls.model_construct()
        # validate_assignment runs the field's own validators too, as the full validation did.
        assign = cls.__pydantic_validator__.validate_assignment
        if _validated(assign, target, name, raw, context=_NO_CHECKS) is INVALID:
            return INVALID
        return target.__dict__.get(name, INVALID)
    item_types = [get_args(m)[0] for m in _members(cls.model_fields[name].annotation) if get_origin(m) is list]
    if not isinstance(raw, list) or not item_types or any(len(f) == len(loc) for f in bad):
        return INVALID
    adapter = _adapter(item_types[0])
    return [
        INVALID if _under(bad, (*loc, i)) else _validated(adapter.validate_python, item, context=_NO_CHECKS)
        for i, item in enumerate(raw)
    ]


def _validated(validate: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``validate(...)``, or INVALID if it fails: what passed in the full validation passes alone, but be safe."""
    try:
        return validate(*args, **kwargs)
    except ValidationError:  # pragma: no cover - see above
        return INVALID


def _nested_errors(tp: Any, raw: object, loc: Loc, failed: Collection[Loc]) -> list[CheckError]:
    for member in _members(tp):
        if _is_model(member) and isinstance(raw, dict):
            return raw_check_errors(member, raw, failed, loc)
        if get_origin(member) is list and isinstance(raw, list):
            item = get_args(member)[0]
            return [e for i, value in enumerate(raw) for e in _nested_errors(item, value, (*loc, i), failed)]
        if get_origin(member) is dict and isinstance(raw, dict):
            value_type = get_args(member)[1]
            return [e for key, value in raw.items() for e in _nested_errors(value_type, value, (*loc, key), failed)]
    return []


def raw_check_errors(cls: type[ConfigModel], data: object, failed: Collection[Loc], loc: Loc = ()) -> list[CheckError]:
    """The ``@check`` s of ``cls`` and of every model inside it, run on raw ``data`` that failed validation.

    ``failed`` holds the locs pydantic reported. Each check sees the values
    validation gave the valid fields and :data:`INVALID` for the others, so it
    finds what it would have found had the rest been valid. Locs are absolute
    (``loc`` is where ``data`` sits). A shorthand (a URL string for an
    endpoint) or a value of the wrong shape has no checks to run.
    """
    if not isinstance(data, dict):
        return []
    values: dict[str, Any] = {}
    nested: list[CheckError] = []
    for name, field in cls.model_fields.items():
        if name not in data:
            if field.is_required():
                values[name] = INVALID
            continue  # model_construct fills in the default
        values[name] = _field_value(cls, name, data[name], (*loc, name), failed)
        nested += _nested_errors(field.annotation, data[name], (*loc, name), failed)
    for key in (k for k in data if k not in cls.model_fields):
        meant = cls.suggested_field(key)
        if meant is not None and meant not in data:
            values[meant] = INVALID  # a misspelt field was given: "set one of ..." checks must not say otherwise
    own = [((*loc, *where), message, value) for where, message, value in cls.model_construct(**values).check_errors()]
    return own + nested
