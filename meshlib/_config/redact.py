"""Credentials in a config, found by what each field means (not its key), hidden from dumps and error messages.

A field that may hold a credential says so in its type, with a :class:`Secret`
marker in its ``Annotated[...]``; :func:`redact_config` walks a config model
and replaces what each marker names, and :func:`redactor_at` tells error
messages which input to hide. Any other string that holds a URL loses its user
info and query values too, so a URL field added later is safe by default::

    storage: Annotated[str, AfterValidator(check), Secret.URL] | None = None
    set: Annotated[dict[HeaderName, HeaderValue], Secret.HEADER_VALUES]
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, get_args

from meshlib._config import records
from meshlib._config.base import ConfigModel, Loc, model_at
from meshlib._config.pydantic_names import BaseModel, FieldInfo

__all__ = ["REDACTED", "Secret", "redact_config", "redact_url", "redactor_at", "sensitive_header"]

REDACTED: Final = "[redacted]"

# A header whose name contains one of these carries credentials: authorization and proxy-authorization
# (auth), cookie and set-cookie, x-api-key and apikey (key), x-csrf-token (token)... Safe over pretty:
# x-cache-key is hidden too.
_SENSITIVE_WORDS: Final = (
    "auth",
    "token",
    "secret",
    "key",
    "credential",
    "password",
    "passwd",
    "session",
    "cookie",
    "csrf",
    "xsrf",
    "signature",
    "jwt",
)


def sensitive_header(name: str) -> bool:
    """Whether values sent or matched in header ``name`` may be credentials."""
    lowered = name.lower()
    return any(word in lowered for word in _SENSITIVE_WORDS)


class Secret(enum.Enum):
    """What in a field may be a credential; put the member in the field's ``Annotated[...]``."""

    VALUE = "value"  # the whole value (a key, a token)
    URL = "url"  # a URL: its user info, every query value, its fragment
    HEADER_VALUES = "header-values"  # header name → value: the values of sensitive headers
    HEADER_MATCHES = "header-matches"  # header name → match: the values matched on sensitive headers
    MATCHES = "matches"  # name → match: every value matched, whatever the name (query parameters)


def secret_of(field: FieldInfo) -> Secret | None:
    """The :class:`Secret` marker of a model field, also when it sits inside ``X | None``."""
    for meta in field.metadata:
        if isinstance(meta, Secret):
            return meta
    for member in get_args(field.annotation):  # Annotated[str, Secret.URL] | None keeps the marker in the member
        for meta in getattr(member, "__metadata__", ()):
            if isinstance(meta, Secret):
                return meta
    return None


def _redact_param(param: str) -> str:
    name, equals, _ = param.partition("=")
    if equals:
        return f"{name}={REDACTED}"
    return REDACTED if param else param  # a bare value (?s3cret) may be the credential itself


def redact_url(url: str) -> str:
    """``url`` with its user info, every query value and its fragment replaced by ``[redacted]``.

    Never raises, and returns ``url`` unchanged when it has none of these
    (``redis://:pw@h:6379/0?password=x`` → ``redis://[redacted]@h:6379/0?password=[redacted]``).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, hashed, _ = rest.partition("#")
    rest, asked, query = rest.partition("?")
    # The last '@' before the query ends the user info, even when a password holds an unencoded '/' or '@'.
    _, at, rest = rest.rpartition("@")
    out = f"{scheme}://{REDACTED}@{rest}" if at else f"{scheme}://{rest}"
    if asked:
        out += "?" + "&".join(_redact_param(p) for p in query.split("&"))
    return out + (f"#{REDACTED}" if hashed else "")


def _hide(_value: str) -> str:
    return REDACTED


def _strings(dumped: Any, change: Callable[[str], str]) -> Any:
    """``dumped`` (a JSON-dumped config value) with ``change`` applied to every string in it."""
    if isinstance(dumped, str):
        return change(dumped)
    if isinstance(dumped, dict):
        return {k: _strings(v, change) for k, v in dumped.items()}
    if isinstance(dumped, list):
        return [_strings(v, change) for v in dumped]
    return dumped


def _apply(secret: Secret, dumped: Any) -> Any:
    """A dumped field value with what ``secret`` names replaced."""
    if secret is Secret.URL:
        return _strings(dumped, redact_url)
    if secret in (Secret.VALUE, Secret.MATCHES) or not isinstance(dumped, dict):
        return _strings(dumped, _hide)
    # HEADER_VALUES and HEADER_MATCHES: a set value, or a match's strings (exact, prefix, regex).
    return {name: _strings(v, _hide if sensitive_header(name) else redact_url) for name, v in dumped.items()}


def _walk(value: Any, dumped: Any) -> Any:
    """``dumped`` (the JSON dump of ``value``) redacted by the markers of the models found in ``value``.

    A value no marker covers keeps its strings, but for URLs in them (safe by default).
    """
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        fields = type(value).model_fields
        names: dict[str, str] = {field.alias or name: name for name, field in fields.items()}  # by alias: from → from_
        out: dict[str, Any] = {}
        for key, item in dumped.items():
            name = names.get(str(key), str(key))
            secret = secret_of(fields[name]) if name in fields else None
            out[key] = _walk(getattr(value, name, None), item) if secret is None else _apply(secret, item)
        return out
    if isinstance(value, Mapping) and isinstance(dumped, dict):
        return {k: _walk(value.get(k), v) for k, v in dumped.items()}
    if isinstance(value, list | tuple) and isinstance(dumped, list) and len(value) == len(dumped):
        return [_walk(v, d) for v, d in zip(value, dumped, strict=True)]
    return _strings(dumped, redact_url)


def redact_config(model: BaseModel) -> dict[str, Any]:
    """``model.model_dump(mode="json", by_alias=True)`` (keys as users write them) with every credential redacted."""
    if records.ACTIVE:  # a record has no field markers: its redacted dump was made where it was validated
        return records.redacted_dump(model)  # type: ignore[arg-type]
    redacted: dict[str, Any] = _walk(model, model.model_dump(mode="json", by_alias=True))
    return redacted


def redactor_at(root: type[ConfigModel], loc: Sequence[str | int]) -> Callable[[str], str]:
    """How to hide the input found at ``loc`` under ``root`` (a validation error's) when a message quotes it.

    All of it for a credential; else the credentials of a URL (a no-op for any other string).
    """
    for i, part in enumerate(loc):
        model = model_at(root, tuple(loc[:i]))
        field = model.model_fields.get(part) if model is not None and isinstance(part, str) else None
        secret = secret_of(field) if field is not None else None
        if secret is None:
            continue
        rest: Loc = tuple(loc[i + 1 :])
        named = bool(rest) and sensitive_header(str(rest[0]))
        if (
            secret is Secret.VALUE
            or (secret is Secret.MATCHES and rest)
            or (secret in (Secret.HEADER_VALUES, Secret.HEADER_MATCHES) and named)
        ):
            return _hide
        break
    return redact_url
