"""``inbound.mtls`` as a policy: whether a request must come from a verified peer (Istio's PeerAuthentication).

Apart from the JWT filter so that a mesh with mTLS and no JWT never imports PyJWT.
"""

from __future__ import annotations

from typing import ClassVar

from meshlib._config.security import InboundMtlsConfig
from meshlib._engine.inbound_context import FORBIDDEN, Denial, InboundContext, Peer

__all__ = ["PeerAuthnFilter"]


class PeerAuthnFilter:
    """``inbound.mtls``: ``strict`` refuses a request without a verified peer certificate; ``disable`` ignores one.

    ``permissive`` (and no ``mtls`` at all, Istio's default) lets plaintext
    through as unauthenticated. In the sidecar a strict listener refuses the
    plaintext connection itself; in the middleware, which gets the request
    after the server accepted it, the answer is 403.
    """

    name: ClassVar[str] = "peer_authn"

    def __init__(self, config: InboundMtlsConfig) -> None:
        self.mode = config.mode

    def apply(self, ctx: InboundContext) -> Denial | None:
        if self.mode == "strict" and not ctx.peer.mtls:
            return Denial(403, FORBIDDEN, "mTLS required (inbound.mtls.mode strict): no verified peer certificate")
        if self.mode == "disable" and ctx.peer.mtls:
            ctx.peer = Peer(address=ctx.peer.address, sni=ctx.peer.sni)
        return None
