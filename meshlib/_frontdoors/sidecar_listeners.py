"""Sidecar front door: the listeners' handlers, from a request read off the wire to the engine and back.

The listener (``meshlib/_sidecar/server.py``) parses and checks the request
and builds an ``httpx.Request`` with the absolute URL; these handlers hand it
to the engine. Errors are turned into responses by the listener, one format
for all (``meshlib._wire.error_head``). What the two share is defined on this
side (``sidecar_requests.py``): ``_sidecar`` imports the front door, never
the other way round.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Final, Literal

import httpx

from meshlib._engine import outbound
from meshlib._engine.inbound_context import Peer, PeerCertificate
from meshlib._engine.urls import with_origin
from meshlib._errors import RouteNotFoundError
from meshlib._frontdoors.inbound_door import certificate_from_der, denial_headers, request_from_wire
from meshlib._frontdoors.sidecar_requests import DOWNSTREAM, REQUEST_LINE, ConnectPolicy, Downstream, Handler
from meshlib._httpx_shortcuts import LOWER_NAME, raw_items
from meshlib._observe.hooks import SIDECAR_DOOR, error_code, inbound_exchange, inbound_finished, inbound_observed
from meshlib._policies.xfcc import XFCC_HEADER, format_xfcc
from meshlib._wire import ERROR_HEADER

if TYPE_CHECKING:
    from meshlib._mesh import Mesh
    from meshlib._tls.senders import TlsSenders

__all__ = ["DEFAULT_TIMEOUTS", "InboundTls", "connect_policy", "inbound_handler", "outbound_handler"]

# What a request through the sidecar gets when nothing tighter is configured (a passthrough, or a route
# without timeouts): a connect timeout, as Istio gives its passthrough cluster, and Envoy's stream idle
# timeout between reads and writes. A client that points at the sidecar cannot pass httpx timeouts of its
# own, and without these a passthrough to an address that never answers would hold its request for ever.
DEFAULT_TIMEOUTS: dict[str, float | None] = {"connect": 10.0, "read": 300.0, "write": 300.0, "pool": 10.0}


def outbound_handler(mesh: Mesh, sender: httpx.AsyncBaseTransport, tls: TlsSenders | None = None) -> Handler:
    """Requests from the local app to the mesh: routed by the engine, sent with ``sender`` (TLS clusters: ``tls``)."""

    def handle(request: httpx.Request) -> Awaitable[httpx.Response]:
        request.extensions["timeout"] = DEFAULT_TIMEOUTS  # the engine copies it before tightening it per try
        request.extensions[SIDECAR_DOOR] = True  # observers tell the sidecar's requests from in-process ones
        # One read of the snapshot per request: a hot reload mid-request doesn't change this request's view. The
        # engine's coroutine is the request's, with no coroutine of this door's around it.
        return outbound.handle_async(mesh.snapshot, request, sender, tls, _without_error_header)

    return handle


def _without_error_header(response: httpx.Response) -> httpx.Response:
    """The outbound door's last step: only the sidecar names mesh errors (an upstream's header would make clients
    raise one)."""
    # One C-level scan of the raw names: `in response.headers` decodes every header of a new Headers first.
    if _ERROR_RAW in _map(LOWER_NAME, response.headers._list):
        del response.headers[ERROR_HEADER]
    return response


class InboundTls:
    """The inbound listener's TLS as the mesh's config says now (``inbound.mtls``): a reload or rotation applies
    to the next connection. With no ``inbound.mtls`` (or ``mode: disable``) the listener is plaintext."""

    def __init__(self, mesh: Mesh) -> None:
        self._mesh = mesh

    @property
    def mode(self) -> Literal["strict", "permissive", "disable"]:
        return "disable" if self._mesh._server_credentials() is None else self._config_mode()

    def _config_mode(self) -> Literal["strict", "permissive", "disable"]:
        inbound = self._mesh.config.inbound
        return inbound.mtls.mode if inbound is not None and inbound.mtls is not None else "disable"

    def context(self) -> ssl.SSLContext:
        credentials = self._mesh._server_credentials()
        if credentials is None:  # turned off between the accept and now: refuse rather than serve without it
            raise ssl.SSLError("inbound mTLS is not configured")
        return credentials.context()

    def identity(self) -> str | None:
        """This workload's own SPIFFE ID (the certificate it presents), for the XFCC's ``By``."""
        credentials = self._mesh._server_credentials()
        if credentials is None:
            return None
        infos = credentials.source.material.certificates.get("cert_file")
        return infos[0].spiffe_id if infos else None


def inbound_handler(mesh: Mesh, app: str, sender: httpx.AsyncBaseTransport) -> Handler:
    """Requests from the mesh to the local app at ``app`` (``http://HOST:PORT``), through the ``inbound:`` policy.

    The policy is the one the ASGI/WSGI middleware applies (the engine's
    inbound stack): the path is normalised from the target as sent, the peer
    is the certificate the listener verified (never a caller's
    ``x-forwarded-client-cert``, which is removed, Envoy's ``SANITIZE_SET``),
    a JWT and the authorization policies are checked, and a denial is
    answered here. An allowed request reaches the app with the normalised
    path, the policy's header edits and, for an mTLS peer, an XFCC naming it.
    """
    origin = httpx.URL(app)
    tls = InboundTls(mesh)
    certificates: dict[bytes, PeerCertificate | None] = {}

    def certificate(der: bytes) -> PeerCertificate | None:
        # One parse per certificate, not per request: a workload sees few distinct callers.
        found = certificates.get(der, _UNSEEN)
        if found is _UNSEEN:
            found = certificate_from_der(der)
            if len(certificates) >= _CERTIFICATE_CACHE:
                certificates.pop(next(iter(certificates)))
            certificates[der] = found
        return found  # type: ignore[return-value]

    async def handle(request: httpx.Request) -> httpx.Response:
        snapshot = mesh.snapshot
        downstream: Downstream | None = request.extensions.get(DOWNSTREAM)
        address = downstream.address[0] if downstream is not None and downstream.address else None
        der = downstream.certificate if downstream is not None else None
        verified = certificate(der) if der else None
        peer = Peer(address, verified is not None, verified)
        method, target = request.extensions.get(REQUEST_LINE) or (request.method, request.url.raw_path)
        observers = snapshot.observers
        exchange = None
        if observers is not None:
            exchange = inbound_exchange(
                "sidecar",
                method,
                "https" if downstream is not None and downstream.tls else "http",
                request.headers.get("host", ""),
                _origin_form(target).decode("latin-1"),
                raw_items(request.headers),
                peer.principal,
            )
            exchange.protocol = request.extensions.get("http_version", b"HTTP/1.1").decode("ascii", "replace")
            observers.started(exchange)
        result = snapshot.inbound.check(
            request_from_wire(method.encode("latin-1"), target, raw_items(request.headers), peer, origin.port)
        )
        denial = result.denial
        if denial is not None:
            if observers is not None and exchange is not None:
                exchange.denied_by = denial.policy
                inbound_finished(exchange, observers, denial.status, denial.code, len(denial.body))
            return httpx.Response(denial.status, headers=denial_headers(denial), content=denial.body)
        headers = request.headers
        if _XFCC_RAW in _map(LOWER_NAME, headers._list):  # one C-level scan: a caller's rarely has one
            headers._list = [entry for entry in headers._list if entry[1] != _XFCC_RAW]
        for name in result.remove_headers or ():
            headers.pop(name, None)
        for name, value in result.set_headers or ():
            headers[name] = value
        if verified is not None and downstream is not None:
            if result.set_headers:
                headers.pop(XFCC_HEADER, None)  # a policy's value gives way to the verified peer's
            forwarded = downstream.xfcc
            if forwarded is None:
                # Once per connection: the peer and our own certificate (By=) are those of its handshake.
                forwarded = downstream.xfcc = format_xfcc(verified, by=tls.identity()).encode("utf-8")
            headers._list.append((_XFCC_RAW, _XFCC_RAW, forwarded))
        # The normalised path, as authorization saw it; the query as it was sent.
        url = with_origin(request.url, origin)
        if result.path_changed:
            url = url.copy_with(raw_path=result.path.encode("latin-1") + _query_of(target))
        request.url = url
        if observers is None or exchange is None:
            return await sender.handle_async_request(request)
        observers.forwarding(exchange, request)
        try:
            response = await sender.handle_async_request(request)
        except BaseException as exc:
            # The app is unreachable: the listener answers 502/503/504 for the error (its code says which).
            inbound_finished(exchange, observers, None, error_code(exc))
            raise
        return inbound_observed(response, exchange, observers)

    return handle


_UNSEEN: Final = object()
_XFCC_RAW: Final = XFCC_HEADER.encode("ascii")
_ERROR_RAW: Final = ERROR_HEADER.encode("ascii")
_CERTIFICATE_CACHE: Final = 1024
_map: Final = map  # bound once: compiled, a builtin is looked up on the builtins module at each use


def _origin_form(target: bytes) -> bytes:
    """``http://host:port/p?q`` (absolute-form, RFC 9112 §3.2.2) → ``/p?q``; an origin-form target as it is."""
    if target.startswith(b"/") or b"://" not in target:
        return target
    rest = target.partition(b"://")[2]
    slash = rest.find(b"/")
    return rest[slash:] if slash >= 0 else b"/" + rest.partition(b"?")[1] + rest.partition(b"?")[2]


def _query_of(target: bytes) -> bytes:
    _, mark, query = target.partition(b"?")
    return mark + query


def connect_policy(mesh: Mesh) -> ConnectPolicy:
    """CONNECT tunnels go anywhere under ``outbound_policy: allow_any`` and nowhere under ``registry_only``."""

    async def allowed(host: str, port: int) -> bool:
        if mesh.snapshot.passthrough:
            return True
        raise RouteNotFoundError(f"CONNECT {host}:{port} refused: outbound_policy is registry_only")

    return allowed
