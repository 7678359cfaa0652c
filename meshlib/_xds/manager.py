"""Xds: what one mesh knows from its control plane, and the gate first requests wait at.

Each response is decoded, checked against the protos' validation rules
(``validate.py``) and what meshlib can honour (``translate.check_*``), then
the whole accepted state plus this response is translated and handed to the
mesh, which compiles and swaps a snapshot; any failure on the way NACKs the
response and changes nothing. Only then is the response ACKed and the
subscriptions follow what the new state references (Listener → its
RouteConfiguration → its Clusters → their ClusterLoadAssignments), as gRPC
does.

Listeners are named by the authority a request is for. An authority is
subscribed when ``xds.targets`` names it or on its first request, and that
first request waits (``XdsGate``) until its resources are in, or
``initial_fetch_timeout`` has passed since the subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from meshlib._config.xds import XdsConfig
from meshlib._xds.bootstrap import Bootstrap, load_bootstrap
from meshlib._xds.client import CLUSTER, ENDPOINT, LISTENER, ORDER, ROUTE, AdsClient
from meshlib._xds.protos import protos

__all__ = ["Xds", "XdsState"]

logger = logging.getLogger("meshlib.xds")

KIND = {LISTENER: "Listener", ROUTE: "RouteConfiguration", CLUSTER: "Cluster", ENDPOINT: "ClusterLoadAssignment"}
_RESOURCE_WRAPPER = "type.googleapis.com/envoy.service.discovery.v3.Resource"
_MAX_ERROR = 4000  # error_detail stays readable in a control plane's logs


@dataclass(frozen=True)
class Accepted:
    """One accepted resource, with the version of the response that brought it and when."""

    message: Any
    version: str
    updated: float


@dataclass(frozen=True)
class XdsState:
    """Every accepted resource by type and name, and the Listeners and Clusters the server says don't exist."""

    resources: Mapping[str, Mapping[str, Accepted]] = field(default_factory=lambda: {t: {} for t in ORDER})
    missing: Mapping[str, frozenset[str]] = field(default_factory=lambda: {t: frozenset() for t in ORDER})

    def messages(self, type_url: str) -> dict[str, Any]:
        return {name: a.message for name, a in self.resources[type_url].items()}


class Xds:
    """The xDS side of one mesh: the ADS client, the accepted state, and the gate for first requests."""

    def __init__(self, config: XdsConfig, apply: Callable[[Any], None]) -> None:
        """``apply(translation)`` compiles and swaps a snapshot, or raises to have the response NACKed."""
        self.config = config
        self.bootstrap: Bootstrap = load_bootstrap(config.bootstrap)
        protos()  # a ConfigError now, naming the extra, rather than a dead stream later
        from meshlib._xds import translate

        self._translate = translate
        self._apply = apply
        self._lock = threading.Condition()
        self.state = XdsState()
        providers = self.bootstrap.certificate_providers
        self.translation = translate.translate({}, {}, {}, {}, certificate_providers=providers)
        self.last_nack: tuple[str, str, str] | None = None  # (type, version, error)
        self._deadlines: dict[str, float] = {}  # authority -> when its first requests stop waiting
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.gate = XdsGate(self)
        self.client = AdsClient(self.bootstrap, self._on_response)
        for target in config.targets:
            self._subscribe(target)

    def start(self) -> None:
        self.client.start()

    def close(self) -> None:
        self.client.close()
        with self._lock:
            self._wake()

    # -- authorities ---------------------------------------------------------------------------------------------

    def _subscribe(self, authority: str) -> float:
        """Subscribe to ``authority``'s listener if new; the deadline its first requests wait until."""
        with self._lock:
            deadline = self._deadlines.get(authority)
            if deadline is not None:
                return deadline
            deadline = self._deadlines[authority] = time.monotonic() + self.config.initial_fetch_timeout
            names = frozenset(self._deadlines)
        self.client.subscribe(LISTENER, names)
        return deadline

    def _settle(self, authorities: frozenset[str]) -> None:
        """Let requests for ``authorities`` through without waiting (their resources are in, or the wait is over)."""
        gate = self.gate
        gate.settled = gate.settled | {a.encode("ascii", "replace") for a in authorities}

    def wait(self, authority: str) -> None:
        """Block until ``authority``'s resources are in or its wait is over (a sync request's first use)."""
        deadline = self._subscribe(authority)
        with self._lock:
            while not self._ready(authority) and not self.client_closed():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
        self._settle(frozenset([authority]))

    async def wait_async(self, authority: str) -> None:
        """:meth:`wait` for an event loop: the loop keeps running while this request waits."""
        deadline = self._subscribe(authority)
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._ready(authority) or self.client_closed():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                future: asyncio.Future[None] = loop.create_future()
                self._futures.append((loop, future))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, left)
        self._settle(frozenset([authority]))

    def client_closed(self) -> bool:
        return self.client._closed.is_set()

    def _wake(self) -> None:
        """Wake every waiter (the lock is held)."""
        self._lock.notify_all()
        futures, self._futures = self._futures, []
        for loop, future in futures:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there any more
                loop.call_soon_threadsafe(_resolve, future)

    def _ready(self, authority: str) -> bool:
        """Whether everything ``authority`` routes by is in (or known not to exist)."""
        state = self.state
        if authority in state.missing[LISTENER]:
            return True
        listener = state.resources[LISTENER].get(authority)
        if listener is None:
            return False
        rc = self._route_config(listener.message)
        if rc is None:
            return False
        for name in self._translate.referenced_clusters(rc):
            if name in state.missing[CLUSTER]:
                continue
            cluster = state.resources[CLUSTER].get(name)
            if cluster is None:
                return False
            eds = self._translate.eds_name(cluster.message)
            if eds is not None and eds not in state.resources[ENDPOINT]:
                return False
        return True

    def _route_config(self, listener: Any, state: XdsState | None = None) -> Any:
        """A listener's RouteConfiguration: inline, or the RDS one if it has arrived (else None)."""
        name = self._translate.route_config_name(listener)
        if name is None:
            return _inline_route_config(listener)
        accepted = (state or self.state).resources[ROUTE].get(name)
        return accepted.message if accepted is not None else None

    # -- responses (the stream's thread) ---------------------------------------------------------------------------

    def _on_response(self, type_url: str, response: Any) -> str | None:
        """Accept ``response`` (None: ACK) or say why not (the NACK's error_detail)."""
        decoded, errors = self._decode(type_url, response)
        if errors:
            return self._nack(type_url, response, errors)
        state = self._merged(type_url, decoded, response.version_info)
        try:
            translation = self._translate.translate(
                state.messages(LISTENER),
                state.messages(ROUTE),
                state.messages(CLUSTER),
                state.messages(ENDPOINT),
                certificate_providers=self.bootstrap.certificate_providers,
            )
            self._apply(translation)
        except Exception as exc:  # Rejected, ConfigError, a compile that failed: the whole response is refused
            return self._nack(type_url, response, [str(exc)])
        with self._lock:
            self.state = state
            self.translation = translation
            subscriptions = self._subscriptions(state)
            ready = frozenset(a for a in self._deadlines if self._ready(a))
            self._wake()
        self._settle(ready)
        for sub_type, names in subscriptions.items():
            self.client.subscribe(sub_type, names)
        logger.info("xDS %s version %r accepted (%d resources)", KIND[type_url], response.version_info, len(decoded))
        return None

    def _nack(self, type_url: str, response: Any, errors: list[str]) -> str:
        text = "; ".join(errors)
        if len(text) > _MAX_ERROR:
            text = text[: _MAX_ERROR - 3] + "..."
        self.last_nack = (type_url, response.version_info, text)
        return text

    def _decode(self, type_url: str, response: Any) -> tuple[dict[str, Any], list[str]]:
        """The response's resources by name, and everything wrong with them."""
        from meshlib._xds.validate import violations

        pb = protos()
        cls = {
            LISTENER: pb.Listener,
            ROUTE: pb.RouteConfiguration,
            CLUSTER: pb.Cluster,
            ENDPOINT: pb.ClusterLoadAssignment,
        }
        kind = KIND[type_url]
        check = {
            LISTENER: self._translate.check_listener,
            ROUTE: self._translate.check_route_configuration,
            CLUSTER: lambda c: self._translate.check_cluster(c, self.bootstrap.certificate_providers),
            ENDPOINT: self._translate.check_load_assignment,
        }[type_url]
        decoded: dict[str, Any] = {}
        errors: list[str] = []
        for i, packed in enumerate(response.resources):
            if packed.type_url == _RESOURCE_WRAPPER:
                wrapper = pb.Resource()
                packed.Unpack(wrapper)
                packed = wrapper.resource
            message = cls[type_url]()
            if packed.type_url != type_url or not packed.Unpack(message):
                errors.append(f"resources[{i}]: a {packed.type_url or 'untyped'} resource in a {kind} response")
                continue
            name = message.cluster_name if type_url == ENDPOINT else message.name
            if name in decoded:
                errors.append(f"{kind} {name!r}: appears twice in the response")
                continue
            decoded[name] = message
            errors.extend(f"{kind} {name!r}: {problem}" for problem in violations(message))
            try:
                check(message)
            except ValueError as exc:
                errors.append(str(exc))
        return decoded, errors

    def _merged(self, type_url: str, decoded: dict[str, Any], version: str) -> XdsState:
        """The state with this response applied, as state of the world means it (gRFC A27)."""
        now = time.time()
        current = self.state.resources[type_url]
        if type_url in (LISTENER, CLUSTER):
            # A Listener or Cluster response lists every one that exists; one left out is deleted,
            # unless the server has said it doesn't delete that way (gRFC A53).
            merged = dict(current) if self.bootstrap.server.ignore_resource_deletion else {}
            wanted = self.client.states()[type_url].names
            missing = frozenset(n for n in wanted if n not in decoded)
            if self.bootstrap.server.ignore_resource_deletion:
                missing = frozenset(n for n in missing if n not in current)
        else:
            merged = dict(current)
            missing = frozenset()
        for name, message in decoded.items():
            old = current.get(name)
            same = old is not None and old.message == message
            merged[name] = old if same and old is not None else Accepted(message, version, now)
        resources = {**self.state.resources, type_url: merged}
        return replace(self.state, resources=resources, missing={**self.state.missing, type_url: missing})

    def _subscriptions(self, state: XdsState) -> dict[str, frozenset[str]]:
        """The RouteConfiguration, Cluster and ClusterLoadAssignment names ``state`` needs."""
        routes: set[str] = set()
        clusters: set[str] = set()
        for accepted in state.resources[LISTENER].values():
            name = self._translate.route_config_name(accepted.message)
            if name is not None:
                routes.add(name)
            rc = self._route_config(accepted.message, state)
            if rc is not None:
                clusters |= self._translate.referenced_clusters(rc)
        eds: set[str] = set()
        for name in clusters:
            cluster = state.resources[CLUSTER].get(name)
            if cluster is not None:
                eds_name = self._translate.eds_name(cluster.message)
                if eds_name is not None:
                    eds.add(eds_name)
        return {ROUTE: frozenset(routes), CLUSTER: frozenset(clusters), ENDPOINT: frozenset(eds)}

    # -- what it reports -----------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The stream and each type's accepted version, ACKs, NACKs and last error (``mesh.stats()['xds']``)."""
        types = {}
        for type_url, s in self.client.states().items():
            types[KIND[type_url]] = {
                "version": s.version,
                "subscribed": len(s.names),
                "resources": len(self.state.resources[type_url]),
                "acks": s.acks,
                "nacks": s.nacks,
                "last_error": s.last_error,
            }
        return {
            "server": self.bootstrap.server.server_uri,
            "connected": self.client.connected,
            "streams": self.client.streams,
            "types": types,
        }


class XdsGate:
    """What the engine asks before routing a request: has this authority's xDS config arrived (or been waited for)?

    ``settled`` is replaced, never changed, so the request path reads it without a lock.
    """

    __slots__ = ("_xds", "current", "settled")

    def __init__(self, xds: Xds) -> None:
        self._xds = xds
        self.settled: frozenset[bytes] = frozenset()
        self.current: Callable[[], Any] = lambda: None  # the mesh's snapshot now; the mesh sets it

    def wait(self, netloc: bytes) -> Any:
        """Wait for ``netloc``'s resources (sync); the snapshot to route by afterwards."""
        self._xds.wait(netloc.decode("ascii", "replace"))
        return self.current()

    async def wait_async(self, netloc: bytes) -> Any:
        """The async twin of :meth:`wait`."""
        await self._xds.wait_async(netloc.decode("ascii", "replace"))
        return self.current()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _inline_route_config(listener: Any) -> Any:
    """The RouteConfiguration inside a listener's HttpConnectionManager, if it has one there."""
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    hcm = hcm_pb2.HttpConnectionManager()
    if not listener.api_listener.api_listener.Unpack(hcm) or not hcm.HasField("route_config"):
        return None
    return hcm.route_config
