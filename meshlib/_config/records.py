"""The config models without pydantic: plain frozen records, for the process that serves ``meshlib proxy``.

pydantic, its models' validators and YAML are about 13 MB of an idle sidecar that
never validates anything while it serves (docs/performance.md). So the
``proxy`` command switches this module on (:func:`activate`) before any
config model is defined, and has its configs validated in a child process
(:mod:`meshlib._config.offload`), which hands them back pickled. The model
modules take pydantic's names from :mod:`meshlib._config.pydantic_names`,
which then gives them the stand-ins below: the same class bodies define
records with the same fields, defaults, methods and properties, equal and
hashed as pydantic's frozen models are, that unpickle from the models'
state and copy with ``model_copy``. They never validate: the few configs
the serving side makes itself (an implicit route, a default budget) are
built from their defaults and the values given, as ``model_construct``
does.

Everything that needs pydantic (``model_validate``, ``model_json_schema``,
a dump other than the one a validated config carries) raises
:class:`PydanticNeededError`: it is a bug to reach it in a serving process.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, get_origin

# The stand-ins for pydantic's names (AfterValidator ... model_validator) are taken by pydantic_names.py.
__all__ = [
    "ACTIVE",
    "PYDANTIC_ENV",
    "BaseModel",
    "PydanticNeededError",
    "activate",
    "attach_dumps",
    "redacted_dump",
]

ACTIVE = False
"""True once :func:`activate` ran: this process defines its config models as records."""

PYDANTIC_ENV = "MESHLIB_SIDECAR_PYDANTIC"
"""Set to ``1``, ``meshlib proxy`` keeps pydantic's models (and validates reloads in its own process)."""

# The modules that define config models: all of them must be defined the same way in one process.
_MODEL_MODULES = ("meshlib._config.base", "meshlib._config.pydantic_names")


def activate() -> bool:
    """Define the config models as records in this process, unless they are defined already (as pydantic's): a
    process that imported them (an app, the tests) keeps them. Whether records are on."""
    global ACTIVE
    if not ACTIVE and not any(name in sys.modules for name in _MODEL_MODULES):
        ACTIVE = True
    return ACTIVE


class PydanticNeededError(RuntimeError):
    """What a serving process without pydantic cannot do (validate, dump, describe a schema)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} needs pydantic, which this serving process does not load (meshlib._config.records)")


class _Inert:
    """Stands for pydantic's validators, serializers and schema notes inside ``Annotated``: records run none."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass


AfterValidator = BeforeValidator = PlainSerializer = WithJsonSchema = _Inert
ConfigDict = dict
ValidationInfo = GetJsonSchemaHandler = JsonSchemaValue = CoreSchema = ErrorDetails = InitErrorDetails = Any


class ValidationError(ValueError):
    """pydantic's, for ``except`` clauses: never raised, since nothing validates here."""


class PydanticCustomError(ValueError):
    """A validation error's detail: never made, since nothing validates here."""

    def __init__(self, *args: object) -> None:
        raise PydanticNeededError("a validation error")


class TypeAdapter:
    """Validation of a bare type: not here."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise PydanticNeededError("TypeAdapter")


_REQUIRED: Any = object()  # a field with no default


class FieldInfo:
    """What a record needs of a field: its default (or factory) and its alias."""

    __slots__ = ("alias", "default", "default_factory")

    def __init__(
        self, default: Any = _REQUIRED, *, default_factory: Callable[[], Any] | None = None, alias: str | None = None
    ) -> None:
        self.default = _REQUIRED if default is ... else default
        self.default_factory = default_factory
        self.alias = alias

    def is_required(self) -> bool:
        return self.default is _REQUIRED and self.default_factory is None

    def make_default(self) -> Any:
        if self.default_factory is not None:
            return self.default_factory()
        # pydantic copies a mutable default for each model; so does a record.
        return copy.deepcopy(self.default) if isinstance(self.default, list | dict | set) else self.default


def Field(  # noqa: N802 - pydantic's name
    default: Any = _REQUIRED, *, default_factory: Callable[[], Any] | None = None, alias: str | None = None, **_: Any
) -> Any:
    """pydantic's ``Field``: a record keeps the default, the default factory and the alias; constraints are checked
    where the config was validated."""
    return FieldInfo(default, default_factory=default_factory, alias=alias)


def field_validator(*_args: object, **_kwargs: object) -> Callable[[Any], Any]:
    """The method stays as written; a record never calls it."""
    return _unchanged


def model_validator(*_args: object, **_kwargs: object) -> Callable[[Any], Any]:
    """The method stays as written; a record never calls it."""
    return _unchanged


def _unchanged(method: Any) -> Any:
    return method


def _is_class_var(annotation: object) -> bool:
    if isinstance(annotation, str):  # the config modules' annotations are strings (``from __future__``)
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return annotation is ClassVar or get_origin(annotation) is ClassVar


def _fields_of(cls: type) -> dict[str, FieldInfo]:
    """The fields ``cls`` defines and inherits, in pydantic's order (bases first), from annotations and defaults."""
    fields: dict[str, FieldInfo] = {}
    for klass in reversed(cls.__mro__):
        if klass is BaseModel or not issubclass(klass, BaseModel):
            continue
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            if name.startswith("_") or _is_class_var(annotation):
                continue  # pydantic's private attributes and class variables are no fields
            value = vars(klass).get(name, _REQUIRED)
            fields[name] = value if isinstance(value, FieldInfo) else FieldInfo(value)
    return fields


class BaseModel:
    """A frozen record with a pydantic model's fields: made by unpickling a validated model, or from values."""

    __slots__ = ("__dict__", "__weakref__", "_dumps", "_fields_set")
    _dumps: tuple[dict[str, Any], dict[str, Any]] | None  # attach_dumps'
    _fields_set: set[str]
    model_fields: ClassVar[dict[str, FieldInfo]] = {}
    model_config: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__()
        cls.model_fields = _fields_of(cls)

    def __init__(self, **values: Any) -> None:
        fields = type(self).model_fields
        state: dict[str, Any] = {}
        given: set[str] = set()
        for name, info in fields.items():
            key = name if name in values else info.alias
            if key is not None and key in values:
                state[name] = values.pop(key)
                given.add(name)
            elif info.is_required():
                raise TypeError(f"{type(self).__name__}: field {name!r} is required")
            else:
                state[name] = info.make_default()
        if values:
            raise TypeError(f"{type(self).__name__}: no field {sorted(values)[0]!r}")
        self._set(state, given)

    def _set(self, state: dict[str, Any], given: set[str]) -> None:
        object.__setattr__(self, "__dict__", state)
        object.__setattr__(self, "_fields_set", given)
        object.__setattr__(self, "_dumps", None)

    @classmethod
    def model_construct(cls, **values: Any) -> Any:
        """A record of ``values`` and the other fields' defaults (pydantic's, without validation)."""
        return cls(**values)

    @classmethod
    def model_validate(cls, *args: object, **kwargs: object) -> Any:
        raise PydanticNeededError(f"validating a {cls.__name__}")

    @classmethod
    def model_json_schema(cls, *args: object, **kwargs: object) -> dict[str, Any]:
        raise PydanticNeededError("a JSON schema")

    @property
    def model_fields_set(self) -> set[str]:
        """The fields the config gave (the others have their defaults)."""
        return self._fields_set

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Any:
        """A copy with ``update``'s fields replaced (not validated, as pydantic's ``model_copy``)."""
        state = copy.deepcopy(self.__dict__) if deep else dict(self.__dict__)
        given = set(self._fields_set)
        if update:
            state.update(update)
            given.update(update)
        copied = type(self).__new__(type(self))
        copied._set(state, given)
        return copied

    def model_dump(self, *, mode: str = "python", by_alias: bool = False, **options: Any) -> dict[str, Any]:
        """The JSON dump by alias that a validated config carries from where it was validated (``attach_dumps``)."""
        dumps = self._dumps
        if dumps is None or mode != "json" or not by_alias or options:
            raise PydanticNeededError(f"dumping a {type(self).__name__}")
        return copy.deepcopy(dumps[0])

    # pydantic's pickled state: {"__dict__": fields, "__pydantic_fields_set__": names given, ...}
    def __getstate__(self) -> dict[str, Any]:
        return {
            "__dict__": self.__dict__,
            "__pydantic_extra__": None,
            "__pydantic_fields_set__": self._fields_set,
            "__pydantic_private__": None,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("__pydantic_extra__") or state.get("__pydantic_private__"):
            raise PydanticNeededError("a model with extra or private attributes")
        self._set(dict(state["__dict__"]), set(state.get("__pydantic_fields_set__") or ()))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: {name!r} cannot be set")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: {name!r} cannot be deleted")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), *self.__dict__.values()))

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        yield from self.__dict__.items()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


def attach_dumps(model: BaseModel, dump: dict[str, Any], redacted: dict[str, Any]) -> None:
    """Give a record the JSON dump (by alias) and its redacted twin that were made where it was validated."""
    object.__setattr__(model, "_dumps", (dump, redacted))


def redacted_dump(model: BaseModel) -> dict[str, Any]:
    """The redacted dump a record carries (``attach_dumps``)."""
    dumps = model._dumps
    if dumps is None:
        raise PydanticNeededError(f"redacting a {type(model).__name__}")
    return copy.deepcopy(dumps[1])
