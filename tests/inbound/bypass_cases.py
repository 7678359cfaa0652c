"""The authorization-bypass table: published Istio/Envoy advisories and their kin, replayed against every inbound door.

Reusable by any door: :data:`POLICY` is the ``inbound:`` section, the app
behind the door is an echo app (:func:`echo_asgi`, :func:`echo_wsgi`: 200
and the path it was handed), and each :class:`Case` says what the caller
sends (method, raw request target, extra headers) and what must come back:
the status, and for 200 the path the app must have seen (so authorization
and the app's routing agree). :func:`raw_request` renders a case as bytes
for a socket, which is how the nasty ones must be sent: HTTP clients
normalise paths themselves.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# Deny /admin and everything under it, DELETE anywhere and the host internal.example.org; allow the rest,
# except under /private/ where only /private/public/* is allowed (an allow-list bypass target).
POLICY: dict[str, Any] = {
    "authorization": [
        {"name": "no-admin", "action": "deny", "rules": [{"to": {"paths": ["/admin", "/admin/*"]}}]},
        {"name": "no-delete", "action": "deny", "rules": [{"to": {"methods": ["DELETE"]}}]},
        {"name": "no-internal", "action": "deny", "rules": [{"to": {"hosts": ["internal.example.org"]}}]},
        {
            "name": "allow-list",
            "action": "allow",
            "rules": [{"to": {"not_paths": ["/private/*"]}}, {"to": {"paths": ["/private/public/*"]}}],
        },
    ]
}
HOST = "reviews.example.org"


@dataclass(frozen=True)
class Case:
    """One request and its expected outcome. ``app_path``: the (decoded) path the app sees when it is 200."""

    id: str
    target: bytes
    status: int
    app_path: str | None = None
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    source: str = ""

    @property
    def path(self) -> bytes:
        return self.target.partition(b"?")[0]

    @property
    def query(self) -> bytes:
        return self.target.partition(b"?")[2]


def _c(id: str, target: str | bytes, status: int, app_path: str | None = None, *, source: str = "", **kw: Any) -> Case:
    raw = target.encode("latin-1") if isinstance(target, str) else target
    return Case(id, raw, status, app_path, source=source, **kw)


CVE_31920 = "CVE-2021-31920 (ISTIO-SECURITY-2021-005): multiple or escaped slashes"
CVE_39156 = "CVE-2021-39156 (ISTIO-SECURITY-2021-008): #fragment in the path"
CVE_39155 = "CVE-2021-39155 (ISTIO-SECURITY-2021-008): Host compared case-sensitively"
DOTS = "RFC 3986 §5.2.4 dot segments (Envoy normalize_path)"
UNRESERVED = "percent-encoded unreserved characters (Istio normalization: %2e, %41-%5a, %61-%7a)"

CASES: list[Case] = [
    # Baselines: the policy works on plain requests.
    _c("plain-allowed", "/api/reviews/1", 200, "/api/reviews/1"),
    _c("plain-denied", "/admin/users", 403),
    _c("exact-denied", "/admin", 403),
    _c("trailing-slash", "/admin/", 403, source="Istio '/admin/*' prefix"),
    _c("query-ignored", "/admin?debug=1", 403, source="Istio normalization: path with query"),
    _c("query-allowed", "/api/x?next=/admin", 200, "/api/x"),
    # Dot segments.
    _c("dotdot", "/api/../admin/users", 403, source=DOTS),
    _c("dotdot-to-exact", "/api/../admin", 403, source=DOTS),
    _c("dot", "/./admin/users", 403, source=DOTS),
    _c("dotdot-above-root", "/../admin", 403, source=DOTS),
    _c("dotdot-out-of-admin", "/admin/../api/x", 200, "/api/x", source=DOTS),
    _c("dotdot-trailing", "/admin/x/..", 403, source=DOTS),
    _c("encoded-dotdot", "/api/%2e%2e/admin/users", 403, source=UNRESERVED),
    _c("encoded-dotdot-upper", "/api/%2E%2E/admin/users", 403, source=UNRESERVED),
    _c("half-encoded-dotdot", "/api/.%2e/admin", 403, source=UNRESERVED),
    _c("encoded-dot", "/%2e/admin", 403, source=UNRESERVED),
    # Merged slashes.
    _c("double-slash", "//admin/users", 403, source=CVE_31920),
    _c("triple-slash", "///admin", 403, source=CVE_31920),
    _c("inner-double-slash", "/admin//users", 403, source=CVE_31920),
    _c("slash-allowed", "/api//x", 200, "/api/x", source=CVE_31920),
    # Escaped slashes and backslashes: refused.
    _c("escaped-slash", "/admin%2fusers", 400, source=CVE_31920),
    _c("escaped-slash-upper", "/admin%2Fusers", 400, source=CVE_31920),
    _c("escaped-slash-dotdot", "/api/..%2fadmin", 400, source=CVE_31920),
    _c("escaped-backslash", "/api%5c..%5cadmin", 400, source=CVE_31920),
    _c("raw-backslash", "/api\\..\\admin", 400, source="Envoy normalize_path converts '\\'; meshlib refuses"),
    # Percent-encoded unreserved characters are decoded.
    _c("encoded-letter", "/%61dmin/users", 403, source=UNRESERVED),
    _c("encoded-whole-word", "/%61%64%6d%69%6e", 403, source=UNRESERVED),
    _c("encoded-upper-letter", "/%41dmin", 200, "/Admin", source="paths are case-sensitive (Istio)"),
    _c("encoded-allowed", "/api/%72eviews", 200, "/api/reviews", source=UNRESERVED),
    _c("encoded-space-kept", "/api/a%20b", 200, "/api/a b"),
    _c("double-encoded", "/%2561dmin", 200, "/%61dmin", source="Istio: decoded once, no double decoding"),
    # Fragments.
    _c("fragment", "/admin#frag", 403, source=CVE_39156),
    _c("fragment-hides-dotdot", "/api/x#/../../admin", 200, "/api/x", source=CVE_39156),
    _c("encoded-hash", "/admin%23x", 200, "/admin#x", source="%23 is data, not a fragment"),
    # Control characters, NUL and invalid encodings.
    _c("nul-escaped", "/admin%00", 400, source="Istio normalization: %00 is always rejected"),
    _c("nul-escaped-inner", "/api/%00/../admin", 400),
    _c("newline-escaped", "/admin%0a", 400, source="Starlette's '$' matches before a trailing newline"),
    _c("tab-escaped", "/admin%09", 400),
    _c("bad-escape", "/admin%zz", 400),
    _c("truncated-escape", "/admin%2", 400),
    _c("overlong-utf8-dot", "/api/%c0%ae%c0%ae/admin", 400, source="overlong UTF-8 '.'"),
    _c("invalid-utf8", "/api/%ff", 400),
    _c("valid-utf8", "/api/caf%C3%A9", 200, "/api/café"),
    # Path parameters (Tomcat reads '..;' as '..').
    _c("dotdot-semicolon", "/api/..;/admin", 400, source="'..;' (Tomcat path parameter on a dot segment)"),
    _c("dot-semicolon", "/.;/admin", 400),
    # Methods: upper-case only (Istio rejects others with 400), so a deny on DELETE can't be dodged.
    _c("delete-denied", "/api/x", 403, method="DELETE"),
    _c("lowercase-method", "/api/x", 400, method="delete", source="Istio normalization: method not in upper case"),
    _c("mixed-case-method", "/api/x", 400, method="Delete"),
    # Hosts: case-insensitive, trailing dot and port ignored.
    _c("host-denied", "/api/x", 403, headers=(("host", "internal.example.org"),)),
    _c("host-case", "/api/x", 403, headers=(("host", "Internal.Example.ORG"),), source=CVE_39155),
    _c("host-trailing-dot", "/api/x", 403, headers=(("host", "internal.example.org."),)),
    _c("host-port", "/api/x", 403, headers=(("host", "internal.example.org:8080"),)),
    # Allow-list: normalisation must not let a request escape into /private/ either.
    _c("allow-list-public", "/private/public/a", 200, "/private/public/a"),
    _c("allow-list-denied", "/private/secret", 403),
    _c("allow-list-dotdot", "/private/public/../secret", 403, source=DOTS),
    _c("allow-list-encoded-dotdot", "/private/public/%2e%2e/secret", 403, source=UNRESERVED),
    _c("allow-list-double-slash", "/private//secret", 403, source=CVE_31920),
    _c("allow-list-escaped-slash", "/private/public%2f..%2fsecret", 400, source=CVE_31920),
]


def raw_request(case: Case, host: str = HOST) -> bytes:
    """The case as an HTTP/1.1 request on the wire (``Connection: close``), its target byte for byte."""
    headers = dict(case.headers)
    lines = [case.method.encode() + b" " + case.target + b" HTTP/1.1", f"Host: {headers.pop('host', host)}".encode()]
    lines += [f"{k}: {v}".encode() for k, v in headers.items()]
    lines += [b"Connection: close", b"", b""]
    return b"\r\n".join(lines)


async def echo_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """200 with ``{"path": scope["path"]}``: what the app was handed."""
    if scope["type"] == "lifespan":
        return
    body = json.dumps({"path": scope["path"]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def echo_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """200 with ``{"path": PATH_INFO}`` decoded as the app reads it (PEP 3333: latin-1 characters of UTF-8 bytes)."""
    path = (environ.get("SCRIPT_NAME", "") + environ["PATH_INFO"]).encode("latin-1").decode("utf-8")
    body = json.dumps({"path": path}).encode()
    start_response("200 OK", [("content-type", "application/json"), ("content-length", str(len(body)))])
    return [body]
