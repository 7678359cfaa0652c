"""Inbound: a request path as received → the one canonical path that authorization matches and the app sees.

Envoy's ``normalize_path`` + ``merge_slashes`` with Istio's hardened options
(docs/security.md, "Path normalisation"), so that ``/api/../admin``,
``//admin`` and ``/%61dmin`` cannot slip past a deny on ``/admin/*``:

* percent-encoded unreserved characters are decoded (``%61`` → ``a``, ``%2e`` → ``.``),
  every other escape is kept with upper-case hex, once (no double decoding);
* dot segments are removed (RFC 3986 §5.2.4) and repeated slashes merged;
* refused with 400: ``%2F``/``%5C`` (CVE-2021-31920), a raw backslash, ``%00`` and other
  control characters raw or escaped (Istio rejects ``%00``; Starlette's ``$`` matches before a
  trailing ``\\n``), malformed or non-UTF-8 escapes (overlong ``%C0%AE``), a segment ``..;x`` or
  ``.;x`` (Tomcat treats it as a dot segment), a path that does not start with ``/``;
* a ``#fragment`` is dropped, as Envoy does since CVE-2021-39156 (ISTIO-SECURITY-2021-008).
"""

from __future__ import annotations

import re
from typing import ClassVar, Final
from urllib.parse import unquote

from meshlib._engine.inbound_context import BAD_REQUEST, Denial, InboundContext
from meshlib._policies.authz import normal_host

__all__ = ["NormalizeFilter", "PathError", "normalize_path"]

# RFC 3986 §2.3: escapes of these are equivalent to the characters themselves (§6.2.2.2).
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# The paths that need no work: pchar and '/' only (RFC 3986 §3.3) without '%', ';' or '\'. Checked with
# "//" and "/." below, it lets an ordinary path through with one regex match.
_PLAIN: Final = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,=:@/]*")
_HEX: Final = frozenset("0123456789abcdefABCDEF")


class PathError(ValueError):
    """The path is refused (400): why, in a few words."""


def normalize_path(raw: str) -> tuple[str, str]:
    """``raw`` (the path as received, no query, ASCII or latin-1 for raw bytes) → ``(canonical, decoded)``.

    ``canonical`` is percent-encoded (what authorization matches and ``raw_path`` becomes);
    ``decoded`` is its UTF-8 decoding (ASGI ``path``). Raises :class:`PathError`.

    >>> normalize_path("/api/../%61dmin//x")
    ('/admin/x', '/admin/x')
    """
    if _PLAIN.fullmatch(raw) and "//" not in raw and "/." not in raw:
        return raw, raw
    return _normalize(raw)


def _normalize(raw: str) -> tuple[str, str]:
    # Envoy strips the fragment (a client never sends one: RFC 9112 §3.2 has no '#' in a request target).
    raw = raw.partition("#")[0]
    if raw == "*":  # OPTIONS * (RFC 9112 §3.2.4)
        return raw, raw
    if not raw.startswith("/"):
        raise PathError("the path must start with '/'")
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == "%":
            hex2 = raw[i + 1 : i + 3]
            if len(hex2) != 2 or hex2[0] not in _HEX or hex2[1] not in _HEX:
                raise PathError("invalid percent-encoding in the path")
            byte = int(hex2, 16)
            ch = chr(byte)
            if ch in _UNRESERVED:
                out.append(ch)
            elif ch in "/\\":
                # CVE-2021-31920: an app that decodes %2F routes a path authorization never saw.
                raise PathError("escaped slash or backslash (%2F, %5C) in the path")
            elif byte < 0x20 or byte == 0x7F:
                raise PathError("escaped control character in the path")
            else:
                out.append("%" + hex2.upper())
            i += 3
            continue
        code = ord(c)
        if c == "\\":
            raise PathError("backslash in the path")
        if code <= 0x20 or code == 0x7F:
            raise PathError("control character or space in the path")
        if code > 0x7F:
            # A raw byte above ASCII (latin-1 decoded): kept as its escape, checked as UTF-8 below.
            out.append(f"%{code:02X}")
        else:
            out.append(c)
        i += 1
    encoded = "".join(out)
    segments = encoded.split("/")
    result: list[str] = []
    trailing = False
    for segment in segments[1:]:
        trailing = False
        if segment == "":
            trailing = True  # merge_slashes: an empty segment only keeps a trailing slash
            continue
        if segment == ".":
            trailing = True
            continue
        if segment == "..":
            if result:
                result.pop()
            trailing = True
            continue
        if ";" in segment and segment.partition(";")[0] in (".", ".."):
            # Tomcat and Jetty read "..;x" as "..": authorization would match a path the app never serves.
            raise PathError("dot segment with a path parameter ('..;') in the path")
        result.append(segment)
    canonical = "/" + "/".join(result) + ("/" if trailing and result else "")
    try:
        decoded = unquote(canonical, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        # Overlong or broken UTF-8 (%C0%AE is an overlong '.'): no two readers agree on it.
        raise PathError("percent-encoded bytes in the path are not UTF-8") from None
    return canonical, decoded


# RFC 9110 §9.1: a method is a token; Istio refuses one that is not upper case with 400, so that a
# deny on DELETE cannot be dodged with "delete" (an app such as Werkzeug upper-cases it).
_METHODS: Final = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
_METHOD: Final = re.compile(r"[A-Z0-9!#$%&'*+.^_`|~-]+")


# Host header → its normal form; a workload is called by few names.
_HOST_CACHE_SIZE: Final = 1024
_hosts: dict[str, str] = {}


class NormalizeFilter:
    """The inbound stack's first filter: checks the method and normalises the path and host; 400 for what it refuses."""

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
