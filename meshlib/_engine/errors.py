"""Error mapping at the send boundary: httpx's transport errors → the mesh's typed errors.

Like httpx's ``map_httpcore_exceptions``: the most specific match wins, and
the original error stays as ``__cause__``.
"""

from __future__ import annotations

import httpx

from meshlib._engine.context import CallContext
from meshlib._errors import MeshError, RequestTimeoutError, UpstreamConnectError, UpstreamResetError

__all__ = ["upstream_error"]

# Order matters: ConnectTimeout is a TimeoutException, but the request never left, so it is a connect failure.
_MAPPING: tuple[tuple[type[httpx.TransportError], type[MeshError]], ...] = (
    (httpx.ConnectError, UpstreamConnectError),
    (httpx.ConnectTimeout, UpstreamConnectError),
    (httpx.TimeoutException, RequestTimeoutError),
    (httpx.NetworkError, UpstreamResetError),
    (httpx.RemoteProtocolError, UpstreamResetError),
)


def upstream_error(exc: httpx.TransportError, ctx: CallContext) -> MeshError | None:
    """The mesh error for ``exc`` (raised by the inner transport), or None to let it through as is."""
    if isinstance(exc, MeshError):
        return None
    for source, target in _MAPPING:
        if isinstance(exc, source):
            endpoint = ctx.endpoint.url if ctx.endpoint else "upstream"
            error = target(
                f"{endpoint}: {exc or type(exc).__name__}",
                request=ctx.original,
                route=ctx.route.name,
                cluster=ctx.cluster,
            )
            if isinstance(error, RequestTimeoutError):
                # Whether only this try ran out, or the whole request's deadline (1 ms of timer slack).
                error.per_try = ctx.deadline is None or ctx.clock.monotonic() < ctx.deadline - 0.001
            return error
    return None
