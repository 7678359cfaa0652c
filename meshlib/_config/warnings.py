"""Settings that load but can never take effect: found on a valid config, reported, never fatal.

``meshlib validate`` prints them and a Mesh logs them (logger ``meshlib.config``)
each time it loads a config. Each check is exact: it warns only where the
setting provably never applies.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

from meshlib._config.base import Loc, format_loc
from meshlib._config.durations import format_duration as _d
from meshlib._config.hosts import host_matches
from meshlib._config.models import (
    ClusterConfig,
    MeshConfig,
    RouteConfig,
    RouteMatchConfig,
    StringMatchConfig,
    route_clusters,
)
from meshlib._config.resilience import needs_codes

__all__ = ["config_warnings", "log_config_warnings"]

logger = logging.getLogger("meshlib.config")

Found = Iterator[tuple[Loc, str]]


def config_warnings(config: MeshConfig) -> list[tuple[str, str]]:
    """``(field_path, message)`` for each setting of ``config`` that can never take effect, in config order."""
    found: list[tuple[Loc, str]] = []
    for name, cluster in config.clusters.items():
        found += _cluster_timeouts(name, cluster)
    for i, route in enumerate(config.routes):
        found += _route_timeouts(config, i, route)
        found += _retry_codes(config, i, route)
        found += _mirror(config, i, route)
        found += _shadowed(config, i, route)
    unique = dict.fromkeys((format_loc(loc), message) for loc, message in found)
    return list(unique)


def log_config_warnings(config: MeshConfig) -> None:
    """Log each of ``config``'s warnings once, at WARNING on ``meshlib.config``."""
    for path, message in config_warnings(config):
        logger.warning("%s: %s", path, message)


def _cluster_timeouts(name: str, cluster: ClusterConfig) -> Found:
    timeout, retry, hedge = cluster.timeout, cluster.retry, cluster.hedge
    if timeout is None:
        return
    per_try = retry.per_try_timeout if retry is not None else None
    if per_try is not None and per_try >= timeout:
        yield ("clusters", name, "retry", "per_try_timeout"), _per_try_message(per_try, timeout)
    if hedge is not None and hedge.after >= timeout:
        yield ("clusters", name, "hedge", "after"), _hedge_message(hedge.after, timeout)


def _per_try_message(per_try: float, timeout: float, of: str = "") -> str:
    return (
        f"per_try_timeout {_d(per_try)} is not shorter than timeout {_d(timeout)}{of}:"
        " the whole request times out first, so it never applies"
    )


def _hedge_message(after: float, timeout: float, of: str = "") -> str:
    return (
        f"hedge.after {_d(after)} is not shorter than timeout {_d(timeout)}{of}:"
        " the request times out before a hedge is sent"
    )


def _route_timeouts(config: MeshConfig, i: int, route: RouteConfig) -> Found:
    """What the route's own settings cause; the cluster's alone are warned about once, on the cluster."""
    for target in route_clusters(route):
        cluster = config.clusters[target]
        of = f" (of cluster {target!r})"
        if route.timeout is not None:
            timeout, timeout_of = route.timeout, ""
        elif cluster.timeout is not None:
            timeout, timeout_of = cluster.timeout, of
        else:
            continue
        retry = route.retry or cluster.retry
        per_try = retry.per_try_timeout if retry is not None else None
        if per_try is not None and per_try >= timeout:
            if route.retry is not None:
                yield ("routes", i, "retry", "per_try_timeout"), _per_try_message(per_try, timeout, timeout_of)
            elif route.timeout is not None:
                message = (
                    f"timeout {_d(timeout)} is not longer than retry.per_try_timeout {_d(per_try)}{of}:"
                    " the whole request times out first, so the per-try timeout never applies"
                )
                yield ("routes", i, "timeout"), message
        hedge = route.hedge or cluster.hedge
        if hedge is not None and hedge.after >= timeout:
            if route.hedge is not None:
                yield ("routes", i, "hedge", "after"), _hedge_message(hedge.after, timeout, timeout_of)
            elif route.timeout is not None:
                message = (
                    f"timeout {_d(timeout)} is not longer than hedge.after {_d(hedge.after)}{of}:"
                    " the request times out before a hedge is sent"
                )
                yield ("routes", i, "timeout"), message


def _retry_codes(config: MeshConfig, i: int, route: RouteConfig) -> Found:
    """A route retry taking its codes from its clusters, some of which name none (all naming none is an error)."""
    if route.retry is None or not needs_codes(route.retry):
        return
    for target in route_clusters(route):
        cluster_retry = config.clusters[target].retry
        if cluster_retry is None or not cluster_retry.retriable_status_codes:
            message = (
                f"retry_on lists retriable-status-codes with no codes of its own, and cluster {target!r}'s retry"
                " names none: requests this route sends there retry no status code"
            )
            yield ("routes", i, "retry", "retry_on"), message


def _mirror(config: MeshConfig, i: int, route: RouteConfig) -> Found:
    if route.mirror is None:
        return
    shadow = route.mirror.cluster
    if shadow not in config.clusters:
        yield ("routes", i, "mirror", "cluster"), f"mirror cluster {shadow!r} is not defined: nothing is mirrored"
    elif shadow in route_clusters(route):
        message = f"mirror cluster {shadow!r} is a cluster this route sends to: its requests reach it twice"
        yield ("routes", i, "mirror", "cluster"), message


def _shadowed(config: MeshConfig, i: int, route: RouteConfig) -> Found:
    """A route that an earlier route, matching every request it matches, always takes first."""
    for j, earlier in enumerate(config.routes[:i]):
        if _covers(earlier.match, route.match):
            name = f" ({earlier.name!r})" if earlier.name else ""
            yield ("routes", i), f"never matches: every request it matches is taken first by routes[{j}]{name}"
            return


def _covers(wide: RouteMatchConfig, narrow: RouteMatchConfig) -> bool:
    """Whether every request ``narrow`` matches also matches ``wide`` (False when that is not certain)."""
    return (
        _host_covers(wide.host, narrow.host)
        and _path_covers(wide, narrow)
        and (wide.method is None or (narrow.method is not None and set(narrow.method) <= set(wide.method)))
        and all(name in narrow.headers and _value_covers(m, narrow.headers[name]) for name, m in wide.headers.items())
        and all(name in narrow.query and _value_covers(m, narrow.query[name]) for name, m in wide.query.items())
    )


def _host_covers(wide: str | None, narrow: str | None) -> bool:
    if wide is None or wide == "*":
        return True
    if narrow is None or narrow == "*":
        return False
    if narrow.startswith("*."):  # every host ending in .b.c also ends in .c
        return wide.startswith("*.") and narrow[1:].endswith(wide[1:])
    return host_matches(wide, narrow)


def _path_covers(wide: RouteMatchConfig, narrow: RouteMatchConfig) -> bool:
    if wide.path is not None:
        return narrow.path == wide.path
    if wide.path_prefix is not None:
        longer = narrow.path if narrow.path is not None else narrow.path_prefix
        return longer is not None and longer.startswith(wide.path_prefix)
    if wide.path_regex is not None:
        if narrow.path is not None:
            return re.fullmatch(wide.path_regex, narrow.path) is not None
        return narrow.path_regex == wide.path_regex
    return True


def _value_covers(wide: StringMatchConfig, narrow: StringMatchConfig) -> bool:
    """Whether every header or query value ``narrow`` accepts (None: absent) ``wide`` accepts too."""
    if wide == narrow or (wide.present and narrow.absent is None):
        return True  # every matcher but absent needs a value
    known = narrow.exact if narrow.exact is not None else narrow.prefix
    if wide.prefix is not None and known is not None:
        return known.startswith(wide.prefix)
    if wide.regex is not None and narrow.exact is not None:
        return re.fullmatch(wide.regex, narrow.exact) is not None
    return False
