"""What the admin page shows, as JSON: routes and their split weights, clusters with their endpoints and
breaker, counts for the page's rates, and the recent errors.

Built from a ``/stats`` document (``Mesh.stats()`` plus :func:`add_error_stats`), so that under
``meshlib proxy --workers N`` the page shows the merged document of every worker, as ``/stats`` does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from meshlib._config.models import RouteMatchConfig
from meshlib._upstream.recent_errors import RECENT_ERRORS

if TYPE_CHECKING:
    from meshlib._mesh import Mesh

__all__ = ["ASSETS", "add_error_stats", "asset", "merge_recent_errors", "ui_state"]

# Path on the admin listener (or under the mounted app) → (file in static/, content type).
ASSETS: Final[dict[str, tuple[str, str]]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/style.css": ("style.css", "text/css; charset=utf-8"),
}
STATE_PATH: Final = "/ui/state"
# The page loads nothing from elsewhere: no CDN, so it works offline, and nothing else may run in it.
PAGE_HEADERS: Final = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}
_cache: dict[str, bytes] = {}


def asset(path: str) -> tuple[bytes, str] | None:
    """The body and content type of the static file served at ``path``, or None."""
    found = ASSETS.get(path)
    if found is None:
        return None
    name, content_type = found
    body = _cache.get(name)
    if body is None:
        body = _cache[name] = resources.files(__package__).joinpath("static", name).read_bytes()
    return body, content_type


def add_error_stats(doc: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
    """Add each cluster's ``errors`` and ``refused`` and the mesh's ``recent_errors`` (oldest first) to ``doc``,
    a ``Mesh.stats()`` document of ``mesh``; returns ``doc``."""
    snapshot = mesh.snapshot
    for name, entry in doc.get("clusters", {}).items():
        cluster = snapshot.clusters.get(name)
        if cluster is not None:
            entry.update(cluster.state.error_counts())
    doc["recent_errors"] = [r.as_dict() for r in mesh._runtime.registry.recent_errors.records()]
    return doc


def merge_recent_errors(docs: Sequence[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The newest recent errors of several workers' documents, oldest first, each with its ``worker``."""
    merged = [{**error, "worker": index} for index, doc in docs for error in doc.get("recent_errors", ())]
    merged.sort(key=lambda error: error.get("time", 0.0))
    return merged[-RECENT_ERRORS:]


def _describe_match(match: RouteMatchConfig) -> list[str]:
    """The route's conditions in words; header and query values are left out (they may be credentials)."""
    out = []
    if match.host is not None:
        out.append(f"host {match.host}")
    for key in ("path", "path_prefix", "path_regex"):
        value = getattr(match, key)
        if value is not None:
            out.append(f"{key} {value}")
    if match.method:
        out.append("method " + ",".join(match.method))
    out.extend(f"header {name}" for name in match.headers)
    out.extend(f"query {name}" for name in match.query)
    return out


def _routes(mesh: Mesh) -> list[dict[str, Any]]:
    snapshot = mesh.snapshot
    routes = []
    for route in snapshot.routes.routes:
        config = None if route.implicit else snapshot.config.routes[route.index]
        entry: dict[str, Any] = {
            "name": route.name,
            "implicit": route.implicit,
            "match": _describe_match(config.match) if config is not None else [f"host {route.host}"],
            "split": [],
            "direct_response": None,
        }
        if config is not None and config.direct_response is not None:
            entry["direct_response"] = config.direct_response.status
        else:
            legs = [(s.cluster, s.weight) for s in config.split] if config is not None and config.split else []
            legs = legs or [(cluster, 1) for cluster in route.clusters]
            total = sum(weight for _, weight in legs) or 1
            entry["split"] = [
                {"cluster": cluster, "weight": weight, "percent": round(weight * 100 / total, 2)}
                for cluster, weight in legs
            ]
        routes.append(entry)
    return routes


def ui_state(mesh: Mesh, stats: dict[str, Any]) -> dict[str, Any]:
    """The admin page's document for ``mesh``, its live state taken from ``stats`` (a ``/stats`` document)."""
    snapshot = mesh.snapshot
    clusters: dict[str, Any] = {}
    live_clusters = stats.get("clusters", {})
    for name, config in snapshot.config.clusters.items():
        live = live_clusters.get(name, {})
        live_endpoints = live.get("endpoints", {})
        endpoints = []
        for e in config.endpoints:
            found = live_endpoints.get(e.url, {})
            endpoints.append(
                {
                    "url": e.url,  # validated as scheme://host[:port]: no credential to hide
                    "weight": e.weight,
                    "healthy": found.get("healthy", True),
                    "ejected": found.get("ejected", False),
                    "times_ejected": found.get("times_ejected", 0),
                    "in_flight": found.get("in_flight", 0),
                    "requests": found.get("requests", 0),
                }
            )
        breaker = live.get("circuit_breaker")
        clusters[name] = {
            "lb": config.lb,
            "breaker": breaker.get("state") if isinstance(breaker, dict) else None,
            "endpoints": endpoints,
            # Tries sent to the endpoints, plus the requests refused before any (the page's requests per second).
            "requests": sum(e["requests"] for e in endpoints),
            "refused": live.get("refused", 0),
            "errors": live.get("errors", 0),
        }
    recent = list(reversed(stats.get("recent_errors", [])))  # newest first
    workers = stats.get("workers")
    return {
        "service": snapshot.config.service,
        "version": stats.get("version", snapshot.version),
        "digest": snapshot.digest,
        "now": time.time(),
        "clock": time.monotonic(),  # for the page's rates: seconds between two states
        "workers": len(workers) if isinstance(workers, list) else 1,
        "workers_missing": stats.get("workers_missing", []),
        "routes": _routes(mesh),
        "clusters": clusters,
        "recent_errors": recent,
    }
