"""Duration strings (``250ms``, ``2s``, ``1m``) as seconds, and a pydantic type for them."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction
from typing import Annotated

from meshlib._config.pydantic_names import AfterValidator, BeforeValidator, PlainSerializer, WithJsonSchema

# Exact scales, so that "100000us", "100ms" and "0.1s" all give the same float.
_UNITS = {
    "us": Fraction(1, 1_000_000),
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h)\s*$", re.ASCII)


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
    try:
        # Fraction → float rounds once, correctly; multiplying floats would round twice.
        return float(Fraction(match.group(1)) * _UNITS[match.group(2)])
    except OverflowError:
        raise ValueError(f"invalid duration {value!r}: too large") from None


def format_duration(seconds: float) -> str:
    """The shortest string, in the largest whole unit, that :func:`parse_duration` reads back as ``seconds``."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration")
    if seconds == 0:
        return "0s"
    exact = Fraction(seconds)
    for unit in ("h", "m", "s", "ms", "us"):
        count = round(exact / _UNITS[unit])
        if count >= 1 and parse_duration(f"{count}{unit}") == seconds:
            return f"{count}{unit}"
    # Not a whole number of any unit: repr is the shortest decimal that reads back as the same float.
    return f"{Decimal(repr(float(seconds))):f}s"


# The longest duration a config may give: far beyond any sensible timeout or interval, and well inside what
# threads, sockets and datetimes can wait for (past about 292 years they raise OverflowError).
MAX_DURATION = 365 * 24 * 3600.0


def _at_most_a_year(seconds: float) -> float:
    if seconds > MAX_DURATION:
        raise ValueError("must be at most 8760h (365 days)")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    AfterValidator(_at_most_a_year),
    PlainSerializer(format_duration, return_type=str),  # also in python mode: a dump validates back
    WithJsonSchema({"type": "string", "pattern": _DURATION.pattern, "examples": ["250ms", "2s"]}),
]
"""A config field written as a duration string and held as float seconds."""


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be longer than 0s")
    return seconds


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
"""A duration that must be longer than zero (timeouts, intervals)."""
