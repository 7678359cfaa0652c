"""Inbound: the engine's view of one request (what a door hands in) and of its verdict (what it gets back).

Who sent it is part of both: the :class:`Peer` a door hands in, the
:class:`Identity` the stack hands back (and the app reads); the inbound
policies (``_policies/``) establish it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, Protocol

__all__ = [
    "BAD_REQUEST",
    "FORBIDDEN",
    "UNAUTHENTICATED",
    "Denial",
    "Identity",
    "InboundContext",
    "InboundFilter",
    "InboundRequest",
    "InboundResult",
    "JwtPrincipal",
    "Peer",
    "PeerCertificate",
    "spiffe_namespace",
]

DenialCode = Literal["bad_request", "unauthenticated", "forbidden"]
BAD_REQUEST: Final = "bad_request"
UNAUTHENTICATED: Final = "unauthenticated"
FORBIDDEN: Final = "forbidden"


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


@dataclass(slots=True)
class InboundRequest:
    """One request as a door received it, before any decoding.

    * **method** - as received (case kept: a lower-case method is refused, as Istio does).
    * **raw_path** - the path of the request target, no query, still percent-encoded; raw bytes
      above ASCII as latin-1 characters (``bytes.decode("latin-1")``).
    * **query** - the query string, without ``?`` (JWTs may come from ``from_params``).
    * **headers** - lower-case names; repeated headers joined with ``", "`` (Istio merges them so).
    * **host** - the Host (``:authority``) header as received, or None.
    * **port** - the port the request arrived on (Istio's ``destination.port``).
    * **peer** - the connection: source address, whether it was mTLS, the peer's certificate.
    """

    method: str
    raw_path: str
    query: str
    headers: Mapping[str, str]
    host: str | None = None
    port: int | None = None
    peer: Peer = field(default_factory=Peer)


@dataclass(frozen=True, slots=True)
class Denial:
    """A request refused before the app: the door answers ``status`` with ``headers`` and a one-line body.

    ``code`` goes in ``x-meshlib-error``; ``policy`` names the authorization
    policy that denied it (its ``name`` or ``authorization[i]``), for logs and metrics.
    """

    status: int
    code: DenialCode
    message: str
    headers: tuple[tuple[str, str], ...] = ()
    policy: str | None = None

    @property
    def body(self) -> bytes:
        """``{code}: {message}``, the format of the sidecar's own error answers (meshlib/_wire.py)."""
        return f"{self.code}: {self.message}\n".encode(errors="replace")


@dataclass(slots=True)
class InboundContext:
    """What the inbound filters establish about one request, and the verdict the door carries out.

    ``denial`` set: answer it, the app never sees the request. Otherwise the
    app gets ``identity``, the normalised path (``path`` percent-encoded, what
    authorization matched; ``decoded_path``, what ASGI ``path`` and WSGI
    ``PATH_INFO`` hold) and the header edits: ``remove_headers`` (a verified
    token, a forged payload header) taken out, then ``set_headers`` set.
    """

    request: InboundRequest
    peer: Peer
    path: str = ""
    decoded_path: str = ""
    host: str | None = None
    jwt: JwtPrincipal | None = None
    remove_headers: list[str] | None = None
    set_headers: list[tuple[str, str]] | None = None
    denial: Denial | None = None
    identity: Identity | None = None

    @property
    def path_changed(self) -> bool:
        """Whether normalisation changed the path: the door must hand the app the new one."""
        return self.path != self.request.raw_path

    def remove_header(self, name: str) -> None:
        if self.remove_headers is None:
            self.remove_headers = [name]
        else:
            self.remove_headers.append(name)

    def set_header(self, name: str, value: str) -> None:
        if self.set_headers is None:
            self.set_headers = [(name, value)]
        else:
            self.set_headers.append((name, value))


# What InboundStack.check returns: the context, with denial or identity set.
InboundResult = InboundContext


class InboundFilter(Protocol):
    """One step of the inbound stack: sans-I/O, returns a :class:`Denial` to stop the request or None."""

    name: ClassVar[str]

    def apply(self, ctx: InboundContext) -> Denial | None: ...
