"""Compiled request predicates: method, path, header and query matchers, cheapest first."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from meshlib._config.models import RouteMatchConfig, StringMatchConfig

__all__ = ["Predicate", "ValueMatcher", "compile_match", "compile_value", "host_matches"]

ValueMatcher = Callable[[str | None], bool]
Predicate = Callable[[httpx.Request, str], bool]
"""Called with the request and its percent-encoded path (computed once per request)."""


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


def host_matches(pattern: str, host: str) -> bool:
    """``*`` matches any host; ``*.example.com`` matches ``a.example.com`` but not ``example.com``."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def _header(name: str, match: ValueMatcher) -> Predicate:
    # httpx joins repeated headers with ", ", the same view Envoy's matchers get.
    return lambda request, path: match(request.headers.get(name))


def _query(name: str, match: ValueMatcher) -> Predicate:
    return lambda request, path: match(request.url.params.get(name))


def compile_match(config: RouteMatchConfig) -> tuple[Predicate, ...]:
    """Everything but the host (the route table indexes hosts), cheapest checks first."""
    preds: list[Predicate] = []
    if config.method is not None:
        methods = frozenset(config.method)
        preds.append(lambda request, path: request.method in methods)
    if config.path is not None:
        exact = config.path
        preds.append(lambda request, path: path == exact)
    elif config.path_prefix is not None:
        prefix = config.path_prefix
        preds.append(lambda request, path: path.startswith(prefix))
    elif config.path_regex is not None:
        fullmatch = re.compile(config.path_regex).fullmatch
        preds.append(lambda request, path: fullmatch(path) is not None)
    preds.extend(_header(name, compile_value(m)) for name, m in config.headers.items())
    preds.extend(_query(name, compile_value(m)) for name, m in config.query.items())
    return tuple(preds)
