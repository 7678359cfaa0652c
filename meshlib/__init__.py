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

import importlib
from typing import TYPE_CHECKING

from meshlib.__version__ import __version__

if TYPE_CHECKING:
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

# Where each public name is defined. They load on first use (PEP 562), not with the package: the ``meshlib``
# command decides what its process imports before httpx loads (the sidecar leaves out httpx's own CLI, see
# ``_cli.py``), and the command's package import must not have loaded httpx already.
_ERRORS = "meshlib._errors"
_DEFINED_IN: dict[str, str] = {
    "AsyncHTTP1Transport": "meshlib._transport",
    "AsyncMeshTransport": "meshlib._frontdoors.httpx_transport",
    "CircuitOpenError": _ERRORS,
    "ConfigError": _ERRORS,
    "DiscoveryError": _ERRORS,
    "Identity": "meshlib._engine.inbound_context",
    "Mesh": "meshlib._mesh",
    "MeshConfig": "meshlib._config.models",
    "MeshError": _ERRORS,
    "MeshTransport": "meshlib._frontdoors.httpx_transport",
    "NoHealthyUpstreamError": _ERRORS,
    "OverloadedError": _ERRORS,
    "PeerIdentityError": _ERRORS,
    "RateLimitedError": _ERRORS,
    "RequestTimeoutError": _ERRORS,
    "RetryEvent": "meshlib._hooks",
    "RouteNotFoundError": _ERRORS,
    "UpstreamConnectError": _ERRORS,
    "UpstreamResetError": _ERRORS,
    "wrap": "meshlib._frontdoors.httpx_transport",
}


def __getattr__(name: str) -> object:
    module = _DEFINED_IN.get(name)
    if module is None:
        raise AttributeError(f"module 'meshlib' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_DEFINED_IN})
