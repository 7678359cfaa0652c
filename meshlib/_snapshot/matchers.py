"""Compiled request predicates: method, path, header and query matchers, cheapest first."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

import httpx

from meshlib._config.models import RouteMatchConfig, StringMatchConfig
from meshlib._httpx_shortcuts import header_value

__all__ = ["MatchInput", "Predicate", "ValueMatcher", "compile_match", "compile_value", "path_literal"]

ValueMatcher = Callable[[str | None], bool]


class MatchInput:
    """What route predicates read from one request, each part worked out once and only if asked.

    A header is found by its lower-case name among httpx's raw entries and
    only its value is decoded (``header_value``), once per request and name:
    the routes a request walks often test the same few headers, and most of
    its headers are tested by none (decoding them all took most of a match's
    time).
    """

    __slots__ = ("_headers", "_params", "path", "request")

    def __init__(self, request: httpx.Request, path: str) -> None:
        self.request = request
        self.path = path
        self._headers: dict[bytes, str | None] | None = None
        self._params: httpx.QueryParams | None = None

    def header(self, key: bytes) -> str | None:
        """Header ``key``'s value (``key``: its lower-case name), as ``httpx.Headers.get`` reads it: repeated headers
        joined with ", " (the view Envoy's matchers give too), decoded as httpx decodes the request's headers."""
        seen = self._headers
        if seen is None:
            seen = self._headers = {}
        elif key in seen:
            return seen[key]
        found = header_value(self.request.headers, key)
        seen[key] = found
        return found

    def query(self, name: str) -> str | None:
        """The query parameter's first value."""
        if self._params is None:
            self._params = self.request.url.params
        value: str | None = self._params.get(name)
        return value


Predicate = Callable[[MatchInput], bool]


def compile_value(config: StringMatchConfig) -> ValueMatcher:
    """A predicate over a header or query value (None when the request lacks it)."""
    if config.exact is not None:
        exact = config.exact
        return lambda v: v == exact
    if config.prefix is not None:
        prefix = config.prefix
        return lambda v: v is not None and v.startswith(prefix)
    if config.regex is not None:
        # Like Envoy's safe_regex, the pattern must match the whole value.
        fullmatch = re.compile(config.regex).fullmatch
        return lambda v: v is not None and fullmatch(v) is not None
    if config.present:
        return lambda v: v is not None
    return lambda v: v is None


# One bytes object per header name, however many routes test it: MatchInput's memo then finds it by identity, not
# by comparing bytes (a table's routes often test the same few headers).
_KEYS: dict[str, bytes] = {}


def _header(name: str, match: ValueMatcher) -> Predicate:
    lowered = name.lower()
    # As httpx's raw entries hold the name (the config checks that it is a token).
    key = _KEYS.setdefault(lowered, lowered.encode("ascii"))
    return lambda m: match(m.header(key))


def _query(name: str, match: ValueMatcher) -> Predicate:
    return lambda m: match(m.query(name))


# Characters a path regex may start with that stand for themselves (the rest may be syntax): a regex's literal
# start is what a path it matches starts with, so the route table can index it as a prefix.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/-_~%:@!&',;=")
_QUANTIFIERS = frozenset("*+?{")


def _regex_literal(pattern: str) -> str:
    """The literal text every full match of ``pattern`` starts with ('' when it starts with syntax)."""
    if "|" in pattern:
        return ""  # an alternation may be at the top level: then no start is common to every match
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern) and pattern[i + 1] in ".-/":
            char, step = pattern[i + 1], 2  # an escaped character that is plain text
        elif char in _PLAIN:
            step = 1
        else:
            break
        if i + step < len(pattern) and pattern[i + step] in _QUANTIFIERS:
            break  # "ab*": the b is optional, so the literal ends before it
        out.append(char)
        i += step
    return "".join(out)


def path_literal(config: RouteMatchConfig) -> tuple[str, bool] | None:
    """What a path must be (``(path, True)``) or start with (``(prefix, False)``) for ``config`` to match it.

    None when the match says nothing usable of the path. The route table indexes routes by it; the route's own
    predicates still decide.
    """
    if config.path is not None:
        return config.path, True
    if config.path_prefix is not None:
        return config.path_prefix, False
    if config.path_regex is not None:
        literal = _regex_literal(config.path_regex)
        return (literal, False) if literal else None
    return None


def compile_match(config: RouteMatchConfig, rng: random.Random | None = None) -> tuple[Predicate, ...]:
    """Everything but the host (the route table indexes hosts), cheapest checks first.

    ``percent`` draws from ``rng`` (the mesh's, so a seed reproduces it), and is checked last: a route
    applies to that share of the requests its other conditions match, as Envoy's runtime_fraction.
    """
    preds: list[Predicate] = []
    if config.authority is not None:
        # httpx keeps the URL's authority, minus a default port, as netloc.
        netloc = config.authority.encode("ascii")
        preds.append(lambda m: m.request.url.netloc == netloc)
    if config.method is not None:
        methods = frozenset(config.method)
        preds.append(lambda m: m.request.method in methods)
    if config.path is not None:
        exact = config.path
        preds.append(lambda m: m.path == exact)
    elif config.path_prefix is not None:
        prefix = config.path_prefix
        preds.append(lambda m: m.path.startswith(prefix))
    elif config.path_regex is not None:
        fullmatch = re.compile(config.path_regex).fullmatch
        preds.append(lambda m: fullmatch(m.path) is not None)
    preds.extend(_header(name, compile_value(m)) for name, m in config.headers.items())
    preds.extend(_query(name, compile_value(m)) for name, m in config.query.items())
    if config.percent is not None and config.percent < 100:
        share, draw = config.percent, (rng or random.Random()).random
        preds.append(lambda m: share > 0 and draw() * 100 < share)
    return tuple(preds)
