"""DNS discovery, like Envoy's STRICT_DNS: a cluster's endpoints are every A and AAAA record of a name.

One daemon thread per DNS cluster asks for A and AAAA, turns each address into
``scheme://ip:port`` (``scheme://[ip]:port`` for IPv6) and hands the sorted set
to ``on_change`` whenever it differs from the last one handed over. It asks
again at the records' TTL, clamped to [min(5s, refresh), refresh] (Envoy's
``dns_min_refresh_rate`` and ``dns_refresh_rate``).

A failure (timeout, SERVFAIL, no resolver answering) or an empty answer
(NXDOMAIN, no A/AAAA records) keeps the last good set: a DNS outage or a zone
being rewritten must not empty a cluster. It is counted in ``stats()``, logged
once per streak (logger ``meshlib.discovery``: WARNING, then INFO when answers
come back) and retried at the floor. A partial answer (A answered, AAAA timed
out or SERVFAIL) is a failure too, so that it cannot shrink the set.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from meshlib._config.discovery import DnsDiscoveryConfig

__all__ = ["DnsWatcher"]

logger = logging.getLogger("meshlib.discovery")

# Envoy's dns_min_refresh_rate: a TTL of 0 or 1 must not turn into a query loop.
_MIN_REFRESH: Final = 5.0
_RDTYPES: Final = ("A", "AAAA")


def _nameserver(address: str) -> dns.nameserver.Do53Nameserver:
    """``IP:PORT`` or ``[IPv6]:PORT`` (validated by the config) → a UDP name server, TCP on truncation."""
    host, _, port = address.rpartition(":")
    return dns.nameserver.Do53Nameserver(host.removeprefix("[").removesuffix("]"), int(port))


class DnsWatcher:
    """Keeps one cluster's endpoints equal to every A and AAAA record of a name, re-resolved at the records' TTL."""

    def __init__(
        self,
        cluster: str,
        config: DnsDiscoveryConfig,
        on_change: Callable[[str, tuple[str, ...]], None],
        *,
        timeout: float = 2.0,
    ) -> None:
        self.cluster = cluster
        self.config = config
        self.on_change = on_change
        # How long each of the two queries (A, AAAA) may take, over all resolvers and retries.
        self.timeout = timeout
        self._qname = dns.name.from_text(config.name)  # absolute: no search domains
        self._nameservers = None if config.resolvers is None else [_nameserver(address) for address in config.resolvers]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._round = threading.Lock()  # one resolution at a time: the thread's and any direct caller's
        self._delivered: tuple[str, ...] = ()  # the last set on_change accepted (under _round)
        # What stats() and next_delay() read from other threads, written together under _lock.
        self._lock = threading.Lock()
        self._endpoints: tuple[str, ...] = ()
        self._ttl: int | None = None
        self._resolutions = 0
        self._failures = 0
        self._streak = 0  # failures since the last success; the first one is logged
        self._last_error: str | None = None
        self._last_success: float | None = None
        self._next_at: float | None = None  # monotonic time of the thread's next resolution

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The last good set of endpoint URLs, sorted (empty before the first successful resolution)."""
        return self._endpoints  # an immutable tuple, swapped whole

    def resolve(self) -> tuple[str, ...] | None:
        """Look the name up once (A and AAAA); the sorted endpoint URLs, or None when the lookup failed.

        A failure or an empty answer keeps the last good set, and is counted and logged (once per streak).
        A success stores the set and its TTL and calls ``on_change(cluster, urls)`` when the set differs
        from the last one it accepted (one that raised is logged and offered again at the next success).
        Never raises for DNS problems. Does nothing (None) once closed.
        """
        with self._round:
            result = self._lookup()
            if self._stop.is_set():
                return None  # closed meanwhile: a reloaded mesh may own this cluster now
            if isinstance(result, str):
                self._failed(result)
                return None
            urls, ttl = result
            with self._lock:
                self._endpoints = urls
                self._ttl = ttl
                self._resolutions += 1
                self._last_success = time.time()
                self._last_error = None
                streak, self._streak = self._streak, 0
            if streak:
                logger.info(
                    "DNS discovery of cluster %r: %s resolves again (%d endpoints) after %d failed attempts",
                    self.cluster,
                    self.config.name,
                    len(urls),
                    streak,
                )
            if urls != self._delivered:
                try:
                    self.on_change(self.cluster, urls)
                except Exception:
                    logger.exception("DNS discovery of cluster %r: applying %s failed", self.cluster, urls)
                else:
                    self._delivered = urls
            return urls

    def _resolver(self) -> dns.resolver.Resolver:
        # A new one per lookup: the system's /etc/resolv.conf is read again (as glibc does when it
        # changes), and concurrent callers share nothing.
        if self._nameservers is None:
            resolver = dns.resolver.Resolver(configure=True)
        else:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = list(self._nameservers)
        resolver.cache = None  # the TTL is ours to follow: every lookup must reach a server
        resolver.lifetime = self.timeout
        # Each server gets a share of the lifetime, so that one that drops queries leaves time for the next.
        resolver.timeout = self.timeout / max(1, len(resolver.nameservers))
        return resolver

    def _lookup(self) -> tuple[tuple[str, ...], int] | str:
        """The sorted URLs and their TTL, or why there are none."""
        addresses: set[str] = set()
        ttls: list[int] = []
        nxdomain = False
        try:
            resolver = self._resolver()
            for rdtype in _RDTYPES:
                if self._stop.is_set():
                    return "closed"
                try:
                    answer = resolver.resolve(self._qname, rdtype, raise_on_no_answer=False, search=False)
                except dns.resolver.NXDOMAIN:
                    # No records of this type; the other type still decides (a zone may be changing).
                    nxdomain = True
                    continue
                if answer.rrset:
                    addresses.update(rdata.to_text() for rdata in answer.rrset)
                    # Over the CNAME chain too: the set is only as fresh as its shortest-lived link.
                    ttls.append(answer.chaining_result.minimum_ttl)
        except dns.exception.Timeout:
            return f"no answer within {self.timeout:g}s"
        except dns.resolver.NoNameservers as exc:
            return f"no resolver answered: {exc}"
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        if not addresses:
            return "NXDOMAIN (no such name)" if nxdomain else "no A or AAAA records"
        scheme, port = self.config.scheme, self.config.port
        urls = []
        for text in addresses:
            ip = ipaddress.ip_address(text)
            host = f"[{ip}]" if ip.version == 6 else str(ip)
            urls.append(f"{scheme}://{host}:{port}")
        return tuple(sorted(urls)), min(ttls)

    def _failed(self, error: str) -> None:
        with self._lock:
            self._failures += 1
            self._streak += 1
            self._last_error = error
            first = self._streak == 1
            kept = len(self._endpoints)
        if first:
            logger.warning(
                "DNS discovery of cluster %r: resolving %s failed: %s; %s",
                self.cluster,
                self.config.name,
                error,
                f"keeping its last {kept} endpoints" if kept else "no endpoints yet",
            )

    def next_delay(self) -> float:
        """Seconds until the next lookup: the TTL clamped to [min(5s, refresh), refresh]; the floor after a failure."""
        refresh = self.config.refresh
        floor = min(_MIN_REFRESH, refresh)
        with self._lock:
            if self._streak or self._ttl is None:
                return floor
            return min(max(float(self._ttl), floor), refresh)

    def start(self) -> None:
        """Resolve in a daemon thread until closed, at once or, after a resolve(), at next_delay().

        Once: later calls, and calls after close(), do nothing.
        """
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name=f"meshlib-dns-{self.cluster}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with self._lock:
            # A caller that resolved once before start() (to begin with endpoints) is not asked twice.
            looked_up = bool(self._resolutions or self._failures)
        while not self._stop.is_set():
            if not looked_up:
                try:
                    self.resolve()
                except Exception:  # pragma: no cover - a bug must not silently end discovery
                    logger.exception("DNS discovery of cluster %r failed", self.cluster)
            looked_up = False
            delay = self.next_delay()
            with self._lock:
                self._next_at = time.monotonic() + delay
            if self._stop.wait(delay):
                return

    def close(self) -> None:
        """Stop the thread (idempotent): it ends at once, or after the query in progress (up to ``timeout``)."""
        with self._lock:
            self._stop.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.timeout + 1.0)

    def stats(self) -> dict[str, Any]:
        """The name, the current set, its TTL, counts of lookups that succeeded and failed, and timings.

        ``last_error`` is the error of the current streak of failures (None after a success);
        ``next_refresh_in`` is None unless the thread runs.
        """
        with self._lock:
            next_in = None
            if self._next_at is not None and not self._stop.is_set():
                next_in = max(0.0, self._next_at - time.monotonic())
            return {
                "name": self.config.name,
                "port": self.config.port,
                "endpoints": list(self._endpoints),
                "ttl": self._ttl,
                "resolutions": self._resolutions,
                "failures": self._failures,
                "last_error": self._last_error,
                "last_success": self._last_success,
                "next_refresh_in": next_in,
            }
