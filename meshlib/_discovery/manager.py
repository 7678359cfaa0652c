"""Discovery: everything one mesh learns from past its machine, and when to recompile because of it.

It owns the DNS watchers (one per DNS cluster), the etcd view (one
list-then-watch of the prefix, :class:`EtcdWatch`), this workload's
registration, the config document of ``config_source`` and the snapshot file.
Whatever changes, it sets one flag; an applier thread calls the mesh back
(``apply``) to compile a snapshot from the config and the endpoints known
*then*, so a burst of changes costs one compile, not one per change. The
snapshot swap itself is the mesh's, as for a file reload: requests in flight
finish on the old snapshot, so an endpoint that leaves is drained, not cut,
and endpoints that stay keep their health and outlier state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from meshlib._config.discovery import DnsDiscoveryConfig, EtcdConfig, RegisterConfig
from meshlib._config.models import MeshConfig
from meshlib._errors import ConfigError, DiscoveryError

if TYPE_CHECKING:
    from meshlib._discovery.dns import DnsWatcher
    from meshlib._discovery.etcd_client import EtcdClient
    from meshlib._discovery.etcd_watch import EtcdWatch
    from meshlib._discovery.registration import Instance, Registration
    from meshlib._discovery.snapshot_file import SnapshotFile

__all__ = ["APPLY_INTERVAL", "Discovery", "check_registration", "needs_discovery"]

logger = logging.getLogger("meshlib.discovery")

# The least time between two snapshots discovery swaps in: a burst of changes becomes one compile.
APPLY_INTERVAL: Final = 0.2


def needs_discovery(config: MeshConfig) -> bool:
    """Whether ``config`` asks for anything past one machine (else a mesh builds no :class:`Discovery`)."""
    return (
        config.registry is not None
        or config.config_source is not None
        or any(c.discovery is not None and c.discovery.xds is None for c in config.clusters.values())
    )


class Discovery:
    """The discovered endpoints and config document of one mesh, kept current by background threads.

    ``apply()`` is the mesh's "compile again with what you know now"; it runs
    on this object's applier thread, never on a watcher's.
    """

    def __init__(self, local: MeshConfig, apply: Callable[[], None]) -> None:
        self._apply = apply
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._closed = threading.Event()
        self._dns_lock = threading.Lock()  # reloads and the applier thread both add and drop watchers
        self._dns: dict[str, DnsWatcher] = {}
        self._dns_configs: dict[str, DnsDiscoveryConfig] = {}
        registry = local.registry
        self._etcd_config: EtcdConfig | None = registry.etcd if registry is not None else None
        self._register_config: RegisterConfig | None = registry.register_ if registry is not None else None
        self.registry = local.registry
        self.config_source = source = local.config_source
        self.config_key: str | None = None
        if source is not None and self._etcd_config is not None:
            key = source.etcd.key
            self.config_key = key if key.startswith("/") else self._etcd_config.prefix + key
        self._client: EtcdClient | None = None
        self._watch: EtcdWatch | None = None
        self._snapshot_file: SnapshotFile | None = None
        self._registration: Registration | None = None
        self._started_from_snapshot = False
        # Derived from the etcd view at each change: registrations by key, and the config document.
        self._instances: dict[str, Instance] = {}
        self._by_service: dict[str, list[Instance]] = {}
        self._parsed: dict[tuple[str, bytes], Instance | None] = {}
        self._document: bytes | None = None
        self._document_revision = 0
        self._etcd_revision = 0  # of the last change the watch reported
        self._refreshed_revision = -1  # of the view the registrations above were read from
        self._refreshing = threading.Lock()
        self._config_status: dict[str, Any] = {}
        self._applier = threading.Thread(target=self._apply_loop, name="meshlib-discovery", daemon=True)

    # --- start and stop ------------------------------------------------------------------------------------------

    def start(self, config: MeshConfig) -> None:
        """Learn what there is to learn before the first compile: list etcd (or load the snapshot), resolve DNS.

        Raises :class:`DiscoveryError` when etcd can't be listed within
        ``start_timeout`` and there is no snapshot to start from.
        """
        if self._etcd_config is not None:
            self._start_etcd(self._etcd_config)
        self.watch_dns(config)

    def run(self) -> None:
        """Start calling ``apply`` on changes (once the mesh has its first snapshot); again is a no-op."""
        if not self._applier.is_alive() and not self._closed.is_set():
            self._applier.start()

    def _start_etcd(self, etcd: EtcdConfig) -> None:
        from meshlib._discovery.etcd_client import EtcdClient, EtcdError, EtcdUnavailable
        from meshlib._discovery.etcd_watch import EtcdWatch, backoff
        from meshlib._discovery.snapshot_file import SnapshotFile

        self._client = client = EtcdClient.from_config(etcd)
        self._watch = watch = EtcdWatch(client, etcd.prefix, self._etcd_changed)
        self._snapshot_file = SnapshotFile(etcd.snapshot) if etcd.snapshot else None
        saved = self._snapshot_file.load() if self._snapshot_file is not None else None
        deadline = time.monotonic() + etcd.start_timeout
        attempt = 0
        while True:
            try:
                watch.list_once()
                break
            except EtcdUnavailable as exc:
                if saved is not None:
                    logger.warning("etcd unreachable at start (%s): starting from the snapshot %s", exc, etcd.snapshot)
                    self._started_from_snapshot = True
                    watch.seed(*saved)
                    watch.start(listed=False)
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    client.close()
                    where = f"; no snapshot at {etcd.snapshot}" if etcd.snapshot else " and no snapshot is configured"
                    raise DiscoveryError(
                        f"etcd unreachable for {etcd.start_timeout:g}s at start{where}: {exc}"
                    ) from None
                time.sleep(min(left, max(backoff(attempt), 0.05)))
                attempt += 1
            except EtcdError as exc:  # etcd answered, and said no (credentials, permissions): no point waiting
                client.close()
                raise DiscoveryError(f"etcd refused to list {etcd.prefix}: {exc}") from None
        watch.start(listed=True)

    def register(self, address: str) -> None:
        """Announce this workload at ``address`` (the sidecar calls it once listening; a mesh in process at start)."""
        if self._register_config is None or self._client is None or self._registration is not None:
            return
        from meshlib._discovery.registration import Registration

        assert self._etcd_config is not None
        self._registration = Registration(self._client, self._etcd_config.prefix, self._register_config, address)
        self._registration.start()

    @property
    def register_config(self) -> RegisterConfig | None:
        return self._register_config

    def deregister(self) -> None:
        """Take this workload out of the registry now (graceful shutdown: before draining)."""
        registration = self._registration
        if registration is not None:
            registration.deregister()

    def close(self) -> None:
        """Deregister first (callers stop sending), then stop every watcher and save the snapshot."""
        self.deregister()
        self._closed.set()
        self._changed.set()
        with self._dns_lock:
            watchers = list(self._dns.values())
        for watcher in watchers:
            watcher.close()
        if self._watch is not None:
            self._watch.close()
        if self._snapshot_file is not None:
            self._snapshot_file.close()
        if self._client is not None:
            self._client.close()
        if self._applier.is_alive() and self._applier is not threading.current_thread():
            self._applier.join(timeout=5)

    # --- what is known -------------------------------------------------------------------------------------------

    def endpoints(self, config: MeshConfig) -> dict[str, tuple[str, ...]]:
        """The endpoint URLs of each cluster of ``config`` with ``discovery``, as known now."""
        self._refresh()
        found: dict[str, tuple[str, ...]] = {}
        with self._lock:
            by_service = self._by_service
        for name, cluster in config.clusters.items():
            discovery = cluster.discovery
            if discovery is None:
                continue
            if discovery.dns is not None:
                with self._dns_lock:
                    watcher = self._dns.get(name)
                found[name] = watcher.endpoints if watcher is not None else ()
            elif discovery.etcd is not None:
                instances = by_service.get(discovery.etcd.service, ())
                labels = discovery.etcd.labels.items()
                found[name] = tuple(sorted({i.address for i in instances if labels <= i.labels.items()}))
        return found

    def document(self) -> tuple[bytes | None, int]:
        """The config document's bytes (None: no key, or no config source) and the revision it was read at."""
        self._refresh()
        with self._lock:
            return self._document, self._document_revision

    def watch_dns(self, config: MeshConfig) -> None:
        """Watch the DNS name of each cluster of ``config`` (a new one resolved once before it returns)."""
        from meshlib._discovery.dns import DnsWatcher

        with self._dns_lock:
            for name, cluster in config.clusters.items():
                dns = cluster.discovery.dns if cluster.discovery is not None else None
                if dns is None or self._dns_configs.get(name) == dns:
                    continue
                watcher = DnsWatcher(name, dns, self._dns_changed)
                watcher.resolve()
                watcher.start()
                old = self._dns.get(name)
                self._dns[name] = watcher
                self._dns_configs[name] = dns
                if old is not None:
                    old.close()

    def forget_dns(self, config: MeshConfig) -> None:
        """Stop the DNS watchers of clusters ``config`` no longer resolves by DNS."""
        with self._dns_lock:
            gone = [
                name
                for name in self._dns
                if (cluster := config.clusters.get(name)) is None
                or cluster.discovery is None
                or cluster.discovery.dns is None
            ]
            watchers = [self._dns.pop(name) for name in gone]
            for name in gone:
                del self._dns_configs[name]
        for watcher in watchers:
            watcher.close()

    # --- changes -------------------------------------------------------------------------------------------------

    def _dns_changed(self, cluster: str, endpoints: tuple[str, ...]) -> None:
        logger.info("cluster %s: DNS now gives %d endpoint(s)", cluster, len(endpoints))
        self._changed.set()

    def _etcd_changed(self, revision: int) -> None:
        # On the watch thread, for every batch of events: only say so. The view is read (and parsed) when the
        # mesh asks for endpoints, at most once per APPLY_INTERVAL under churn, not once per event.
        with self._lock:
            self._etcd_revision = revision
        self._changed.set()

    def _refresh(self) -> None:
        """Bring the registrations and the config document up to the etcd view, if it changed since last time."""
        watch = self._watch
        if watch is None:
            return
        from meshlib._discovery.registration import SERVICES, parse_instance

        assert self._etcd_config is not None
        with self._refreshing:
            with self._lock:
                revision = self._etcd_revision
            if revision == self._refreshed_revision:
                return
            view, revision = watch.view_at()
            prefix = self._etcd_config.prefix
            services = prefix + SERVICES
            instances: dict[str, Instance] = {}
            parsed: dict[tuple[str, bytes], Instance | None] = {}
            for key, value in view.items():
                if not key.startswith(services):
                    continue
                entry = (key, value)
                instance = self._parsed[entry] if entry in self._parsed else parse_instance(prefix, key, value)
                parsed[entry] = instance
                if instance is not None:
                    instances[key] = instance
            document = view.get(self.config_key) if self.config_key is not None else None
            by_service: dict[str, list[Instance]] = {}
            for instance in instances.values():
                by_service.setdefault(instance.service, []).append(instance)
            with self._lock:
                self._instances = instances
                self._by_service = by_service
                self._parsed = parsed
                if document != self._document:
                    self._document = document
                    self._document_revision = revision
            self._refreshed_revision = revision
            if self._snapshot_file is not None:
                keep = {k: v for k, v in view.items() if k.startswith(services) or k == self.config_key}
                self._snapshot_file.save(keep, revision)

    def _apply_loop(self) -> None:
        while True:
            self._changed.wait()
            if self._closed.is_set():
                return
            self._changed.clear()
            applied = time.monotonic()
            try:
                self._apply()
            except Exception:  # the mesh logs what it refuses; anything else is a bug, and must not stop discovery
                logger.exception("applying discovered endpoints failed")
            # Under churn, changes that arrive meanwhile wait for the next swap together (Istio debounces its
            # pushes the same way): one compile per APPLY_INTERVAL at most, whatever the rate of changes.
            if self._closed.wait(max(0.0, applied + APPLY_INTERVAL - time.monotonic())):
                return

    # --- the config document's outcome ---------------------------------------------------------------------------

    def report(
        self, revision: int, *, version: int | None = None, digest: str | None = None, error: str | None = None
    ) -> None:
        """Record (and write back under the prefix) what became of the config document read at ``revision``."""
        from meshlib._discovery.config_source import STATUS, instance_id, status_value

        key = self.config_key
        assert key is not None
        assert self._etcd_config is not None
        value = status_value(key, revision, version=version, digest=digest, error=error)
        with self._lock:
            self._config_status = {"revision": revision, "version": version, "error": error, "digest": digest}
        registration = self._registration
        who = registration.key.rpartition("/")[2] if registration is not None else instance_id()
        status_key = f"{self._etcd_config.prefix}{STATUS}{key.removeprefix(self._etcd_config.prefix)}/{who}"
        client = self._client
        if client is None:
            return
        lease = registration.lease if registration is not None else 0

        def write() -> None:
            try:
                client.put(status_key, value, lease=lease)
            except Exception as exc:  # etcd away: the outcome is logged and in stats; the next one is written
                logger.warning("could not write the config status to %s: %s", status_key, exc)

        threading.Thread(target=write, name="meshlib-etcd-status", daemon=True).start()

    # --- stats ---------------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What ``Mesh.stats()["discovery"]`` shows: etcd's state, the registration, the config source, DNS."""
        out: dict[str, Any] = {}
        if self._watch is not None:
            assert self._etcd_config is not None
            out["etcd"] = {
                **self._watch.stats(),
                "endpoints": list(self._etcd_config.endpoints),
                "prefix": self._etcd_config.prefix,
                "started_from_snapshot": self._started_from_snapshot,
                "snapshot": self._etcd_config.snapshot,
                "instances": len(self._instances),
            }
        if self._registration is not None:
            out["registration"] = self._registration.stats()
        if self.config_key is not None:
            with self._lock:
                out["config_source"] = {
                    "key": self.config_key,
                    "found": self._document is not None,
                    **self._config_status,
                }
        with self._dns_lock:
            watchers = dict(self._dns)
        if watchers:
            out["dns"] = {name: watcher.stats() for name, watcher in watchers.items()}
        return out


def check_registration(config: MeshConfig, *, sidecar: bool) -> None:
    """Refuse a registration without an address in process (the sidecar defaults it to its inbound listener)."""
    register = config.registry.register_ if config.registry is not None else None
    if register is None or register.address is not None:
        return
    if not sidecar:
        raise ConfigError(
            [("registry.register.address", "set the address this app serves on (only the sidecar has a default)")]
        )
    if config.sidecar.inbound is None:
        raise ConfigError(
            [("registry.register.address", "set it, or sidecar.inbound: the sidecar registers its inbound listener")]
        )
