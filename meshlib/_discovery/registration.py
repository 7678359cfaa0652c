"""This workload's entry in the registry: one key under a lease, kept alive, revoked at graceful shutdown.

The key is ``PREFIX services/SERVICE/HOST:PORT`` and its value a small JSON
document, ``{"address": URL, "labels": {...}}``. It is written under a lease
of the configured ``ttl`` that a daemon thread keeps alive (three times per
TTL). A crash stops the keepalives, the lease expires and etcd deletes the
key; a graceful shutdown revokes the lease first (revoking deletes exactly the
keys of that lease, so a newer registration of the same address by another
process is left alone). A lease etcd lost meanwhile (etcd was away for longer
than the TTL) is granted anew and the key written again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import httpx

from meshlib._config.discovery import RegisterConfig
from meshlib._discovery.etcd_client import EtcdClient, EtcdError, LeaseNotFound
from meshlib._discovery.etcd_watch import backoff

__all__ = ["SERVICES", "Instance", "Registration", "parse_instance", "registration_key"]

logger = logging.getLogger("meshlib.discovery")

# Where registrations live under the prefix.
SERVICES = "services/"


class Instance:
    """A registered instance of a service: its address (an origin URL) and labels."""

    __slots__ = ("address", "labels", "service")

    def __init__(self, service: str, address: str, labels: dict[str, str]) -> None:
        self.service = service
        self.address = address
        self.labels = labels


def registration_key(prefix: str, service: str, address: str) -> str:
    """The key of ``address`` (an origin URL) registered for ``service``: it names the host:port."""
    url = httpx.URL(address)
    return f"{prefix}{SERVICES}{service}/{url.netloc.decode('ascii')}"


def parse_instance(prefix: str, key: str, value: bytes) -> Instance | None:
    """The instance a registration key and value describe, or None (logged) when they are not one."""
    rest = key[len(prefix) + len(SERVICES) :]
    service, sep, _ = rest.partition("/")
    if not key.startswith(prefix + SERVICES) or not sep or not service:
        return None
    try:
        doc = json.loads(value)
        address = doc["address"]
        labels = doc.get("labels") or {}
        url = httpx.URL(address)
        if url.scheme not in ("http", "https") or not url.host or not isinstance(labels, dict):
            raise ValueError(address)
    except (ValueError, KeyError, TypeError, httpx.InvalidURL) as exc:
        logger.warning("ignoring registry key %s: not a registration (%s)", key, exc)
        return None
    return Instance(
        service, f"{url.scheme}://{url.netloc.decode('ascii')}", {str(k): str(v) for k, v in labels.items()}
    )


class Registration:
    """Keeps ``config.service`` at ``address`` registered until :meth:`deregister`."""

    def __init__(self, client: EtcdClient, prefix: str, config: RegisterConfig, address: str) -> None:
        self._client = client
        self._config = config
        self.address = address
        self.key = registration_key(prefix, config.service, address)
        self._value = json.dumps({"address": address, "labels": config.labels}, sort_keys=True)
        self._ttl = int(config.ttl)
        self._lease = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._registered_at: float | None = None
        self._renewals = 0
        self._failures = 0
        self._last_error: str | None = None

    @property
    def lease(self) -> int:
        """The lease the key lives under (0 while not registered): other keys of this workload may share it."""
        return self._lease

    def start(self) -> None:
        """Register now if etcd answers (else keep trying in the background), and keep the lease alive."""
        try:
            self._register()
        except EtcdError as exc:
            self._failed(exc)
        self._thread = threading.Thread(target=self._keepalive, name="meshlib-etcd-register", daemon=True)
        self._thread.start()

    def _register(self) -> None:
        lease = self._client.lease_grant(self._ttl)
        self._client.put(self.key, self._value, lease=lease)
        with self._lock:
            self._lease = lease
            self._registered_at = time.time()
            self._last_error = None
        logger.info("registered %s as %s (lease %x, ttl %ds)", self.address, self.key, lease, self._ttl)

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._failures += 1
            self._last_error = str(exc)
        logger.warning("registration of %s: %s", self.address, exc)

    def _keepalive(self) -> None:
        attempt = 0
        while True:
            wait = self._ttl / 3 if attempt == 0 else backoff(attempt)
            if self._stopped.wait(wait):
                return
            try:
                if self._lease == 0:
                    self._register()
                else:
                    self._client.lease_keepalive(self._lease)
                    with self._lock:
                        self._renewals += 1
                attempt = 0
            except LeaseNotFound:
                logger.warning("lease of %s expired while etcd was away: registering again", self.key)
                with self._lock:
                    self._lease = 0
                attempt = 1
            except EtcdError as exc:
                self._failed(exc)
                attempt += 1

    def deregister(self) -> None:
        """Stop the keepalives and revoke the lease, which deletes the key (logged when etcd can't be reached)."""
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            lease, self._lease = self._lease, 0
        if lease == 0:
            return
        try:
            self._client.lease_revoke(lease)
            logger.info("deregistered %s (%s)", self.address, self.key)
        except LeaseNotFound:
            pass  # expired already: the key is gone
        except EtcdError as exc:
            logger.warning("could not deregister %s: %s (the lease expires in %ds)", self.key, exc, self._ttl)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "key": self.key,
                "address": self.address,
                "registered": self._lease != 0,
                "lease": self._lease,
                "ttl": self._ttl,
                "registered_at": self._registered_at,
                "renewals": self._renewals,
                "failures": self._failures,
                "last_error": self._last_error,
            }
