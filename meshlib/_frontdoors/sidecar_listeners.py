"""Sidecar front door: the listeners' handlers, from a request read off the wire to the engine and back.

The listener (``meshlib/_sidecar/server.py``) parses and checks the request
and builds an ``httpx.Request`` with the absolute URL; these handlers hand it
to the engine. Errors are turned into responses by the listener, one format
for all (``meshlib._wire.error_head``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from meshlib._engine import outbound
from meshlib._engine.urls import with_origin
from meshlib._errors import RouteNotFoundError
from meshlib._sidecar.server import Handler
from meshlib._sidecar.tunnel import ConnectPolicy
from meshlib._wire import ERROR_HEADER

if TYPE_CHECKING:
    from meshlib._mesh import Mesh
    from meshlib._tls.senders import TlsSenders

__all__ = ["DEFAULT_TIMEOUTS", "connect_policy", "inbound_handler", "outbound_handler"]

# What a request through the sidecar gets when nothing tighter is configured (a passthrough, or a route
# without timeouts): a connect timeout, as Istio gives its passthrough cluster, and Envoy's stream idle
# timeout between reads and writes. A client that points at the sidecar cannot pass httpx timeouts of its
# own, and without these a passthrough to an address that never answers would hold its request for ever.
DEFAULT_TIMEOUTS: dict[str, float | None] = {"connect": 10.0, "read": 300.0, "write": 300.0, "pool": 10.0}


def outbound_handler(mesh: Mesh, sender: httpx.AsyncBaseTransport, tls: TlsSenders | None = None) -> Handler:
    """Requests from the local app to the mesh: routed by the engine, sent with ``sender`` (TLS clusters: ``tls``)."""

    async def handle(request: httpx.Request) -> httpx.Response:
        request.extensions["timeout"] = DEFAULT_TIMEOUTS  # the engine copies it before tightening it per try
        # One read of the snapshot per request: a hot reload mid-request doesn't change this request's view.
        response = await outbound.handle_async(mesh.snapshot, request, sender, tls)
        if ERROR_HEADER in response.headers:
            # Only the sidecar names mesh errors: an upstream's header would make clients raise one.
            del response.headers[ERROR_HEADER]
        return response

    return handle


def inbound_handler(mesh: Mesh, app: str, sender: httpx.AsyncBaseTransport) -> Handler:
    """Requests from the mesh to the local app at ``app`` (``http://HOST:PORT``): path, query and Host kept."""
    origin = httpx.URL(app)

    async def handle(request: httpx.Request) -> httpx.Response:
        # The listener built this request for this call alone, so it is retargeted in place.
        request.url = with_origin(request.url, origin)
        return await sender.handle_async_request(request)

    return handle


def connect_policy(mesh: Mesh) -> ConnectPolicy:
    """CONNECT tunnels go anywhere under ``outbound_policy: allow_any`` and nowhere under ``registry_only``."""

    async def allowed(host: str, port: int) -> bool:
        if mesh.snapshot.passthrough:
            return True
        raise RouteNotFoundError(f"CONNECT {host}:{port} refused: outbound_policy is registry_only")

    return allowed
