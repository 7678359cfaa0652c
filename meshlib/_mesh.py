"""Mesh: holds the current Snapshot and the live state, and makes clients and transports that use them."""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import httpx

from meshlib._clock import Clock
from meshlib._config import records
from meshlib._config.models import MeshConfig
from meshlib._config.warnings import log_config_warnings
from meshlib._control.reload import ReloadStats, describe_failure, load_settled
from meshlib._control.watch import FileWatcher
from meshlib._discovery.config_source import effective_config, parse_document
from meshlib._discovery.manager import Discovery, check_registration, needs_discovery
from meshlib._errors import ConfigError
from meshlib._frontdoors.httpx_transport import AsyncMeshTransport, MeshTransport, quick_cookies, wrap
from meshlib._frontdoors.sidecar_client import AsyncSidecarTransport, SidecarTransport
from meshlib._hooks import Hooks, RetryEvent
from meshlib._snapshot.compile import Runtime, compile_snapshot
from meshlib._snapshot.snapshot import Snapshot
from meshlib._xds.merge import with_xds

if TYPE_CHECKING:
    import pybreaker

    from meshlib._frontdoors.asgi import ASGIApp
    from meshlib._frontdoors.wsgi import WSGIApp
    from meshlib._tls.cluster import ServerCredentials
    from meshlib._xds.manager import Xds
    from meshlib._xds.translate import Translation

__all__ = ["Mesh"]

logger = logging.getLogger("meshlib.config")

# Client keyword arguments that httpx uses only to build its default transport.
# The mesh builds that transport itself (as its inner sender), so they must go there.
_TRANSPORT_KWARGS = ("verify", "cert", "trust_env", "http1", "http2", "limits", "proxy")


def _split_client_kwargs(kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Take the inner transport and its settings out of client ``kwargs`` (which keep the rest)."""
    inner = kwargs.pop("transport", None)
    transport_kwargs = {k: kwargs.pop(k) for k in _TRANSPORT_KWARGS if k in kwargs}
    if inner is not None and transport_kwargs:
        raise TypeError(
            f"give either transport= or {', '.join(sorted(transport_kwargs))}=, not both: "
            "with your own transport, configure it directly"
        )
    if "trust_env" in transport_kwargs:
        kwargs["trust_env"] = transport_kwargs["trust_env"]
    return inner, transport_kwargs


Mode = Literal["in-process", "sidecar"]


def _sidecar_mode(mode: str, sidecar: str | None) -> bool:
    """Whether a client is to send through the sidecar; refuses a mode that is neither."""
    if mode == "sidecar":
        return True
    if mode != "in-process":
        raise ValueError(f"mode must be 'in-process' or 'sidecar', not {mode!r}")
    if sidecar is not None:
        raise TypeError("sidecar= needs mode='sidecar'")
    return False


def _split_sidecar_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the settings of the transport to the sidecar out of client ``kwargs`` (which keep the rest)."""
    # Each of these would send some requests past the sidecar, or to it in a way it does not expect.
    refused = sorted(k for k in ("transport", "mounts", "proxy") if k in kwargs)
    if refused:
        raise TypeError(f"{', '.join(refused)}= cannot be used with mode='sidecar': every request goes to the sidecar")
    transport_kwargs = {k: kwargs.pop(k) for k in _TRANSPORT_KWARGS if k in kwargs}
    if "trust_env" in transport_kwargs:
        # The client uses it for .netrc; since it gets a transport, it reads no proxy from the environment.
        kwargs["trust_env"] = transport_kwargs["trust_env"]
    return transport_kwargs


class Mesh:
    """A service mesh in your process: routes, splits and load-balances httpx traffic.

    Build it from a config, then make clients that send through it::

        mesh = meshlib.Mesh.from_file("mesh.yaml")
        with mesh, mesh.client() as client:
            client.get("http://reviews/api/reviews/1")

    Parameters:

    * **config** - a :class:`MeshConfig` (``Mesh()`` is an empty mesh that
      passes everything through).
    * **rng** - the random source for splits, load balancing, backoff jitter and faults
      (a seeded ``random.Random`` makes them reproducible in tests).
    * **clock** - the clock for backoff, budgets, deadlines, ejection and breaker recovery
      (``meshlib.testing.FakeClock`` moves them along without sleeping).
    * **breaker_listeners** - ``pybreaker.CircuitBreakerListener`` objects whose
      ``state_change(cb, old_state, new_state)`` is called when a cluster's breaker
      changes state (``cb.name`` is the cluster's name), across reloads.
    * **before_retry** - called with a :class:`meshlib.RetryEvent` before the backoff
      of each retry, like tenacity's ``before_sleep``.

    A hook runs in the request's thread or event loop, so it must be quick; an
    exception it raises is logged and the request goes on.

    Raises :class:`meshlib.ConfigError` (from the ``from_*`` constructors) when the config is invalid.
    """

    def __init__(
        self,
        config: MeshConfig | None = None,
        *,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        breaker_listeners: Iterable[pybreaker.CircuitBreakerListener] = (),
        before_retry: Callable[[RetryEvent], object] | None = None,
        _sidecar: bool = False,
    ) -> None:
        hooks = Hooks(tuple(breaker_listeners), before_retry)
        self._runtime = Runtime.create(clock=clock, rng=rng, hooks=hooks)
        # Held by a reload from start to swap, so reloads apply in the order they read their config.
        self._lock = threading.Lock()
        self._closed = False
        self._reloads = ReloadStats()
        self._watcher: FileWatcher | None = None
        # Mesh() passes everything through: the one empty config that needs no allow_empty from the user.
        self._local = config or MeshConfig(allow_empty=True)
        # Endpoints and config from past this machine (docs/discovery.md); the sidecar registers once listening.
        self._discovery: Discovery | None = None
        self._document_revision = 0
        self._sidecar = _sidecar
        # Routes, clusters and endpoints from an xDS control plane (docs/xds.md): compiled in beside the file's.
        self._xds: Xds | None = None
        self._base = effective = self._local  # the config before xDS's part is added
        if self._local.xds is not None:
            from meshlib._xds.manager import Xds  # here: grpc and the protos load only for a mesh with xDS

            self._xds = Xds(self._local.xds, self._apply_xds)
        if needs_discovery(self._local):
            effective = self._start_discovery(self._local, serving=1)
        try:
            self._snapshot = self._compile(effective, version=1)
        except BaseException:
            self.close()
            raise
        log_config_warnings(self._snapshot.config)
        if self._xds is not None:
            self._xds.gate.current = lambda: self._snapshot
            self._xds.start()
        if self._discovery is not None:
            self._discovery.run()
            register = self._discovery.register_config
            if register is not None and register.address is not None and not _sidecar:
                self._discovery.register(register.address)

    def _start_discovery(self, local: MeshConfig, *, serving: int) -> MeshConfig:
        """Build and start discovery for ``local``; the config to compile (``local`` with etcd's document, if any).

        ``serving`` is the version that serves if etcd's document is refused (the local file's).
        """
        check_registration(local, sidecar=self._sidecar)
        discovery = self._discovery = Discovery(local, self._rediscover)
        try:
            discovery.start(local)
        except BaseException:
            discovery.close()
            raise
        config = local
        if discovery.config_key is not None:
            _, self._document_revision = discovery.document()
            try:
                config = self._effective(local)
                document_error = None
            except ConfigError as exc:
                document_error = exc
            if discovery.document()[0] is not None:
                if document_error is None:
                    discovery.report(self._document_revision, version=1)
                else:  # the local file serves until a good document comes
                    self._reloads.refuse(serving, document_error)
                    discovery.report(self._document_revision, error=describe_failure(document_error))
        discovery.watch_dns(config)
        return config

    def _effective(self, local: MeshConfig) -> MeshConfig:
        """``local`` with the config document from etcd applied (ConfigError when that document is invalid)."""
        discovery = self._discovery
        key = discovery.config_key if discovery is not None else None
        if discovery is None or key is None:
            return local
        document, _ = discovery.document()
        if document is None:
            return local
        return effective_config(local, parse_document(document, key), key)

    def _compile(self, config: MeshConfig, *, version: int, xds: Translation | None = None) -> Snapshot:
        """Compile ``config`` (without xDS's part) with what discovery and xDS (``xds``, else the accepted) know now.

        Sets ``self._base`` to ``config`` when it compiles: a snapshot swapped in must be its compile's last.
        """
        discovered: dict[str, Any] = self._discovery.endpoints(config) if self._discovery is not None else {}
        full, gate = config, None
        if self._xds is not None:
            translation = xds if xds is not None else self._xds.translation
            full = with_xds(config, translation.config)
            discovered.update(translation.endpoints)
            gate = self._xds.gate
        snapshot = compile_snapshot(full, self._runtime, version=version, discovered=discovered, xds=gate)
        self._base = config
        return snapshot

    def _apply_xds(self, translation: Translation) -> None:
        """Compile and swap in a snapshot with ``translation`` (the xDS stream's thread); raises to NACK it."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this Mesh is closed")
            self._snapshot = self._compile(self._base, version=self._snapshot.version + 1, xds=translation)

    def _rediscover(self) -> None:
        """Compile again with the endpoints and config document discovery knows now (its applier thread calls it)."""
        discovery = self._discovery
        assert discovery is not None
        with self._lock:
            if self._closed:
                return
            _, revision = discovery.document()
            new_document = discovery.config_key is not None and revision != self._document_revision
            config = self._base
            if new_document:
                self._document_revision = revision
                try:
                    config = self._effective(self._local)
                except ConfigError as exc:
                    self._refuse_reload(exc)
                    discovery.report(revision, error=describe_failure(exc))
                    new_document = False
            try:
                discovery.watch_dns(config)
                snapshot = self._compile(config, version=self._snapshot.version + 1)
            except Exception as exc:
                self._refuse_reload(exc)
                if new_document:
                    discovery.report(revision, error=describe_failure(exc))
                return
            self._snapshot = snapshot
            if new_document:
                self._reloads.accept(f"from etcd key {discovery.config_key} at revision {revision}", snapshot.version)
                discovery.report(revision, version=snapshot.version, digest=snapshot.digest)
        discovery.forget_dns(config)
        if new_document:
            log_config_warnings(config)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, watch: bool = False, watch_interval: float = 1.0, **kwargs: Any
    ) -> Mesh:
        """A mesh from a YAML or JSON config file; keyword arguments pass to :class:`Mesh`.

        With ``watch=True`` a daemon thread checks the file every
        ``watch_interval`` seconds and reloads it when its content changes,
        as ``meshlib proxy`` does: an empty read is read again for about a
        second (editors truncate, then write), and a file that is invalid,
        empty or gone is refused, logged and counted in :meth:`stats`, while
        the config in force keeps serving. :meth:`close` stops the watching::

            with meshlib.Mesh.from_file("mesh.yaml", watch=True) as mesh:
                ...
        """
        if not watch:
            from meshlib._config.load import load_file  # here, as below: YAML loads with the first config read

            return cls(load_file(path), **kwargs)
        if watch_interval <= 0:
            raise ValueError(f"watch_interval must be above 0 seconds, not {watch_interval!r}")
        config, digest = load_settled(path, settle=0)
        mesh = cls(config, **kwargs)

        def reload() -> str | None:
            try:
                return mesh._reload(path)[1]
            except Exception:  # refused: logged and counted by _reload, and the old config serves on
                return None

        mesh._watcher = FileWatcher(path, reload, interval=watch_interval, loaded=digest)
        mesh._watcher.start()
        return mesh

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> Mesh:
        """A mesh from a config already parsed into a dict."""
        from meshlib._config.load import config_from_dict

        return cls(config_from_dict(data), **kwargs)

    @property
    def snapshot(self) -> Snapshot:
        """The compiled config in force now (replaced whole by :meth:`reload`)."""
        return self._snapshot

    @property
    def config(self) -> MeshConfig:
        """The config in force now."""
        return self._snapshot.config

    def reload(self, config: MeshConfig | dict[str, Any] | str | os.PathLike[str]) -> Snapshot:
        """Compile ``config`` and swap it in; requests in flight finish on the old snapshot.

        ``config`` is a :class:`MeshConfig`, a dict, or the path of a YAML or
        JSON file (a ``str`` is always a path). A file read empty or missing is
        read again for about a second first: an editor may be saving it.

        Live state (in-flight counts, counters, breakers) of clusters and
        endpoints that still exist is kept. An invalid config raises
        :class:`meshlib.ConfigError` and the current config stays in force;
        either way the reload is logged (logger ``meshlib.config``) and
        counted in :meth:`stats` under ``reloads``::

            mesh.reload("mesh.yaml")
        """
        return self._reload(config)[0]

    def _reload(self, config: MeshConfig | dict[str, Any] | str | os.PathLike[str]) -> tuple[Snapshot, str | None]:
        """:meth:`reload`, also returning the digest of the file loaded (None: not a file, or it changed meanwhile)."""
        source = os.fspath(config) if isinstance(config, str | os.PathLike) else None
        digest = None
        with self._lock:
            self._check_open()
            try:
                if source is not None:
                    config, digest = load_settled(source)
                elif not isinstance(config, MeshConfig):
                    from meshlib._config.load import config_from_dict

                    config = config_from_dict(config)
                assert isinstance(config, MeshConfig)
                if records.ACTIVE and config.config_source is not None:
                    # A config document from etcd is validated as it changes, here: that needs pydantic.
                    why = "a sidecar started without config_source serves without pydantic: restart it to use one"
                    raise ConfigError([("config_source", why)], source=source)
                local = config
                if self._discovery is None and needs_discovery(local):
                    effective = self._start_discovery(local, serving=self._snapshot.version)
                else:
                    effective = self._effective(local)
                    if self._discovery is not None:
                        self._discovery.watch_dns(effective)
                snapshot = self._compile(effective, version=self._snapshot.version + 1)
            except Exception as exc:
                self._refuse_reload(exc)
                raise
            self._local = local
            self._snapshot = snapshot
            self._reloads.accept(source, snapshot.version)  # under the lock: the log shows versions in order
        if self._discovery is not None:
            self._discovery.forget_dns(effective)
            self._discovery.run()
            if (local.registry, local.config_source) != (self._discovery.registry, self._discovery.config_source):
                logger.warning("registry and config_source changed: they apply after a restart")
        if local.xds != (self._xds.config if self._xds is not None else None):
            logger.warning("xds changed: it applies after a restart")
        log_config_warnings(effective)
        return snapshot, digest

    def _refuse_reload(self, error: BaseException) -> None:
        """Log and count a reload that failed (the config in force serves on)."""
        self._reloads.refuse(self._snapshot.version, error)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Mesh is closed")

    def transport(self, inner: httpx.BaseTransport | None = None, **transport_kwargs: Any) -> MeshTransport:
        """An ``httpx.BaseTransport`` through this mesh.

        ``inner`` does the I/O; by default ``httpx.HTTPTransport(**transport_kwargs)``.
        """
        self._check_open()
        return MeshTransport(self, inner if inner is not None else httpx.HTTPTransport(**transport_kwargs))

    def async_transport(
        self, inner: httpx.AsyncBaseTransport | None = None, **transport_kwargs: Any
    ) -> AsyncMeshTransport:
        """The async twin of :meth:`transport`."""
        self._check_open()
        return AsyncMeshTransport(self, inner if inner is not None else httpx.AsyncHTTPTransport(**transport_kwargs))

    def client(self, *, mode: Mode = "in-process", sidecar: str | None = None, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` whose requests go through this mesh; keyword arguments pass to httpx.

        ``transport=`` becomes the mesh's inner transport; ``verify``, ``cert``,
        ``http2``, ``limits``, ``proxy`` and ``trust_env`` configure it.
        Transports in ``mounts=`` are put behind the mesh too, as :func:`meshlib.wrap` does.

        ``mode="sidecar"`` sends every request through a running ``meshlib proxy``
        instead, at ``sidecar`` (default: ``$MESHLIB_SIDECAR``, else
        ``http://127.0.0.1:15001``); its error answers raise the same
        :class:`meshlib.MeshError` classes. The sidecar runs its own engine and
        config, so this mesh's config is not applied to these requests. There
        ``transport=``, ``mounts=`` and ``proxy=`` are refused, and proxies in the
        environment are ignored: every request goes to the sidecar.
        """
        self._check_open()
        if _sidecar_mode(mode, sidecar):
            return quick_cookies(
                httpx.Client(transport=SidecarTransport(sidecar, **_split_sidecar_kwargs(kwargs)), **kwargs)
            )
        inner, transport_kwargs = _split_client_kwargs(kwargs)
        return wrap(httpx.Client(transport=self.transport(inner, **transport_kwargs), **kwargs), self)

    def async_client(
        self, *, mode: Mode = "in-process", sidecar: str | None = None, **kwargs: Any
    ) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` whose requests go through this mesh, or the sidecar (see :meth:`client`)."""
        self._check_open()
        if _sidecar_mode(mode, sidecar):
            return quick_cookies(
                httpx.AsyncClient(transport=AsyncSidecarTransport(sidecar, **_split_sidecar_kwargs(kwargs)), **kwargs)
            )
        inner, transport_kwargs = _split_client_kwargs(kwargs)
        return wrap(httpx.AsyncClient(transport=self.async_transport(inner, **transport_kwargs), **kwargs), self)

    def stats(self) -> dict[str, Any]:
        """Live state per cluster, as plain data (what an admin endpoint or a test reads).

        For each cluster: ``endpoints`` (per URL: ``in_flight``, ``requests``,
        ``healthy``, ``ejected``, ``times_ejected``), ``counters`` (what the
        policies did: ``retries``, ``retry_budget_exhausted``, ``rate_limited``,
        ``breaker_open``, ``ejections``, ``hedges``, ``faults_aborted``, ...) and,
        when configured, ``circuit_breaker`` (``state``, ``in_flight``).
        ``reloads`` counts reloads ``accepted`` and ``refused``, with
        ``last_error``, why the last refused one was. ``certificates`` lists
        every certificate loaded for ``tls`` and ``inbound.mtls``, by field path
        (``clusters.reviews.tls.cert_file``): ``file``, ``subject``,
        ``spiffe_id``, ``serial``, ``not_before``, ``not_after`` and
        ``expires_in_seconds`` (negative once expired). ``observability`` has
        what each of ``tracing``, ``metrics`` and ``access_log`` reports when
        configured (spans exported and dropped, lines written and dropped).
        """
        snapshot = self._snapshot
        now = self._runtime.clock.monotonic()
        registry = self._runtime.registry
        clusters: dict[str, Any] = {}
        for name, cluster in snapshot.clusters.items():
            entry: dict[str, Any] = {
                "endpoints": {
                    e.url: {
                        "in_flight": e.state.in_flight,
                        "requests": e.state.total,
                        "healthy": e.state.healthy,
                        "ejected": e.state.ejected_until > now,
                        "times_ejected": e.state.times_ejected,
                    }
                    for e in cluster.endpoints
                },
                "counters": cluster.state.counters(),
            }
            breaker = registry.get("circuit_breaker", name)
            if breaker is not None:
                entry["circuit_breaker"] = {"state": breaker.state, "in_flight": breaker.in_flight}
            clusters[name] = entry
        stats = {
            "version": snapshot.version,
            "clusters": clusters,
            "reloads": self._reloads.as_dict(),
            "certificates": self._certificates(snapshot),
            "observability": self._runtime.observers.stats(),
        }
        if self._discovery is not None:
            stats["discovery"] = self._discovery.stats()
        if self._xds is not None:
            stats["xds"] = self._xds.stats()
        return stats

    def xds_config_dump(self) -> dict[str, Any] | None:
        """The xDS resources this mesh has accepted, by type, with their versions and the last NACK (None: no xDS).

        The ``xds`` part of the sidecar admin's ``/config_dump``, in Envoy's layout (docs/xds.md).
        """
        if self._xds is None:
            return None
        from meshlib._xds.config_dump import xds_config_dump

        return xds_config_dump(self._xds)

    def metrics_asgi_app(self) -> ASGIApp:
        """An ASGI app serving this mesh's metrics in Prometheus's text format, to mount where Prometheus scrapes.

        Needs ``metrics: {enabled: true}`` in the config; while the config in
        force (reloads included) does not enable metrics, the app answers 404
        saying so. It answers GET and HEAD at every path, so mount it at the
        path you scrape, e.g. with FastAPI or Starlette::

            app.mount("/metrics", mesh.metrics_asgi_app())

        The page has the golden signals per route, cluster and endpoint, the
        inbound side's (with ``meshlib.asgi.MeshMiddleware``) and the live
        state of :meth:`stats`; docs/observability.md lists every metric.
        """
        from meshlib._observe.metrics_apps import asgi_app  # here: prometheus_client loads only for a mesh that asks

        return asgi_app(self)

    def metrics_wsgi_app(self) -> WSGIApp:
        """The WSGI twin of :meth:`metrics_asgi_app`, e.g. for Flask with werkzeug's ``DispatcherMiddleware``::

        app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/metrics": mesh.metrics_wsgi_app()})
        """
        from meshlib._observe.metrics_apps import wsgi_app

        return wsgi_app(self)

    def admin_asgi_app(self) -> ASGIApp:
        """An ASGI app serving the live admin page of this mesh, the one ``meshlib proxy`` serves on its admin port.

        The page shows the routes and their split weights, each cluster's
        endpoints (health, ejection), breaker state, requests and errors per
        second, and the recent errors, polling ``ui/state`` (the same as JSON)
        every second. It is read-only (nothing reloads or drains) and loads
        nothing from elsewhere. Mount it where only operators reach, e.g. with
        FastAPI or Starlette::

            app.mount("/mesh", mesh.admin_asgi_app())  # then open /mesh/
        """
        from meshlib._admin_ui.asgi import AdminApp  # here: nothing of the page loads for a mesh that never shows it

        return AdminApp(self)

    def _server_credentials(self) -> ServerCredentials | None:
        """The TLS material of ``inbound.mtls`` in force (None when mTLS is off): the sidecar's inbound listener's."""
        inbound = self._snapshot.config.inbound
        if inbound is None or inbound.mtls is None or inbound.mtls.mode == "disable":
            return None
        credentials: ServerCredentials | None = self._runtime.registry.get("inbound_tls", "inbound")
        return credentials

    def _certificates(self, snapshot: Snapshot) -> dict[str, Any]:
        sources = [c.tls.source for c in snapshot.clusters.values() if c.tls is not None]
        inbound = self._runtime.registry.get("inbound_tls", "inbound")
        if inbound is not None:
            sources.append(inbound.source)
        if not sources:
            return {}
        from meshlib._tls.cluster import certificate_stats  # here: cryptography loads only for a mesh with TLS

        return certificate_stats(sources)

    def close(self) -> None:
        """Close the mesh: stop its background work and refuse new clients and transports.

        Health checks and file watching stop; mirroring and hedging stop too, but requests from
        clients made earlier still go through until those clients are closed.
        """
        if self._closed:
            return
        self._closed = True
        if self._discovery is not None:  # first: out of the registry before anything stops serving
            self._discovery.close()
        if self._xds is not None:
            self._xds.close()
        if self._watcher is not None:
            self._watcher.close()
        with self._lock:  # after a reload in progress, which would otherwise start health checks anew
            self._runtime.registry.close()
        self._runtime.storages.close()
        self._runtime.observers.close()  # flushes queued spans and log lines
        self._runtime.background.close()

    async def aclose(self) -> None:
        """The async twin of :meth:`close`."""
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
