"""One aggregated (ADS) stream, state of the world, as gRPC's proxyless clients keep it (gRFC A27).

A daemon thread owns the stream. It sends a request per resource type when
the names subscribed to change, and answers every response with an ACK (the
response's ``version_info`` and nonce) or a NACK (the last accepted version,
the response's nonce, and an ``error_detail``); what a response means is the
``handle`` callback's business. A lost stream is opened again with a
full-jitter backoff (0.1 s doubling to 2 s, reset once a response arrives);
the new stream's first request carries the node again, and every
subscription is sent again with the version last accepted.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from meshlib._xds.bootstrap import Bootstrap
from meshlib._xds.protos import protos

__all__ = ["ORDER", "AdsClient", "TypeState"]

logger = logging.getLogger("meshlib.xds")

LISTENER: Final = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE: Final = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER: Final = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT: Final = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
# The order gRPC subscribes in, and the order a new stream sends its requests in.
ORDER: Final = (LISTENER, ROUTE, CLUSTER, ENDPOINT)

BACKOFF_BASE: Final = 0.1
BACKOFF_MAX: Final = 2.0
_INVALID_ARGUMENT: Final = 3  # google.rpc.Code


@dataclass
class TypeState:
    """What the stream knows of one resource type: the names wanted, and the last version accepted."""

    names: frozenset[str] = frozenset()
    version: str = ""
    nonce: str = ""
    acks: int = 0
    nacks: int = 0
    last_error: str | None = None
    last_error_version: str = ""
    last_error_time: float = 0.0  # time.time() of the last NACK
    wanted: bool = field(default=False)  # subscribed at least once (an empty set then means "none", not "all")


# handle(type_url, response) -> None to ACK, or the error text to NACK with.
Handler = Callable[[str, Any], "str | None"]


class AdsClient:
    """The ADS stream of one mesh: ``subscribe`` names per type; responses go to ``handle`` on this thread."""

    def __init__(self, bootstrap: Bootstrap, handle: Handler, *, rng: random.Random | None = None) -> None:
        self.bootstrap = bootstrap
        self._handle = handle
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._types: dict[str, TypeState] = {t: TypeState() for t in ORDER}
        self._outbox: queue.SimpleQueue[Any] | None = None  # the open stream's requests; None between streams
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._call: Any = None
        self.connected = False
        self.streams = 0
        self.last_stream_error: str | None = None

    # -- the caller's side ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the stream in a daemon thread (returns at once; the stream connects in the background)."""
        self._thread = threading.Thread(target=self._run, name="meshlib-xds", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """End the stream and the thread."""
        self._closed.set()
        with self._lock:
            call, outbox = self._call, self._outbox
        if outbox is not None:
            outbox.put(None)
        if call is not None:
            call.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def subscribe(self, type_url: str, names: frozenset[str]) -> None:
        """Want exactly ``names`` of ``type_url`` (thread-safe); sends a request when that changes."""
        with self._lock:
            state = self._types[type_url]
            # Nothing yet is not a request: an empty first list would ask for every resource (a wildcard).
            if state.names == names and (state.wanted or not names):
                return
            state.names, state.wanted = names, True
            outbox = self._outbox
            request = self._request(type_url, state) if outbox is not None else None
        if outbox is not None and request is not None:
            outbox.put(request)

    def states(self) -> dict[str, TypeState]:
        """A copy of each type's state (for stats and config_dump)."""
        with self._lock:
            return {t: TypeState(**vars(s)) for t, s in self._types.items()}

    # -- the stream ----------------------------------------------------------------------------------------------

    def _request(self, type_url: str, state: TypeState, *, error: str | None = None) -> Any:
        pb = protos()
        request = pb.DiscoveryRequest(
            version_info=state.version,
            resource_names=sorted(state.names),
            type_url=type_url,
            response_nonce=state.nonce,
        )
        if error is not None:
            request.error_detail.code = _INVALID_ARGUMENT
            request.error_detail.message = error
        return request

    def _run(self) -> None:
        failures = 0
        while not self._closed.is_set():
            got_response = self._stream()
            if self._closed.is_set():
                return
            failures = 0 if got_response else failures + 1
            self._closed.wait(backoff_delay(failures, self._rng))

    def _stream(self) -> bool:
        """One stream, from open to end; whether any response arrived on it."""
        pb = protos()
        outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        with self._lock:
            for type_url in ORDER:
                state = self._types[type_url]
                if state.wanted:
                    state.nonce = ""  # nonces belong to the stream that sent them
                    outbox.put(self._request(type_url, state))
        got_response = False
        channel = pb.channel(self.bootstrap.server)
        try:
            stub = pb.AdsStub(channel)
            call = stub.StreamAggregatedResources(self._requests(outbox))
            with self._lock:
                self._call, self._outbox = call, outbox
                self.streams += 1
            for response in call:
                if not got_response:
                    got_response = True
                    self.connected = True
                    logger.info("xDS stream to %s open", self.bootstrap.server.server_uri)
                self._on_response(response, outbox)
        except Exception as exc:  # grpc.RpcError and anything the stream raises: reconnect
            if not self._closed.is_set():
                message = _describe(exc)
                if message != self.last_stream_error or got_response:
                    logger.warning("xDS stream to %s lost: %s", self.bootstrap.server.server_uri, message)
                self.last_stream_error = message
        finally:
            with self._lock:
                self._call = self._outbox = None
            self.connected = False
            outbox.put(None)
            channel.close()
        return got_response

    def _requests(self, outbox: queue.SimpleQueue[Any]) -> Iterator[Any]:
        """The stream's requests; the first one carries the node, as gRPC sends it."""
        first = True
        while True:
            request = outbox.get()
            if request is None:
                return
            if first:
                request.node.CopyFrom(protos().node(self.bootstrap.node))
                first = False
            yield request

    def _on_response(self, response: Any, outbox: queue.SimpleQueue[Any]) -> None:
        type_url = response.type_url
        with self._lock:
            state = self._types.get(type_url)
            if state is None:  # a type never asked for: say so and move on
                logger.warning("xDS response of a type meshlib did not ask for: %s", type_url)
                return
            state.nonce = response.nonce
        try:
            error = self._handle(type_url, response)
        except Exception as exc:  # a bug here must NACK, not kill the stream
            logger.exception("handling an xDS response failed")
            error = f"internal error: {exc!r}"
        with self._lock:
            if error is None:
                state.version = response.version_info
                state.acks += 1
                state.last_error = None
            else:
                state.nacks += 1
                state.last_error = error
                state.last_error_version = response.version_info
                state.last_error_time = time.time()
                kind = type_url.rsplit(".", 1)[-1]
                logger.warning("xDS %s version %r NACKed: %s", kind, response.version_info, error)
            outbox.put(self._request(type_url, state, error=error))


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if callable(code) and callable(details):
        try:
            return f"{code().name}: {details()}"
        except Exception:
            pass
    return repr(exc)


def backoff_delay(failures: int, rng: random.Random) -> float:
    """The full-jitter wait before attempt ``failures + 1``."""
    return rng.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2**failures))
