"""The admin listener's handler: readiness, health, the active config, clusters, stats, reload and drain.

Served by the same HTTP server as the proxy listeners, on loopback only (the
config refuses anything else), because it can reload and drain the proxy:

* ``GET /`` - the live admin page (``meshlib/_admin_ui``): routes, clusters, rates and recent errors,
  polling ``GET /ui/state`` (its JSON) about every second
* ``GET /ready`` - 200 while serving, 503 while starting or draining
* ``GET /healthz`` - 200 while the process runs
* ``GET /config_dump`` - the active config as JSON, secrets redacted, with each route's filters, and under
  ``xds:`` every xDS resource with its accepted version and the last NACK's error (Envoy's layout)
* ``GET /clusters`` - endpoints with weight, health, ejection and in-flight counts, and breaker state
* ``GET /stats`` - counters of the clusters, the listeners and the reloads, the certificates loaded, and discovery's
  state (etcd connected or stale since, revision, registration, DNS), as JSON
* ``GET /metrics`` - the same and the per-request golden signals in Prometheus's text format, when the
  config has ``metrics: {enabled: true}`` (404 saying so otherwise); see ``meshlib/_observe/metrics.py``
* ``POST /reload`` - load the config file again: 200 once it serves, 400 with an invalid config's
  errors, 500 (one line) for a failure that is not the config's; the old config serves on unless 200.
  The reload runs off the event loop, so the proxy keeps serving meanwhile
* ``POST /drain`` - stop accepting, let requests in flight finish, then exit

Under ``--workers N``, ``/stats``, ``/clusters``, ``/metrics`` and the page cover every
worker: the other workers' own ``/stats`` are fetched and merged
(``aggregate.py``), their ``/metrics`` request counts added to worker 0's, and
``/reload`` answers 200 only once every worker runs the new config (see ``process.py``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from meshlib._admin_ui.state import PAGE_HEADERS, add_error_stats, asset, merge_recent_errors, ui_state
from meshlib._config.redact import redact_config, redact_url
from meshlib._control.reload import describe_failure
from meshlib._errors import ConfigError
from meshlib._mesh import Mesh
from meshlib._sidecar.aggregate import merge_stats

__all__ = ["AdminTarget", "ReloadAnswer", "admin_handler", "reload_answer"]


@dataclass(frozen=True, slots=True)
class ReloadAnswer:
    """What ``POST /reload`` answers: a status and a JSON body (``reloaded`` and ``message``, and more)."""

    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == 200


def reload_answer(error: BaseException | None = None, *, version: int = 0, digest: str = "") -> ReloadAnswer:
    """One process's answer: 200 when the new config serves, 400 with an invalid config's errors, or 500
    with one line for any other failure. ``version`` and ``digest`` are those of the config serving now
    (the new one, or the old one that serves on)."""
    serving = {"version": version, "digest": digest}
    if error is None:
        return ReloadAnswer(200, {"reloaded": True, "message": f"config version {version}", **serving})
    if isinstance(error, ConfigError):  # its errors keep their lines, one per field path
        return ReloadAnswer(400, {"reloaded": False, "message": str(error), **serving})
    return ReloadAnswer(500, {"reloaded": False, "message": describe_failure(error), **serving})


class AdminTarget(Protocol):
    """What the admin endpoints act on: the running proxy."""

    mesh: Mesh

    @property
    def ready(self) -> bool: ...

    def listener_stats(self) -> dict[str, Any]: ...

    async def reload(self) -> ReloadAnswer:
        """Reload the config file, in every worker: 200 once the new config serves everywhere, else why not.

        Must not block the event loop: a reload may wait out an empty read (about a second).
        """
        ...

    def drain(self) -> str:
        """Start a graceful drain; returns what was done."""
        ...

    async def peer_stats(self) -> tuple[list[tuple[int, dict[str, Any]]], list[int]]:
        """The other workers' own ``/stats`` (index, document), and the indexes of those that did not answer.

        Both empty for a single process, and for a worker other than 0.
        """
        ...

    async def peer_metrics(self) -> tuple[list[str], list[int]]:
        """The other workers' own ``/metrics`` pages, and the indexes of those that did not answer 200.

        Both empty for a single process, and for a worker other than 0.
        """
        ...


def _json(status: int, body: Any) -> httpx.Response:
    return httpx.Response(status, content=json.dumps(body, indent=2).encode() + b"\n", headers=_JSON)


def _text(status: int, body: str) -> httpx.Response:
    return httpx.Response(status, content=body.encode() + b"\n", headers=_TEXT)


_JSON = {"content-type": "application/json"}
_TEXT = {"content-type": "text/plain; charset=utf-8"}


def config_dump(mesh: Mesh) -> dict[str, Any]:
    """The active config (redacted) and how it compiled: each route's filters and legs."""
    snapshot = mesh.snapshot
    routes = []
    for route in snapshot.routes.routes:
        routes.append(
            {
                "name": route.name,
                "filters": [f.name for f in route.filters],
                "legs": {name: leg.filter_names for name, leg in route.legs.items()},
            }
        )
    dump = {
        "version": snapshot.version,
        "digest": snapshot.digest,
        "config": redact_config(mesh.config),
        "routes": routes,
    }
    xds = mesh.xds_config_dump()
    if xds is not None:
        dump["xds"] = xds
    return dump


def clusters(mesh: Mesh, stats: dict[str, Any]) -> dict[str, Any]:
    """Per cluster: endpoints (weight, health, ejection, in-flight) and breaker state, from ``stats["clusters"]``."""
    live_clusters = stats["clusters"]
    out: dict[str, Any] = {}
    for name, cluster in mesh.config.clusters.items():
        live = live_clusters.get(name, {})
        endpoints = live.get("endpoints", {})
        out[name] = {
            "lb": cluster.lb,
            "endpoints": {
                redact_url(e.url): {"weight": e.weight, **endpoints.get(e.url, {})} for e in cluster.endpoints
            },
            "circuit_breaker": live.get("circuit_breaker"),
        }
    return out


def admin_handler(target: AdminTarget) -> Callable[[httpx.Request], Awaitable[httpx.Response]]:
    """The admin listener's request handler."""

    async def stats() -> dict[str, Any]:
        mesh = target.mesh
        # With each cluster's error counts and the recent errors: what the admin page shows, merged like the rest.
        own = add_error_stats(mesh.stats(), mesh)
        own.update(digest=mesh.snapshot.digest, listeners=target.listener_stats())
        peers, missing = await target.peer_stats()
        if not (peers or missing):
            return own
        # Every worker reloads the same file: worker 0's counts speak for the proxy (each one's are under workers),
        # as do its certificates (every worker reads the same files).
        docs = [(0, own), *peers]
        merged = merge_stats(docs, missing)
        return {
            **merged,
            "digest": own["digest"],
            "reloads": own["reloads"],
            "certificates": own["certificates"],
            "recent_errors": merge_recent_errors(docs),
            **({"discovery": own["discovery"]} if "discovery" in own else {}),  # worker 0 registers; each watches
        }

    async def ready() -> httpx.Response:
        return _text(200, "ready") if target.ready else _text(503, "not ready")

    async def healthz() -> httpx.Response:
        return _text(200, "ok")

    async def dump() -> httpx.Response:
        return _json(200, config_dump(target.mesh))

    async def stats_response() -> httpx.Response:
        return _json(200, await stats())

    async def clusters_response() -> httpx.Response:
        merged = await stats()
        response = _json(200, clusters(target.mesh, merged))
        if merged.get("workers_missing"):  # the body is keyed by cluster: say it here
            response.headers["x-meshlib-workers-missing"] = ",".join(map(str, merged["workers_missing"]))
        return response

    async def metrics_response() -> httpx.Response:
        # Here: prometheus_client loads only for a proxy whose config enables metrics and that is scraped.
        from meshlib._observe import metrics

        observer = metrics.observer_of(target.mesh)
        if observer is None:
            return _text(404, metrics.NOT_ENABLED)
        merged, (pages, missing) = await asyncio.gather(stats(), target.peer_metrics())
        # Every worker's requests added up, and the live state merged as /stats merges it: one target, no worker label.
        body = metrics.exposition(observer, merged, pages)
        response = httpx.Response(200, content=body, headers={"content-type": metrics.CONTENT_TYPE})
        absent = sorted({*merged.get("workers_missing", ()), *missing})
        if absent:
            response.headers["x-meshlib-workers-missing"] = ",".join(map(str, absent))
        return response

    async def reload() -> httpx.Response:
        try:
            answer = await target.reload()
        except Exception as exc:  # a bug outside the mesh's own reload, which logs and counts its failures itself
            target.mesh._refuse_reload(exc)
            serving = target.mesh.snapshot
            answer = reload_answer(exc, version=serving.version, digest=serving.digest)
        return _json(answer.status, answer.body)

    async def drain() -> httpx.Response:
        return _json(202, {"draining": True, "message": target.drain()})

    async def ui_state_response() -> httpx.Response:
        response = _json(200, ui_state(target.mesh, await stats()))
        response.headers["cache-control"] = "no-store"
        return response

    def static(path: str) -> Callable[[], Awaitable[httpx.Response]]:
        found = asset(path)
        assert found is not None
        body, content_type = found

        async def serve() -> httpx.Response:
            return httpx.Response(200, content=body, headers={"content-type": content_type, **PAGE_HEADERS})

        return serve

    routes: dict[tuple[str, str], Callable[[], Awaitable[httpx.Response]]] = {
        ("GET", "/ready"): ready,
        ("GET", "/healthz"): healthz,
        ("GET", "/config_dump"): dump,
        ("GET", "/clusters"): clusters_response,
        ("GET", "/stats"): stats_response,
        ("GET", "/metrics"): metrics_response,
        ("POST", "/reload"): reload,
        ("POST", "/drain"): drain,
        ("GET", "/ui/state"): ui_state_response,
        **{("GET", path): static(path) for path in ("/", "/ui/app.js", "/ui/style.css")},
    }
    paths = {path for _, path in routes}

    async def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        action = routes.get((request.method, path))
        if action is not None:
            return await action()
        if path in paths:
            allowed = ", ".join(sorted(m for m, p in routes if p == path))
            return httpx.Response(405, content=b"method not allowed\n", headers={**_TEXT, "allow": allowed})
        return _text(
            404,
            f"no admin endpoint {path}; try / (the admin page), /ready, /healthz, /config_dump, /clusters, /stats,"
            " /metrics",
        )

    return handle
