"""What the inbound doors share: the peer from a TLS certificate or a trusted XFCC, and the denial's answer."""

from __future__ import annotations

import hashlib
import ssl
import threading
from collections.abc import Sequence
from typing import Final

from meshlib._engine.inbound_context import Denial, InboundRequest, Peer, PeerCertificate
from meshlib._engine.inbound_stack import InboundStack
from meshlib._policies.xfcc import peer_from_xfcc
from meshlib._wire import ERROR_HEADER

__all__ = [
    "IDENTITY_KEY",
    "certificate_from_der",
    "certificate_from_pem",
    "denial_headers",
    "request_from_wire",
    "resolve_peer",
]

# Where the app finds the caller's Identity: scope[IDENTITY_KEY] (ASGI) or environ[IDENTITY_KEY] (WSGI).
IDENTITY_KEY: Final = "meshlib.identity"
_CACHE_SIZE: Final = 256
# (address, XFCC) pairs remembered per policy: a workload sees few distinct callers.
_PEER_CACHE_SIZE: Final = 4096
_cache: dict[str, PeerCertificate | None] = {}
_lock = threading.Lock()


def certificate_from_der(der: bytes) -> PeerCertificate | None:
    """The XFCC fields of a DER certificate (URI SAN, SHA-256, subject, DNS SANs), or None if it does not parse."""
    from cryptography import x509  # here: cryptography loads only where peers present certificates

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    uris: list[str] = []
    dns: list[str] = []
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
        dns = sans.get_values_for_type(x509.DNSName)
    # An X.509-SVID has exactly one URI SAN (X.509-SVID §2): the first is the peer's identity.
    return PeerCertificate(
        uri=uris[0] if uris else None,
        hash=hashlib.sha256(der).hexdigest(),
        subject=cert.subject.rfc4514_string(),
        dns=tuple(dns),
    )


def certificate_from_pem(pem: str) -> PeerCertificate | None:
    """:func:`certificate_from_der` of a PEM certificate (what servers hand an app), cached by its text."""
    found = _cache.get(pem)
    if found is None:
        try:
            der = ssl.PEM_cert_to_DER_cert(pem.strip())
        except ValueError:
            return None
        found = certificate_from_der(der)
        with _lock:
            if len(_cache) >= _CACHE_SIZE:
                _cache.pop(next(iter(_cache)))
            _cache[pem] = found
    return found


def resolve_peer(
    stack: InboundStack, address: str | None, tls_certificate: PeerCertificate | None, xfcc: str | None
) -> tuple[Peer, bool]:
    """The peer of a request, and whether the door must strip the ``x-forwarded-client-cert`` it came with.

    The connection's own verified certificate wins. Otherwise an XFCC counts
    only from a trusted proxy address (``inbound.trusted_proxies``, loopback by
    default: the sidecar), using its last element, the one the nearest proxy
    added; from anyone else it is removed, so the app never sees a forged one.
    """
    if tls_certificate is not None:
        return Peer(address, True, tls_certificate), xfcc is not None and not stack.trusts(address)
    key = (address, xfcc)
    peers = stack.peer_cache
    found = peers.get(key)
    if found is None:
        if xfcc is None:
            found = Peer(address), False
        elif not stack.trusts(address):
            found = Peer(address), True
        else:
            certificate = peer_from_xfcc(xfcc)
            found = Peer(address, certificate is not None, certificate), False
        # The cache is the stack's: a reload may change trusted_proxies.
        if len(peers) < _PEER_CACHE_SIZE:
            peers[key] = found
    return found


def request_from_wire(
    method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], peer: Peer, port: int | None
) -> InboundRequest:
    """The engine's view of a request read off the wire (the sidecar's inbound listener).

    ``target`` is the request target exactly as received: build it *before*
    ``httpx.URL``, which removes dot segments on its own (``/api/../admin`` →
    ``/admin``) and would hide what the caller sent. After an allow, forward
    the request with the result's canonical ``path`` (and the query as it was).
    """
    path, _, query = target.partition(b"?")
    if not path.startswith(b"/") and b"://" in path:  # absolute-form (RFC 9112 §3.2.2)
        path = b"/" + path.partition(b"://")[2].partition(b"/")[2]
    merged: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return InboundRequest(
        method.decode("latin-1"),
        path.decode("latin-1"),
        query.decode("latin-1"),
        merged,
        merged.get("host"),
        port,
        peer,
    )


def denial_headers(denial: Denial) -> list[tuple[str, str]]:
    """A denial's head: the sidecar's error format (``x-meshlib-error``, a text body) and the policy's headers."""
    body = denial.body
    return [
        ("content-type", "text/plain; charset=utf-8"),
        ("content-length", str(len(body))),
        (ERROR_HEADER, denial.code),
        *denial.headers,
    ]
