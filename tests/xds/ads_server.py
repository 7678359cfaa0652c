"""An ADS server for tests: one snapshot served to a real Envoy and to meshlib's xDS client.

What it does:

* the aggregated discovery service, state of the world (``StreamAggregatedResources``),
  on 127.0.0.1 with grpcio, streams served from a thread pool;
* snapshots of resources keyed by type URL (:data:`LISTENER`, :data:`ROUTE`,
  :data:`CLUSTER`, :data:`ENDPOINT`, or any other), with a version; a default
  view and per-node views (``node="envoy-peer"``), a node view falling back to
  the default one for each type it lacks. Envoy asks for every listener and
  cluster and must not get gRPC's API listeners, gRPC asks for names: the
  views keep the two apart;
* per stream: the node (sent on the first request only, remembered), per type
  the subscribed names (an empty list, or ``*``, is a wildcard, for any type)
  and the nonce of the last response;
* a response on the first request of a type on a stream, on a request that
  changes the subscription, and (pushed) on every :meth:`AdsServer.set_snapshot`
  that changes what a stream's subscription sees; it holds every resource of
  the view the subscription names, ``version_info`` is the snapshot's version,
  the nonce is fresh;
* no response to an ACK or a NACK that leaves the subscription as it was;
  requests whose nonce is not the last one sent for their type on that stream
  are stale: recorded, otherwise ignored (as real control planes do);
* every request is recorded (with its stream and that stream's node) for the
  test to wait on: :meth:`AdsServer.wait_ack`, :meth:`AdsServer.wait_nack`,
  :meth:`AdsServer.wait_for`;
* :meth:`AdsServer.stop` ends every stream with UNAVAILABLE at once, so clients
  reconnect; :meth:`AdsServer.restart` binds the same port again.

What it does not do: delta (incremental) xDS, resource TTLs and heartbeats,
``resource_locators`` / xdstp names and dynamic parameters, on-demand
(VHDS) resources, LRS, resource_errors, TLS on the xDS connection, waiting for
an ACK before pushing the next version (it pushes at once, which state of the
world allows), or validation of what it serves: a test may serve anything,
including resources a client must NACK.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message

__all__ = ["CLUSTER", "ENDPOINT", "LISTENER", "ROUTE", "AdsServer", "DiscoveryRequest", "DiscoveryResponse"]

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

_SHORT = {LISTENER: "LDS", ROUTE: "RDS", CLUSTER: "CDS", ENDPOINT: "EDS"}


def _resource_name(resource: Message) -> str:
    """The xDS name of a resource: ``cluster_name`` for a ClusterLoadAssignment, ``name`` otherwise."""
    if isinstance(resource, AnyProto):
        raise TypeError("pass the resource messages themselves, not Any")
    for attr in ("name", "cluster_name"):
        value = getattr(resource, attr, None)
        if isinstance(value, str) and value:
            return value
    raise ValueError(f"a {type(resource).__name__} without a name")


@dataclass
class _View:
    version: str
    resources: dict[str, list[Message]]


@dataclass
class _TypeState:
    names: frozenset[str] = frozenset()
    nonce: str = ""  # of the last response sent ("" before the first)
    sent: tuple[str, tuple[bytes, ...]] | None = None  # (version, serialized resources) of the last response


@dataclass
class _Stream:
    number: int
    queue: queue.SimpleQueue[DiscoveryResponse | None] = field(default_factory=queue.SimpleQueue)
    node: str | None = None
    types: dict[str, _TypeState] = field(default_factory=dict)


@dataclass(frozen=True)
class _Record:
    stream: int
    node: str | None
    request: DiscoveryRequest


class AdsServer:
    """An ADS (aggregated, state of the world) server on 127.0.0.1 for tests; grpcio, in a background thread pool.

    ``with AdsServer() as ads:`` starts and stops it. Every method is thread-safe.
    """

    def __init__(self, port: int = 0, *, max_workers: int = 64, tls: grpc.ServerCredentials | None = None) -> None:
        """``tls``: serve over TLS with these credentials (``grpc.ssl_server_credentials``) instead of plaintext."""
        self.port = port
        self._tls = tls
        self._max_workers = max_workers
        self._lock = threading.Condition()
        self._views: dict[str | None, _View] = {}
        self._streams: dict[int, _Stream] = {}
        self._records: list[_Record] = []
        self._nonces = itertools.count(1)
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self.streams_opened = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` (once started)."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Bind (``port``, or a free one when 0) and serve."""
        if self._server is not None:
            raise RuntimeError("already started")
        deadline = time.monotonic() + 5.0
        while True:
            executor = futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="ads")
            server = grpc.server(executor, options=[("grpc.so_reuseport", 0)])
            ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), server)
            try:
                address = f"127.0.0.1:{self.port}"
                if self._tls is not None:
                    port = server.add_secure_port(address, self._tls)
                else:
                    port = server.add_insecure_port(address)
            except RuntimeError:  # grpcio raises when it cannot bind
                port = 0
            if port:
                break
            executor.shutdown(wait=False)
            if self.port == 0 or time.monotonic() > deadline:
                raise RuntimeError(f"cannot bind 127.0.0.1:{self.port}")
            time.sleep(0.05)  # the old listener of a restart may still be closing
        server.start()
        self.port = port
        self._server, self._executor = server, executor

    def stop(self, grace: float | None = 0) -> None:
        """End every stream (clients see UNAVAILABLE) and stop listening; the snapshot stays."""
        server, executor = self._server, self._executor
        if server is None or executor is None:
            return
        self._server = self._executor = None
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.queue.put(None)  # the stream's handler aborts with UNAVAILABLE
        deadline = time.monotonic() + 5.0
        with self._lock:  # until each RPC has ended (its status sent)
            while any(s.number in self._streams for s in streams) and time.monotonic() < deadline:
                self._lock.wait(0.05)
        server.stop(grace).wait(10)
        executor.shutdown(wait=False, cancel_futures=True)

    def restart(self) -> None:
        """Start again on the same port (after :meth:`stop`)."""
        if self.port == 0:
            raise RuntimeError("restart() needs a server that was started")
        self.start()

    def __enter__(self) -> AdsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ snapshot

    def set_snapshot(
        self, version: str, resources: Mapping[str, Sequence[Message]], *, node: str | None = None
    ) -> None:
        """Serve ``resources`` (keyed by type URL) as ``version`` to ``node`` (None: the default view).

        A node's view replaces the default one type by type: a type it lacks comes
        from the default view. Every open stream whose subscription now sees
        something else (another version or other resources) gets a response.
        """
        view = _View(version, {type_url: list(items) for type_url, items in resources.items()})
        for items in view.resources.values():
            for item in items:
                _resource_name(item)  # fail here, not in a stream
        with self._lock:
            self._views[node] = view
            for stream in self._streams.values():
                for type_url in stream.types:
                    self._respond_if_changed(stream, type_url)

    # ------------------------------------------------------------------ what was received

    def requests(self, type_url: str | None = None, node: str | None = None) -> list[DiscoveryRequest]:
        """Every request received (optionally of one type, from one node id), in order."""
        return [r.request for r in self._select(type_url, node)]

    def stream_requests(self, stream: int) -> list[DiscoveryRequest]:
        """The requests of the ``stream``-th stream opened (1 = the first; :attr:`streams_opened` = the latest)."""
        with self._lock:
            return [r.request for r in self._records if r.stream == stream]

    def nacks(self, type_url: str | None = None, node: str | None = None) -> list[str]:
        """The ``error_detail`` messages of the NACKs received, in order."""
        return [
            r.request.error_detail.message for r in self._select(type_url, node) if r.request.HasField("error_detail")
        ]

    def wait_for(
        self,
        predicate: Callable[[DiscoveryRequest], bool],
        timeout: float = 5.0,
        *,
        type_url: str | None = None,
        node: str | None = None,
        min_stream: int = 0,
    ) -> DiscoveryRequest:
        """The first request (received already or to come) matching ``predicate``, of a stream ``>= min_stream``.

        Raises AssertionError, listing the requests seen, after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        seen = 0
        with self._lock:
            while True:
                for record in self._records[seen:]:
                    if (
                        record.stream >= min_stream
                        and (type_url is None or record.request.type_url == type_url)
                        and (node is None or record.node == node)
                        and predicate(record.request)
                    ):
                        return record.request
                seen = len(self._records)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no matching xDS request within {timeout} s; received:\n{self._describe(self._records)}"
                    )
                self._lock.wait(min(left, 0.5))

    def wait_ack(
        self, type_url: str, version: str, node: str | None = None, timeout: float = 5.0, *, min_stream: int = 0
    ) -> DiscoveryRequest:
        """A request of ``type_url`` accepting ``version``: that version, a nonce, no error_detail."""
        return self.wait_for(
            lambda r: r.version_info == version and bool(r.response_nonce) and not r.HasField("error_detail"),
            timeout,
            type_url=type_url,
            node=node,
            min_stream=min_stream,
        )

    def wait_nack(
        self, type_url: str, node: str | None = None, timeout: float = 5.0, *, min_stream: int = 0
    ) -> DiscoveryRequest:
        """A request of ``type_url`` with ``error_detail`` set."""
        return self.wait_for(
            lambda r: r.HasField("error_detail"), timeout, type_url=type_url, node=node, min_stream=min_stream
        )

    def last_nonce(self, type_url: str, stream: int | None = None) -> str:
        """The nonce of the last response of ``type_url`` on ``stream`` (default: the latest stream opened)."""
        with self._lock:
            state = self._streams.get(self.streams_opened if stream is None else stream)
            return state.types[type_url].nonce if state is not None and type_url in state.types else ""

    def _select(self, type_url: str | None, node: str | None) -> list[_Record]:
        with self._lock:
            return [
                r
                for r in self._records
                if (type_url is None or r.request.type_url == type_url) and (node is None or r.node == node)
            ]

    @staticmethod
    def _describe(records: Sequence[_Record]) -> str:
        lines = []
        for r in records:
            req = r.request
            line = (
                f"  stream {r.stream} node={r.node} {_SHORT.get(req.type_url, req.type_url)}"
                f" version={req.version_info!r} nonce={req.response_nonce!r} names={list(req.resource_names)}"
            )
            if req.HasField("error_detail"):
                line += f" NACK: {req.error_detail.message}"
            lines.append(line)
        return "\n".join(lines) or "  (nothing)"

    # ------------------------------------------------------------------ the protocol

    def _open(self) -> _Stream:
        with self._lock:
            self.streams_opened += 1
            stream = _Stream(self.streams_opened)
            self._streams[stream.number] = stream
            return stream

    def _close(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.pop(stream.number, None)
            self._lock.notify_all()

    def _on_request(self, stream: _Stream, request: DiscoveryRequest) -> None:
        with self._lock:
            if request.HasField("node"):
                stream.node = request.node.id
            self._records.append(_Record(stream.number, stream.node, request))
            self._lock.notify_all()
            type_url = request.type_url
            state = stream.types.get(type_url)
            if state is not None and state.nonce and request.response_nonce not in ("", state.nonce):
                return  # stale: a response went out after the one this answers
            names = frozenset(request.resource_names)
            if state is None:
                stream.types[type_url] = _TypeState(names)
                self._respond_if_changed(stream, type_url, force=True)
            elif names != state.names or not request.response_nonce:
                state.names = names
                self._respond_if_changed(stream, type_url, force=True)
            # else an ACK or a NACK of the last response: nothing to send

    def _effective(self, node: str | None, type_url: str) -> _View | None:
        own = self._views.get(node) if node is not None else None
        if own is not None and type_url in own.resources:
            return own
        return self._views.get(None, own)

    def _respond_if_changed(self, stream: _Stream, type_url: str, *, force: bool = False) -> None:
        """Queue a response of ``type_url`` on ``stream`` if forced or its content changed (lock held)."""
        state = stream.types[type_url]
        view = self._effective(stream.node, type_url)
        if view is None:
            return  # no snapshot yet: the response goes out with the first one
        wildcard = not state.names or "*" in state.names
        chosen = [r for r in view.resources.get(type_url, ()) if wildcard or _resource_name(r) in state.names]
        content = (view.version, tuple(r.SerializeToString(deterministic=True) for r in chosen))
        if not force and content == state.sent:
            return
        state.sent = content
        state.nonce = str(next(self._nonces))
        response = DiscoveryResponse(version_info=view.version, type_url=type_url, nonce=state.nonce)
        for r in chosen:
            response.resources.add().Pack(r)
        stream.queue.put(response)


class _Servicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, ads: AdsServer) -> None:
        self._ads = ads

    def StreamAggregatedResources(  # noqa: N802 (the generated name)
        self, request_iterator: Iterator[DiscoveryRequest], context: grpc.ServicerContext
    ) -> Iterator[DiscoveryResponse]:
        ads = self._ads
        stream = ads._open()
        ended = threading.Event()  # by the client (half-close, cancel) rather than by stop()

        def on_done() -> None:  # the RPC has terminated, its status sent
            ended.set()
            stream.queue.put(None)
            ads._close(stream)

        if not context.add_callback(on_done):
            ads._close(stream)
            return

        def read() -> None:
            try:
                for request in request_iterator:
                    ads._on_request(stream, request)
            except Exception:  # the RPC ended under the iterator
                pass
            finally:
                ended.set()
                stream.queue.put(None)

        threading.Thread(target=read, name=f"ads-stream-{stream.number}", daemon=True).start()
        while (response := stream.queue.get()) is not None:
            yield response
        if not ended.is_set():  # stop(): end the stream as a server going away does
            context.abort(grpc.StatusCode.UNAVAILABLE, "ADS server stopping")
