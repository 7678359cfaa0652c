"""Inbound: normalise → peer authn (mTLS) → JWT authn → authz; compiled once per snapshot, called by every door.

Built by :func:`build_inbound_stack` below, which says where each filter
goes; ``_snapshot/compile.py`` makes each policy from the ``inbound:``
config and hands it in. A door (ASGI/WSGI middleware, the sidecar's inbound
listener) builds an :class:`InboundRequest` from what it received, calls
``mesh.snapshot.inbound.check(request)`` and carries out the
:class:`InboundResult`: answer its ``denial``, or hand the app the
normalised path, the header edits and ``identity``. Sans-I/O: nothing here
reads a socket (JWKS fetches run in the background, jwks.py). Later inbound
features (rate limits, server spans, metrics) join the filter list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from meshlib._config.security import InboundConfig
from meshlib._engine.inbound_context import Identity, InboundContext, InboundFilter, InboundRequest, InboundResult, Peer

__all__ = ["InboundStack", "build_inbound_stack"]

# Distinct peer addresses remembered; a workload has few (its sidecar, its callers).
_TRUST_CACHE_SIZE: Final = 4096


class InboundStack:
    """The compiled ``inbound:`` policy of one snapshot: its filters in order, and :meth:`check`.

    ``trusted`` tells the addresses of ``inbound.trusted_proxies`` (authz.py's ``IpMatch``).
    """

    def __init__(
        self, filters: Sequence[InboundFilter], config: InboundConfig | None, trusted: Callable[[str | None], bool]
    ) -> None:
        self.filters = tuple(filters)
        self.config = config
        self._trusted = trusted
        self._trust_cache: dict[str | None, bool] = {}
        # The doors' (address, XFCC) → (Peer, strip XFCC) memo (inbound_door.resolve_peer); dropped with the stack.
        self.peer_cache: dict[tuple[str | None, str | None], tuple[Peer, bool]] = {}

    def trusts(self, address: str | None) -> bool:
        """Whether a connection from ``address`` may vouch for its caller in ``x-forwarded-client-cert``."""
        found = self._trust_cache.get(address)
        if found is None:
            found = self._trusted(address)
            if len(self._trust_cache) < _TRUST_CACHE_SIZE:
                self._trust_cache[address] = found
        return found

    @property
    def names(self) -> list[str]:
        """The filters' names in the order they run (checked by a test, shown by tools)."""
        return [f.name for f in self.filters]

    def check(self, request: InboundRequest) -> InboundResult:
        """Apply every filter to ``request``; the first denial stops it. Sets ``denial`` or ``identity``."""
        ctx = InboundContext(request, request.peer)
        for f in self.filters:
            denial = f.apply(ctx)
            if denial is not None:
                ctx.denial = denial
                return ctx
        ctx.identity = Identity(ctx.peer, ctx.jwt)
        return ctx


def build_inbound_stack(
    config: InboundConfig | None,
    *,
    normalize: InboundFilter,
    trusted: Callable[[str | None], bool],
    peer_authn: InboundFilter | None = None,
    jwt: InboundFilter | None = None,
    authz: InboundFilter | None = None,
) -> InboundStack:
    """The stack for ``config`` (None: normalisation only), its filters in the documented order; None is left out."""
    filters = [
        f
        for f in (
            # Normalise first: every later decision (and the app) must see the same path (CVE-2021-31920).
            normalize,
            # The peer is settled before the token: Istio's PeerAuthentication runs in the TLS handshake.
            peer_authn,
            # Authentication before authorization: rules on request_principals need the verified token.
            jwt,
            authz,
        )
        if f is not None
    ]
    return InboundStack(filters, config, trusted)
