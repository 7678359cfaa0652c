"""Envoy's ``x-forwarded-client-cert`` header: formatting (the sidecar, after mTLS) and parsing (the middleware).

The format (Envoy's HTTP connection manager docs, "x-forwarded-client-cert"):
elements separated by ``,``, one per proxy that handled the request, each a
``;``-separated list of ``Key=value`` pairs (``By``, ``Hash``, ``Cert``,
``Chain``, ``Subject``, ``URI``, ``DNS``); a value holding ``,``, ``;`` or
``=`` is double-quoted, and a ``"`` inside quotes is escaped as ``\\"``.
"""

from __future__ import annotations

import re
import threading
from typing import Final

from meshlib._engine.inbound_context import PeerCertificate

__all__ = ["XFCC_HEADER", "XfccError", "format_xfcc", "parse_xfcc", "peer_from_xfcc"]

XFCC_HEADER: Final = "x-forwarded-client-cert"
_NEEDS_QUOTES: Final = re.compile(r'[,;="\\\s]')  # a separator, a quote, a backslash or any whitespace
_CACHE_SIZE: Final = 1024


class XfccError(ValueError):
    """The header is not in Envoy's format."""


def _quote(value: str) -> str:
    if _NEEDS_QUOTES.search(value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def format_xfcc(certificate: PeerCertificate, *, by: str | None = None) -> str:
    """One XFCC element for a peer the sidecar verified: ``By=...;Hash=...;Subject="...";URI=...;DNS=...``.

    ``by`` is this workload's own SPIFFE ID (the certificate it presented). The
    sidecar *replaces* any XFCC the caller sent with this one (Envoy's
    ``SANITIZE_SET``), so the app only ever sees what its own proxy verified.

    >>> format_xfcc(PeerCertificate(uri="spiffe://example.org/ns/default/sa/frontend", hash="ab12"))
    'Hash=ab12;URI=spiffe://example.org/ns/default/sa/frontend'
    """
    pairs: list[str] = []
    if by is not None:
        pairs.append(f"By={_quote(by)}")
    if certificate.hash is not None:
        pairs.append(f"Hash={_quote(certificate.hash)}")
    if certificate.subject is not None:
        # Envoy always quotes Subject: a DN is full of ',' and '='.
        pairs.append('Subject="' + certificate.subject.replace("\\", "\\\\").replace('"', '\\"') + '"')
    if certificate.uri is not None:
        pairs.append(f"URI={_quote(certificate.uri)}")
    pairs.extend(f"DNS={_quote(name)}" for name in certificate.dns)
    return ";".join(pairs)


def parse_xfcc(header: str) -> list[list[tuple[str, str]]]:
    """Every element of an XFCC header as ``(key, value)`` pairs, keys as written; raises :class:`XfccError`."""
    elements: list[list[tuple[str, str]]] = []
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(header)
    while True:
        while i < n and header[i] in " \t":
            i += 1
        eq = header.find("=", i)
        if eq < 0:
            raise XfccError(f"expected Key=value at offset {i}")
        key = header[i:eq].strip()
        if not key or any(c in key for c in ',;"'):
            raise XfccError(f"invalid key {key!r}")
        i = eq + 1
        if i < n and header[i] == '"':
            chars: list[str] = []
            i += 1
            while True:
                if i >= n:
                    raise XfccError("unterminated quoted value")
                c = header[i]
                if c == "\\" and i + 1 < n:
                    chars.append(header[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    chars.append(c)
                    i += 1
            value = "".join(chars)
        else:
            start = i
            while i < n and header[i] not in ",;":
                if header[i] in '"=':
                    # Envoy quotes every value that holds one of these; a bare one is a forgery or garbage.
                    raise XfccError(f"{header[i]!r} inside an unquoted value")
                i += 1
            value = header[start:i].strip()
        pairs.append((key, value))
        while i < n and header[i] in " \t":
            i += 1
        if i >= n:
            elements.append(pairs)
            return elements
        if header[i] == ",":
            elements.append(pairs)
            pairs = []
        elif header[i] != ";":
            raise XfccError(f"unexpected {header[i]!r} at offset {i}")
        i += 1


_cache: dict[str, PeerCertificate | None] = {}
_cache_lock = threading.Lock()


def peer_from_xfcc(header: str) -> PeerCertificate | None:
    """The certificate in the *last* element (the one the nearest proxy added), or None if malformed.

    Results are cached by header value: a workload sees few distinct callers.
    """
    found = _cache.get(header, _MISSING)
    if found is not _MISSING:
        return found  # type: ignore[return-value]
    try:
        last = parse_xfcc(header)[-1]
    except XfccError:
        certificate = None
    else:
        fields: dict[str, str] = {}
        dns: list[str] = []
        for key, value in last:
            lower = key.lower()
            if lower == "dns":
                dns.append(value)
            else:
                # Envoy writes one URI per URI SAN; a SPIFFE certificate has exactly one, so the first one is kept.
                fields.setdefault(lower, value)
        certificate = PeerCertificate(
            uri=fields.get("uri") or None,
            hash=fields.get("hash") or None,
            subject=fields.get("subject"),
            dns=tuple(dns),
        )
    with _cache_lock:
        if len(_cache) >= _CACHE_SIZE:
            _cache.pop(next(iter(_cache)))
        _cache[header] = certificate
    return certificate


_MISSING: Final = object()
