"""Inbound: normalise → peer authn (mTLS) → JWT authn → authz; compiled once per snapshot, called by every door.

A door (ASGI/WSGI middleware, the sidecar's inbound listener) builds an
:class:`InboundRequest` from what it received, calls
``mesh.snapshot.inbound.check(request)`` and carries out the
:class:`InboundResult`: answer its ``denial``, or hand the app the
normalised path, the header edits and ``identity``. Sans-I/O: nothing here
reads a socket (JWKS fetches run in the background, jwks.py). Later inbound
features (rate limits, server spans, metrics) join the filter list.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Final

from meshlib._config.security import InboundConfig
from meshlib._engine.inbound_context import (
    BAD_REQUEST,
    Denial,
    InboundContext,
    InboundFilter,
    InboundRequest,
    InboundResult,
)
from meshlib._policies.authz import AuthzFilter, IpMatch, compile_policies, normal_host
from meshlib._policies.identity import Identity, Peer
from meshlib._policies.path_normalize import PathError, normalize_path
from meshlib._policies.peer_authn import PeerAuthnFilter

if TYPE_CHECKING:
    from meshlib._policies.authn import KeySource

__all__ = ["InboundStack", "NormalizeFilter", "build_inbound_stack"]

# RFC 9110 §9.1: a method is a token; Istio refuses one that is not upper case with 400, so that a
# deny on DELETE cannot be dodged with "delete" (an app such as Werkzeug upper-cases it).
# Distinct peer addresses remembered; a workload has few (its sidecar, its callers).
_TRUST_CACHE_SIZE: Final = 4096
_METHODS: Final = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
_METHOD: Final = re.compile(r"[A-Z0-9!#$%&'*+.^_`|~-]+")


# Host header → its normal form; a workload is called by few names.
_HOST_CACHE_SIZE: Final = 1024
_hosts: dict[str, str] = {}


class NormalizeFilter:
    """Checks the method and normalises the path (path_normalize.py) and host; 400 for what it refuses."""

    name: ClassVar[str] = "normalize"

    def apply(self, ctx: InboundContext) -> Denial | None:
        request = ctx.request
        if request.method not in _METHODS and _METHOD.fullmatch(request.method) is None:
            return Denial(400, BAD_REQUEST, f"invalid method {request.method!r}: methods are upper-case tokens")
        try:
            ctx.path, ctx.decoded_path = normalize_path(request.raw_path)
        except PathError as exc:
            return Denial(400, BAD_REQUEST, f"invalid path: {exc}")
        host = request.host
        if host is not None:
            found = _hosts.get(host)
            if found is None:
                found = normal_host(host)
                if len(_hosts) < _HOST_CACHE_SIZE:
                    _hosts[host] = found
            ctx.host = found
        return None


class InboundStack:
    """The compiled ``inbound:`` policy of one snapshot: its filters in order, and :meth:`check`."""

    def __init__(self, filters: Sequence[InboundFilter], config: InboundConfig | None) -> None:
        self.filters = tuple(filters)
        self.config = config
        blocks = config.trusted_proxies if config is not None else InboundConfig().trusted_proxies
        self._trusted = IpMatch(blocks)
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
    config: InboundConfig | None, jwks: Sequence[KeySource], *, realm: str = "meshlib"
) -> InboundStack:
    """The stack for ``config`` (None: normalisation only); ``jwks[i]`` holds the keys of ``config.jwt[i]``."""
    # Normalise first: every later decision (and the app) must see the same path (CVE-2021-31920).
    filters: list[InboundFilter] = [NormalizeFilter()]
    if config is not None:
        # The peer is settled before the token: Istio's PeerAuthentication runs in the TLS handshake.
        if config.mtls is not None:
            filters.append(PeerAuthnFilter(config.mtls))
        # Authentication before authorization: rules on request_principals need the verified token.
        if config.jwt:
            # PyJWT (and cryptography) load only for a mesh that checks tokens: idle memory and start-up stay small.
            from meshlib._policies.authn import JwtFilter, JwtProvider

            providers = [JwtProvider.from_config(p, keys) for p, keys in zip(config.jwt, jwks, strict=True)]
            filters.append(JwtFilter(providers, realm=realm))
        if config.authorization:
            filters.append(AuthzFilter(compile_policies(config.authorization)))
    return InboundStack(filters, config)
