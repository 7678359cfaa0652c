"""Duration strings (``250ms``, ``2s``, ``1m``) as seconds, and a pydantic type for them."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h)\s*$")


def parse_duration(value: object) -> float:
    """Return ``value`` in seconds; accepts ``"250ms"``, ``"2s"``, ``"1.5m"``, ``"1h"``, ``"10us"``.

    Bare numbers are refused on purpose: ``timeout: 5`` is ambiguous (seconds?
    milliseconds?), so the unit must be written.
    """
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected a duration string such as '250ms' or '2s', got {value!r}")
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"invalid duration {value!r}: use a number and a unit (us, ms, s, m, h), e.g. '250ms'")
    return float(match.group(1)) * _UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact string that :func:`parse_duration` reads back as ``seconds``."""
    for unit, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        count = seconds / scale
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return f"{round(seconds * 1e6)}us"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": _DURATION.pattern, "examples": ["250ms", "2s"]}),
]
"""A config field written as a duration string and held as float seconds."""
