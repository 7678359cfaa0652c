"""Inbound: who sent a request: the peer (mTLS certificate or trusted XFCC) and the request principal (JWT)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Identity", "JwtPrincipal", "Peer", "PeerCertificate", "spiffe_namespace"]


def spiffe_namespace(spiffe_id: str | None) -> str | None:
    """``spiffe://td/ns/NS/sa/SA`` → ``NS`` (Istio's ``source.namespace``), else None."""
    if spiffe_id is None:
        return None
    _, found, rest = spiffe_id.partition("/ns/")
    if not found:
        return None
    namespace = rest.partition("/")[0]
    return namespace or None


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """What a door knows about the peer's certificate: the fields of Envoy's ``x-forwarded-client-cert``.

    ``uri`` is the URI SAN (a SPIFFE ID for mesh workloads), ``hash`` the SHA-256
    of the certificate's DER as lower-case hex, ``subject`` its subject DN, ``dns`` its DNS SANs.
    """

    uri: str | None = None
    hash: str | None = None
    subject: str | None = None
    dns: tuple[str, ...] = ()

    @property
    def spiffe_id(self) -> str | None:
        """``uri`` when it is a SPIFFE ID, else None."""
        return self.uri if self.uri is not None and self.uri.startswith("spiffe://") else None


@dataclass(frozen=True, slots=True)
class Peer:
    """The connection a request came on, as the door saw it.

    ``address`` is the source IP of the connection, ``mtls`` whether the peer
    proved a certificate (the door's own TLS, or a trusted proxy's XFCC), and
    ``certificate`` that certificate's fields.
    """

    address: str | None = None
    mtls: bool = False
    certificate: PeerCertificate | None = None
    # The server name the peer asked for in its TLS ClientHello (Istio's connection.sni).
    sni: str | None = None

    @property
    def principal(self) -> str | None:
        """The peer's SPIFFE ID when it authenticated with mTLS, else None."""
        if not self.mtls or self.certificate is None:
            return None
        return self.certificate.spiffe_id


@dataclass(frozen=True, slots=True, eq=False)
class JwtPrincipal:
    """A verified JWT: built once per token and shared by every request that carries it (do not mutate)."""

    issuer: str
    subject: str
    claims: Mapping[str, Any]
    audiences: tuple[str, ...]
    presenter: str | None
    # Wall-clock time (seconds) until which the verification holds: exp plus the leeway (inf without exp).
    valid_until: float

    @property
    def principal(self) -> str:
        """Istio's request principal: ``iss/sub``."""
        return f"{self.issuer}/{self.subject}"


_NO_CLAIMS: Mapping[str, Any] = {}


@dataclass(frozen=True, slots=True, eq=False)
class Identity:
    """Who sent a request, as the inbound policy established it; the app reads it from
    ``scope["meshlib.identity"]`` (ASGI) or ``environ["meshlib.identity"]`` (WSGI).

    * **peer_principal** - the caller's SPIFFE ID (``spiffe://example.org/ns/default/sa/frontend``)
      when it authenticated with mTLS, else None.
    * **peer_namespace** - the namespace in that SPIFFE ID (``default``), else None.
    * **mtls** - whether the connection was mutually authenticated.
    * **source_address** - the IP address of the connection.
    * **request_principal** - ``iss/sub`` of the verified JWT, else None.
    * **claims** - the verified JWT's claims (read-only; empty without a token).
    * **audiences** - its ``aud``, always a tuple; **presenter** its ``azp``.
    * **peer** / **jwt** - the underlying :class:`Peer` and :class:`JwtPrincipal` (None without a token).

    Example (Starlette)::

        identity = request.scope["meshlib.identity"]
        if identity.request_principal is None:
            ...
    """

    peer: Peer
    jwt: JwtPrincipal | None = None

    @property
    def peer_principal(self) -> str | None:
        return self.peer.principal

    @property
    def peer_namespace(self) -> str | None:
        return spiffe_namespace(self.peer.principal)

    @property
    def mtls(self) -> bool:
        return self.peer.mtls

    @property
    def source_address(self) -> str | None:
        return self.peer.address

    @property
    def request_principal(self) -> str | None:
        return None if self.jwt is None else self.jwt.principal

    @property
    def claims(self) -> Mapping[str, Any]:
        return _NO_CLAIMS if self.jwt is None else self.jwt.claims

    @property
    def audiences(self) -> tuple[str, ...]:
        return () if self.jwt is None else self.jwt.audiences

    @property
    def presenter(self) -> str | None:
        return None if self.jwt is None else self.jwt.presenter

    @property
    def authenticated(self) -> bool:
        """Whether the caller proved anything: an mTLS peer identity or a verified JWT."""
        return self.peer.principal is not None or self.jwt is not None
