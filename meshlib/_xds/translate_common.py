"""What the translate modules share: :class:`Rejected`, field paths, and proto value helpers.

Protos come in untyped (xds-protos ships no stubs), so they are ``Any`` here;
every message type this package reads is imported by :func:`pb`, on first use.
"""

from __future__ import annotations

import functools
import importlib
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from types import SimpleNamespace
from typing import Any, NoReturn

from meshlib._config.durations import MAX_DURATION, format_duration

__all__ = [
    "At",
    "Rejected",
    "check_re2",
    "duration",
    "duration_str",
    "fraction_percent",
    "pb",
    "type_name",
    "unpack",
]


class Rejected(ValueError):  # noqa: N818 - the name the manager and docs use
    """A resource meshlib can't honour. ``str()``: ``f"{kind} {name!r}: {field}: {message}"``."""

    def __init__(self, kind: str, name: str, field: str, message: str) -> None:
        self.kind = kind
        self.name = name
        self.field = field
        self.message = message
        super().__init__(f"{kind} {name!r}: {field}: {message}")


@dataclass(frozen=True)
class At:
    """Where in which resource: ``At("RouteConfiguration", "r") / "virtual_hosts" / 0`` is ``virtual_hosts[0]``."""

    kind: str
    name: str
    path: str = ""

    def __truediv__(self, segment: str | int) -> At:
        if isinstance(segment, int):
            return At(self.kind, self.name, f"{self.path}[{segment}]")
        if segment.startswith(("(", "[")):  # an Any's type, or a map key
            return At(self.kind, self.name, self.path + segment)
        return At(self.kind, self.name, f"{self.path}.{segment}" if self.path else segment)

    def reject(self, message: str) -> NoReturn:
        raise Rejected(self.kind, self.name, self.path or "(resource)", message)


@functools.cache
def pb() -> Any:
    """The generated modules of every message the translation reads (imported once, on first use)."""
    names = {
        "listener": "envoy.config.listener.v3.listener_pb2",
        "route": "envoy.config.route.v3.route_pb2",
        "route_components": "envoy.config.route.v3.route_components_pb2",
        "cluster": "envoy.config.cluster.v3.cluster_pb2",
        "endpoint": "envoy.config.endpoint.v3.endpoint_pb2",
        "health_check": "envoy.config.core.v3.health_check_pb2",
        "base": "envoy.config.core.v3.base_pb2",
        "hcm": "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
        "fault": "envoy.extensions.filters.http.fault.v3.fault_pb2",
        "router": "envoy.extensions.filters.http.router.v3.router_pb2",
        "tls": "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
        "tls_common": "envoy.extensions.transport_sockets.tls.v3.common_pb2",
        "raw_buffer": "envoy.extensions.transport_sockets.raw_buffer.v3.raw_buffer_pb2",
        "percent": "envoy.type.v3.percent_pb2",
        "round_robin": "envoy.extensions.load_balancing_policies.round_robin.v3.round_robin_pb2",
        "least_request": "envoy.extensions.load_balancing_policies.least_request.v3.least_request_pb2",
        "random": "envoy.extensions.load_balancing_policies.random.v3.random_pb2",
        "ring_hash": "envoy.extensions.load_balancing_policies.ring_hash.v3.ring_hash_pb2",
        "maglev": "envoy.extensions.load_balancing_policies.maglev.v3.maglev_pb2",
        "wrr_locality": "envoy.extensions.load_balancing_policies.wrr_locality.v3.wrr_locality_pb2",
    }
    return SimpleNamespace(**{key: importlib.import_module(module) for key, module in names.items()})


def type_name(packed: Any) -> str:
    """The full message name of an Any (``envoy.extensions.filters.http.fault.v3.HTTPFault``)."""
    return str(packed.type_url).rpartition("/")[2]


def unpack(packed: Any, cls: Any, at: At) -> Any:
    """The ``cls`` message inside ``packed``, or Rejected naming the type it holds instead."""
    message = cls()
    if type_name(packed) != message.DESCRIPTOR.full_name or not packed.Unpack(message):
        at.reject(f"expected a {message.DESCRIPTOR.full_name}, got {type_name(packed) or 'nothing'}")
    return message


def duration(d: Any) -> float:
    """A ``google.protobuf.Duration`` in seconds."""
    return float(Fraction(int(d.seconds)) + Fraction(int(d.nanos), 1_000_000_000))


def duration_str(seconds: float) -> str:
    """Seconds as meshlib writes durations (``"250ms"``), at most meshlib's longest (a year)."""
    return format_duration(min(seconds, MAX_DURATION))


_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}


def fraction_percent(fp: Any) -> float:
    """A ``FractionalPercent`` as a percentage, 0 to 100 (a numerator above the denominator is 100%)."""
    denominator = _DENOMINATORS.get(int(fp.denominator), 100)
    return min(100.0, float(Fraction(int(fp.numerator), denominator) * 100))


# The parse-tree opcodes of constructs Python's re has and RE2 (Envoy's regex engine) refuses.
_NOT_RE2 = {
    "ASSERT": "lookahead/lookbehind",
    "ASSERT_NOT": "negative lookahead/lookbehind",
    "GROUPREF": "a backreference",
    "GROUPREF_EXISTS": "a conditional group",
    "ATOMIC_GROUP": "an atomic group",
    "POSSESSIVE_REPEAT": "a possessive quantifier",
}


def _children(arg: Any) -> Any:
    if hasattr(arg, "data"):  # a SubPattern
        yield arg
    elif isinstance(arg, (list, tuple)):
        for item in arg:
            yield from _children(item)


def _walk(tree: Any) -> Any:
    """Every (opcode name, argument) of a ``re._parser`` parse tree, nested ones too."""
    for op, arg in tree.data:
        yield str(op), arg
        for child in _children(arg):
            yield from _walk(child)


def check_re2(pattern: str, at: At) -> str:
    """``pattern`` if RE2 and Python's re both take it and read it alike, else Rejected at ``at``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "possible nested set" ([[:alpha:]]) and the like
            re.compile(pattern)
            tree = importlib.import_module("re._parser").parse(pattern)
    except (re.error, FutureWarning, DeprecationWarning) as exc:
        at.reject(f"invalid regex {pattern!r}: {exc}")
    for op, arg in _walk(tree):
        if op in _NOT_RE2:
            at.reject(f"regex {pattern!r} uses {_NOT_RE2[op]}, which RE2 (Envoy's regex engine) doesn't support")
        if op == "AT" and str(arg) == "AT_END_STRING":
            at.reject(f"regex {pattern!r} uses \\Z, which RE2 (Envoy's regex engine) doesn't support: use $")
    return pattern
