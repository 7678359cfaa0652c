"""Duration strings (``250ms``, ``2s``, ``1m``): parsing, refusals, formatting, and the pydantic ``Duration`` type."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from hypothesis import given, strategies as st
from pydantic import BaseModel, ValidationError

from meshlib._config.durations import Duration, format_duration, parse_duration

UNITS = ("us", "ms", "s", "m", "h")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10us", 0.00001),
        ("1us", 0.000001),
        ("250ms", 0.25),
        ("1000ms", 1.0),
        ("2s", 2.0),
        ("0s", 0.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("1.5m", 90.0),
        ("0.5h", 1800.0),
        ("0.25ms", 0.00025),
        ("007s", 7.0),
        (" 2s ", 2.0),
        ("2 s", 2.0),
        ("\t250ms\n", 0.25),
    ],
)
def test_parse_duration_reads_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_the_same_quantity_in_different_units_is_the_same_float() -> None:
    """Exact scaling: 100000us, 100ms and 0.1s are all the float nearest 0.1 (float products would differ)."""
    assert parse_duration("100000us") == parse_duration("100ms") == parse_duration("0.1s") == 0.1
    assert parse_duration("7000us") == parse_duration("7ms") == 0.007
    assert parse_duration("3600000ms") == parse_duration("60m") == parse_duration("1h") == 3600.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (5, "expected a duration string such as '250ms' or '2s', got 5"),
        (2.5, "expected a duration string such as '250ms' or '2s', got 2.5"),
        (True, "expected a duration string such as '250ms' or '2s', got True"),
        (None, "expected a duration string such as '250ms' or '2s', got None"),
        ("5", "invalid duration '5': use a number and a unit (us, ms, s, m, h), e.g. '250ms'"),
        ("", "invalid duration ''"),
        ("   ", "invalid duration '   '"),
        ("-1s", "invalid duration '-1s'"),
        ("+1s", "invalid duration '+1s'"),
        ("1d", "invalid duration '1d'"),
        ("1sec", "invalid duration '1sec'"),
        ("1S", "invalid duration '1S'"),
        ("1ns", "invalid duration '1ns'"),
        ("1µs", "invalid duration '1µs'"),
        ("1e3ms", "invalid duration '1e3ms'"),
        (".5s", "invalid duration '.5s'"),
        ("1.s", "invalid duration '1.s'"),
        ("1,5s", "invalid duration '1,5s'"),
        ("1m30s", "invalid duration '1m30s'"),
        ("ms", "invalid duration 'ms'"),
        ("inf s", "invalid duration 'inf s'"),
        ("\u0663s", "invalid duration '\u0663s'"),  # ARABIC-INDIC DIGIT THREE: a digit to \d, not to us
        pytest.param("9" * 400 + "h", "too large", id="too-large"),
    ],
)
def test_parse_duration_refuses(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.00001, "10us"),
        (0.25, "250ms"),
        (1.5, "1500ms"),
        (2.0, "2s"),
        (90.0, "90s"),
        (120.0, "2m"),
        (7200.0, "2h"),
        (0.1 + 0.2, "0.30000000000000004s"),
        (1e-7, "0.0000001s"),
    ],
)
def test_format_duration_uses_the_largest_whole_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [-1.0, math.inf, math.nan])
def test_format_duration_refuses_what_is_not_a_duration(seconds: float) -> None:
    with pytest.raises(ValueError, match="cannot format"):
        format_duration(seconds)


@given(count=st.integers(min_value=0, max_value=10**12), unit=st.sampled_from(UNITS))
def test_whole_units_round_trip(count: int, unit: str) -> None:
    seconds = parse_duration(f"{count}{unit}")
    text = format_duration(seconds)
    assert parse_duration(text) == seconds
    assert re.fullmatch(r"\d+(us|ms|s|m|h)", text), text


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_every_finite_non_negative_float_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


class Timeouts(BaseModel):
    connect: Duration
    total: Duration = 30.0


def test_duration_fields_hold_float_seconds() -> None:
    timeouts = Timeouts.model_validate({"connect": "250ms", "total": "1m"})
    assert (timeouts.connect, timeouts.total) == (0.25, 60.0)
    assert isinstance(timeouts.connect, float)


@pytest.mark.parametrize("value", ["5", 5, "fast"])
def test_a_bad_duration_field_error_shows_example_units(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Timeouts.model_validate({"connect": value})
    [error] = info.value.errors()
    assert error["loc"] == ("connect",)
    assert "'250ms'" in error["msg"]


def test_duration_is_float_seconds_in_code_and_a_string_in_every_dump() -> None:
    timeouts = Timeouts.model_validate({"connect": "250ms", "total": "90s"})
    assert (timeouts.connect, timeouts.total) == (0.25, 90.0)
    assert timeouts.model_dump(mode="json") == {"connect": "250ms", "total": "90s"}
    assert json.loads(timeouts.model_dump_json()) == {"connect": "250ms", "total": "90s"}
    # A python-mode dump validates back too (bare numbers are refused as input).
    assert timeouts.model_dump() == {"connect": "250ms", "total": "90s"}
    assert Timeouts.model_validate(timeouts.model_dump()) == timeouts
    assert Timeouts.model_validate_json(timeouts.model_dump_json()) == timeouts


def test_duration_json_schema_is_a_string_with_the_duration_pattern() -> None:
    schema = Timeouts.model_json_schema()["properties"]["connect"]
    assert schema["type"] == "string"
    assert schema["examples"] == ["250ms", "2s"]
    pattern = re.compile(schema["pattern"])
    assert all(pattern.match(text) for text in ("250ms", "2s", "1.5m", "10us", "1h"))
    assert not any(pattern.match(text) for text in ("5", "-1s", "1d", "1e3ms"))
