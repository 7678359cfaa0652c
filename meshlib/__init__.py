"""meshlib: a service mesh you pip install.

Route, split and load-balance an app's httpx traffic in process::

    import meshlib

    mesh = meshlib.Mesh.from_file("mesh.yaml")
    with mesh.client() as client:
        client.get("http://reviews/api/reviews/1")

An async app gets the fast HTTP/1.1 inner transport with
``mesh.async_client(transport=meshlib.AsyncHTTP1Transport())``.
"""

from __future__ import annotations

from meshlib.__version__ import __version__
from meshlib._config.models import MeshConfig
from meshlib._engine.inbound_context import Identity
from meshlib._errors import (
    CircuitOpenError,
    ConfigError,
    DiscoveryError,
    MeshError,
    NoHealthyUpstreamError,
    OverloadedError,
    PeerIdentityError,
    RateLimitedError,
    RequestTimeoutError,
    RouteNotFoundError,
    UpstreamConnectError,
    UpstreamResetError,
)
from meshlib._frontdoors.httpx_transport import AsyncMeshTransport, MeshTransport, wrap
from meshlib._hooks import RetryEvent
from meshlib._mesh import Mesh
from meshlib._transport import AsyncHTTP1Transport

__all__ = [
    "AsyncHTTP1Transport",
    "AsyncMeshTransport",
    "CircuitOpenError",
    "ConfigError",
    "DiscoveryError",
    "Identity",
    "Mesh",
    "MeshConfig",
    "MeshError",
    "MeshTransport",
    "NoHealthyUpstreamError",
    "OverloadedError",
    "PeerIdentityError",
    "RateLimitedError",
    "RequestTimeoutError",
    "RetryEvent",
    "RouteNotFoundError",
    "UpstreamConnectError",
    "UpstreamResetError",
    "__version__",
    "wrap",
]
