"""What the sidecar's listeners hand the front door: a request's extensions, the client, and the handlers' shapes.

The listener (``meshlib/_sidecar/server.py``) reads requests off the wire and
calls a :data:`Handler` (``sidecar_listeners.py`` makes them); a CONNECT asks a
:data:`ConnectPolicy`. Both sides import these names from here, so the
imports between the two packages go one way: ``_sidecar`` → ``_frontdoors``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import httpx

__all__ = ["DOWNSTREAM", "REQUEST_LINE", "ConnectPolicy", "Downstream", "Handler"]

# The request extension that tells a handler who the client is (a Downstream): address, TLS, certificate.
DOWNSTREAM: Final = "meshlib.downstream"
# The request extension holding (method, absolute URL bytes) exactly as read, before httpx normalised them.
REQUEST_LINE: Final = "meshlib.request_line"

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]
"""``await handler(request)`` → the response to send back (its body is streamed, then closed)."""

ConnectPolicy = Callable[[str, int], Awaitable[bool]]
"""``await policy(host, port)``: whether CONNECT may open a tunnel there (False, or a raised MeshError, refuses)."""


@dataclass(slots=True)
class Downstream:
    """What a listener knows of the client of a connection: its address and, over TLS, its certificate.

    ``xfcc`` is the connection's ``x-forwarded-client-cert`` value once the
    inbound handler has made it: the same for every request on the connection.
    """

    address: tuple[str, int] | None
    tls: bool = False
    certificate: bytes | None = None  # DER, when the client presented one that verified
    xfcc: bytes | None = field(default=None, compare=False)
