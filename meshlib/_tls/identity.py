"""SPIFFE identities of peers: read from a verified certificate, and checked against ``expected_identities``.

A SPIFFE ID travels in an X.509 certificate as a URI SAN (X.509-SVID §2).
A connection is checked right after its handshake and before any byte of a
request is written, as Envoy's ``match_typed_subject_alt_names`` does, so an
upstream that is not who the config expects never sees the request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = [
    "IdentityCheck",
    "PeerIdentityMismatch",
    "peer_spiffe_id",
    "spiffe_ids_from_der",
    "spiffe_ids_from_peercert",
]


def spiffe_ids_from_peercert(peercert: dict[str, Any] | None) -> list[str]:
    """The ``spiffe://`` URI SANs of ``ssl``'s ``getpeercert()`` dict (a verified peer's), in order."""
    if not peercert:
        return []
    return [
        value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI" and value.startswith("spiffe://")
    ]


def spiffe_ids_from_der(der: bytes) -> list[str]:
    """The ``spiffe://`` URI SANs of a DER certificate (``getpeercert(binary_form=True)``); [] if it has none."""
    from cryptography import x509  # here: cryptography loads only where certificates are read

    try:
        cert = x509.load_der_x509_certificate(der)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return []
    return [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]


def peer_spiffe_id(ssl_object: Any) -> str | None:
    """The SPIFFE ID of a TLS connection's verified peer (an ``ssl.SSLObject`` or socket), or None.

    An X.509-SVID has exactly one URI SAN; should a certificate carry
    several, the first is the peer's.
    """
    if ssl_object is None:
        return None
    ids = spiffe_ids_from_peercert(ssl_object.getpeercert())
    return ids[0] if ids else None


class PeerIdentityMismatch(httpx.ConnectError):
    """The upstream's certificate verified but does not carry an expected SPIFFE ID (nothing was sent).

    The engine raises it to the caller as ``meshlib.PeerIdentityError``.
    """

    def __init__(self, peer: str | None, expected: Sequence[str]) -> None:
        self.peer = peer
        self.expected = tuple(expected)
        shown = ", ".join(self.expected)
        presented = f"presented {peer}" if peer is not None else "presented no SPIFFE ID (no spiffe:// URI SAN)"
        super().__init__(f"peer identity mismatch: the upstream {presented}, expected {shown}")


@dataclass(frozen=True, slots=True)
class IdentityCheck:
    """Accepts a connection whose peer has one of ``expected`` as its SPIFFE ID; raises PeerIdentityMismatch."""

    expected: frozenset[str]
    shown: tuple[str, ...]  # expected, in the config's order, for messages

    @classmethod
    def of(cls, expected: Sequence[str]) -> IdentityCheck:
        return cls(frozenset(expected), tuple(dict.fromkeys(expected)))

    def __call__(self, ssl_object: Any) -> None:
        ids = spiffe_ids_from_peercert(ssl_object.getpeercert() if ssl_object is not None else None)
        # As Envoy's SAN matchers: any one of the certificate's SANs may match.
        if not any(i in self.expected for i in ids):
            raise PeerIdentityMismatch(ids[0] if ids else None, self.shown)
