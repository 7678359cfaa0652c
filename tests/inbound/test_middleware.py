"""The in-process doors: identity for the app, XFCC trust, TLS peers, mTLS modes, reloads, pass-through scopes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import meshlib
from meshlib._engine.inbound_context import PeerCertificate
from meshlib._engine.inbound_stack import InboundStack
from meshlib._policies.path_normalize import PathError, normalize_path
from meshlib._policies.xfcc import XfccError, format_xfcc, parse_xfcc, peer_from_xfcc
from meshlib.asgi import MeshMiddleware as AsgiMiddleware
from meshlib.wsgi import MeshMiddleware as WsgiMiddleware
from tests.conftest import MakeMesh
from tests.inbound import tokens
from tests.inbound.doors import call, call_asgi, call_wsgi

FRONTEND = "spiffe://example.org/ns/default/sa/frontend"
XFCC = f'By=spiffe://example.org/ns/default/sa/reviews;Hash=ab12;Subject="CN=frontend,O=Example";URI={FRONTEND}'
DOORS = ["asgi", "wsgi"]


class Seen:
    """Apps for both doors that record the identity, path and headers they were handed."""

    def __init__(self) -> None:
        self.identity: meshlib.Identity | None = None
        self.path: str | None = None
        self.headers: dict[str, str] = {}

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.identity = scope["meshlib.identity"]
        self.path = scope["path"]
        self.raw_path = scope["raw_path"]
        self.headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.identity = environ["meshlib.identity"]
        self.path = environ["PATH_INFO"]
        self.raw_path = environ.get("RAW_URI", "").encode()
        self.headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        start_response("200 OK", [])
        return [b"ok"]

    def app(self, door: str, mesh: meshlib.Mesh) -> Any:
        return AsgiMiddleware(self.asgi, mesh=mesh) if door == "asgi" else WsgiMiddleware(self.wsgi, mesh=mesh)


def config_with(inbound: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"inbound": inbound or {}, "service": "reviews"}


@pytest.fixture(scope="module")
def mtls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA and this workload's certificate, as inbound.mtls needs them (the sidecar's TLS reads them)."""
    from meshlib._tls.ca import init_ca, issue

    out = tmp_path_factory.mktemp("certs")
    init_ca(out, "example.org")
    issue(out, out, "reviews")
    return {
        "ca_file": str(out / "ca.pem"),
        "cert_file": str(out / "reviews.pem"),
        "key_file": str(out / "reviews-key.pem"),
    }


@pytest.mark.parametrize("door", DOORS)
def test_the_app_reads_the_callers_identity(door: str, make_mesh: MakeMesh) -> None:
    seen = Seen()
    jwks = json.dumps(tokens.default_jwks())
    mesh = make_mesh(config_with({"jwt": [{"issuer": tokens.ISSUER, "jwks": jwks}]}))
    token = tokens.token(role="admin", azp="web")
    headers = (("x-forwarded-client-cert", XFCC), ("authorization", f"Bearer {token}"))
    assert call(door, seen.app(door, mesh), "GET", b"/api/x", headers=headers).status == 200
    identity = seen.identity
    assert isinstance(identity, meshlib.Identity)
    assert identity.peer_principal == FRONTEND
    assert identity.peer_namespace == "default"
    assert identity.mtls is True
    assert identity.source_address == "127.0.0.1"
    assert identity.request_principal == f"{tokens.ISSUER}/alice"
    assert identity.claims["role"] == "admin"
    assert identity.audiences == ("reviews",)
    assert identity.presenter == "web"
    assert identity.authenticated
    assert identity.peer.certificate == PeerCertificate(uri=FRONTEND, hash="ab12", subject="CN=frontend,O=Example")
    with pytest.raises(TypeError):
        identity.claims["role"] = "user"  # type: ignore[index]


@pytest.mark.parametrize("door", DOORS)
def test_an_anonymous_caller_has_an_empty_identity(door: str, make_mesh: MakeMesh) -> None:
    seen = Seen()
    mesh = make_mesh(config_with())
    assert call(door, seen.app(door, mesh), "GET", b"/", client="10.1.2.3").status == 200
    identity = seen.identity
    assert identity is not None
    assert (identity.peer_principal, identity.mtls, identity.request_principal) == (None, False, None)
    assert identity.source_address == "10.1.2.3"
    assert not identity.authenticated


@pytest.mark.parametrize("door", DOORS)
def test_xfcc_from_an_untrusted_address_is_ignored_and_removed(door: str, make_mesh: MakeMesh) -> None:
    seen = Seen()
    mesh = make_mesh(config_with())
    headers = (("x-forwarded-client-cert", XFCC),)
    assert call(door, seen.app(door, mesh), "GET", b"/", headers=headers, client="10.1.2.3").status == 200
    assert seen.identity is not None
    assert seen.identity.peer_principal is None
    assert "x-forwarded-client-cert" not in seen.headers


@pytest.mark.parametrize("door", DOORS)
def test_trusted_proxies_are_configurable(door: str, make_mesh: MakeMesh) -> None:
    seen = Seen()
    mesh = make_mesh(config_with({"trusted_proxies": ["10.1.0.0/16"]}))
    app = seen.app(door, mesh)
    headers = (("x-forwarded-client-cert", XFCC),)
    call(door, app, "GET", b"/", headers=headers, client="10.1.2.3")
    assert seen.identity is not None
    assert seen.identity.peer_principal == FRONTEND
    assert seen.headers["x-forwarded-client-cert"] == XFCC  # a trusted proxy's XFCC reaches the app
    call(door, app, "GET", b"/", headers=headers, client="127.0.0.1")  # loopback is no longer trusted
    assert seen.identity.peer_principal is None


@pytest.mark.parametrize("door", DOORS)
def test_the_last_xfcc_element_is_the_nearest_proxys(door: str, make_mesh: MakeMesh) -> None:
    seen = Seen()
    forged = "URI=spiffe://example.org/ns/default/sa/admin"
    mesh = make_mesh(config_with())
    headers = (("x-forwarded-client-cert", f"{forged},{XFCC}"),)
    call(door, seen.app(door, mesh), "GET", b"/", headers=headers)
    assert seen.identity is not None
    assert seen.identity.peer_principal == FRONTEND


@pytest.mark.parametrize("door", DOORS)
def test_a_malformed_xfcc_from_a_trusted_proxy_is_no_identity(door: str, make_mesh: MakeMesh) -> None:
    seen = Seen()
    mesh = make_mesh(config_with())
    call(door, seen.app(door, mesh), "GET", b"/", headers=(("x-forwarded-client-cert", 'URI="unterminated'),))
    assert seen.identity is not None
    assert seen.identity.peer_principal is None


def _certificate(uri: str) -> tuple[str, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "frontend")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri), x509.DNSName("frontend")]), False
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), cert.public_bytes(serialization.Encoding.DER)


def test_the_asgi_tls_extension_gives_the_peer(mtls_files: dict[str, str], make_mesh: MakeMesh) -> None:
    import hashlib

    pem, der = _certificate(FRONTEND)
    seen = Seen()
    mesh = make_mesh(config_with({"mtls": {"mode": "strict", **mtls_files}}))
    app = seen.app("asgi", mesh)
    tls: dict[str, Any] = {"client_cert_chain": [pem], "client_cert_error": None}
    assert call_asgi(app, "GET", b"/", extensions={"tls": tls}, client="10.1.2.3").status == 200
    assert seen.identity is not None
    assert seen.identity.peer_principal == FRONTEND
    assert seen.identity.peer.certificate is not None
    assert seen.identity.peer.certificate.hash == hashlib.sha256(der).hexdigest()
    assert seen.identity.peer.certificate.dns == ("frontend",)
    # A certificate the server could not verify is no identity: strict mTLS refuses the request.
    tls = {"client_cert_chain": [pem], "client_cert_error": "unknown ca"}
    assert call_asgi(app, "GET", b"/", extensions={"tls": tls}, client="10.1.2.3").status == 403


def test_the_wsgi_ssl_client_cert_gives_the_peer(make_mesh: MakeMesh) -> None:
    pem, _ = _certificate(FRONTEND)
    seen = Seen()
    mesh = make_mesh(config_with())
    app = seen.app("wsgi", mesh)
    call_wsgi(app, "GET", b"/", environ={"SSL_CLIENT_CERT": pem}, client="10.1.2.3")
    assert seen.identity is not None
    assert seen.identity.peer_principal == FRONTEND
    call_wsgi(app, "GET", b"/", environ={"SSL_CLIENT_CERT": pem, "SSL_CLIENT_VERIFY": "FAILED:x"})
    assert seen.identity.peer_principal is None


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize(
    ("mode", "plaintext", "with_xfcc"),
    [("strict", 403, 200), ("permissive", 200, 200), ("disable", 200, 200)],
)
def test_mtls_modes(
    door: str, mode: str, plaintext: int, with_xfcc: int, mtls_files: dict[str, str], make_mesh: MakeMesh
) -> None:
    seen = Seen()
    files = mtls_files if mode != "disable" else {}
    mesh = make_mesh(config_with({"mtls": {"mode": mode, **files}}))
    app = seen.app(door, mesh)
    reply = call(door, app, "GET", b"/", client="10.1.2.3")
    assert reply.status == plaintext
    if plaintext == 403:
        assert "mTLS required" in reply.text
    assert call(door, app, "GET", b"/", headers=(("x-forwarded-client-cert", XFCC),)).status == with_xfcc
    assert seen.identity is not None
    # disable: a peer identity is never used, so principals never match.
    assert seen.identity.peer_principal == (None if mode == "disable" else FRONTEND)


@pytest.mark.parametrize("door", DOORS)
def test_the_app_sees_the_normalised_path(door: str, make_mesh: MakeMesh) -> None:
    seen = Seen()
    mesh = make_mesh(config_with())
    assert call(door, seen.app(door, mesh), "GET", b"/api/./v1//%72eviews/../x").status == 200
    assert seen.path == "/api/v1/x"
    assert seen.raw_path.startswith(b"/api/v1/x")


def test_a_wsgi_app_mounted_under_script_name_keeps_it(make_mesh: MakeMesh) -> None:
    seen = Seen()
    mesh = make_mesh(config_with())
    app = seen.app("wsgi", mesh)
    env = {"SCRIPT_NAME": "/shop", "PATH_INFO": "/a//b", "RAW_URI": "/shop/a//b"}
    assert call_wsgi(app, "GET", b"/shop/a//b", environ=env).status == 200
    assert seen.path == "/a/b"
    env = {"SCRIPT_NAME": "/shop", "PATH_INFO": "/../admin", "RAW_URI": "/shop/../admin"}
    reply = call_wsgi(app, "GET", b"/shop/../admin", environ=env)
    assert reply.status == 400
    assert "SCRIPT_NAME" in reply.text


def test_without_raw_uri_the_wsgi_door_re_encodes_path_info(make_mesh: MakeMesh) -> None:
    seen = Seen()
    mesh = make_mesh({"inbound": {"authorization": [{"action": "deny", "rules": [{"to": {"paths": ["/admin/*"]}}]}]}})
    app = seen.app("wsgi", mesh)
    # A server that decoded %2F already (Werkzeug without RAW_URI would): PATH_INFO is /admin/x.
    env = {"PATH_INFO": "/admin/x"}
    env_no_raw = {"RAW_URI": None}
    reply = call_wsgi(app, "GET", b"/admin%2Fx", environ={**env, **env_no_raw})
    assert reply.status == 403


@pytest.mark.anyio
async def test_through_httpx_transports_and_a_reload(make_mesh: MakeMesh) -> None:
    """httpx's ASGITransport and WSGITransport; a reload changes the policy for the next request."""
    seen = Seen()
    deny_admin = {"authorization": [{"action": "deny", "rules": [{"to": {"paths": ["/admin/*"]}}]}]}
    mesh = make_mesh(config_with(deny_admin))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=seen.app("asgi", mesh)), base_url="http://r") as c:
        assert (await c.get("/admin/x")).status_code == 403
        assert (await c.get("/api/x")).status_code == 200
        mesh.reload({"inbound": {"authorization": [{"action": "deny", "rules": [{"to": {"paths": ["/api/*"]}}]}]}})
        assert (await c.get("/admin/x")).status_code == 200
        assert (await c.get("/api/x")).status_code == 403
    with httpx.Client(transport=httpx.WSGITransport(app=seen.app("wsgi", mesh)), base_url="http://r") as sync:
        response = sync.get("/api/x")  # noqa: ASYNC212 - an in-memory WSGI call, nothing blocks
        assert response.status_code == 403
        assert response.headers["x-meshlib-error"] == "forbidden"
        assert response.text == "forbidden: RBAC: access denied (deny policy authorization[0])\n"


def test_lifespan_and_other_scopes_pass_through(make_mesh: MakeMesh) -> None:
    got: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append(scope["type"])
        assert "meshlib.identity" not in scope

    mesh = make_mesh(config_with())
    asyncio.run(AsgiMiddleware(app, mesh=mesh)({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert got == ["lifespan"]


def _websocket(mesh: meshlib.Mesh, path: bytes, extensions: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    scope = {
        "type": "websocket",
        "path": path.decode(),
        "raw_path": path,
        "query_string": b"",
        "headers": [(b"host", b"reviews")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 9080),
        "extensions": extensions,
    }
    asyncio.run(AsgiMiddleware(app, mesh=mesh)(scope, receive, send))
    return sent


def test_a_denied_websocket_is_closed_or_answered(make_mesh: MakeMesh) -> None:
    deny_admin = {"authorization": [{"action": "deny", "rules": [{"to": {"paths": ["/admin/*"]}}]}]}
    mesh = make_mesh(config_with(deny_admin))
    assert _websocket(mesh, b"/ws", {}) == [{"type": "websocket.accept"}]
    assert _websocket(mesh, b"/admin/ws", {})[0] == {"type": "websocket.close", "code": 1008, "reason": "forbidden"}
    answered = _websocket(mesh, b"/admin/ws", {"websocket.http.response": {}})
    assert answered[0]["type"] == "websocket.http.response.start"
    assert answered[0]["status"] == 403


def test_the_inbound_stack_order(mtls_files: dict[str, str], make_mesh: MakeMesh) -> None:
    config = {
        "mtls": {"mode": "permissive", **mtls_files},
        "jwt": [{"issuer": tokens.ISSUER, "jwks": json.dumps(tokens.default_jwks())}],
        "authorization": [{"action": "allow", "rules": [{}]}],
    }
    mesh = make_mesh(config_with(config))
    stack = mesh.snapshot.inbound
    assert isinstance(stack, InboundStack)
    assert stack.names == ["normalize", "peer_authn", "jwt", "authz"]
    with meshlib.Mesh() as mesh:
        assert mesh.snapshot.inbound.names == ["normalize"]


def test_a_config_with_only_an_inbound_section_is_not_empty() -> None:
    assert meshlib.MeshConfig.from_dict({"inbound": {}}).inbound is not None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a/b", ("/a/b", "/a/b")),
        ("/a/./b/../c", ("/a/c", "/a/c")),
        ("/a/b/..", ("/a/", "/a/")),
        ("/..", ("/", "/")),
        ("//a///b//", ("/a/b/", "/a/b/")),
        ("/%7Euser/%7e", ("/~user/~", "/~user/~")),
        ("/a%3fb", ("/a%3Fb", "/a?b")),
        ("/%25", ("/%25", "/%")),
        ("/a;b/c", ("/a;b/c", "/a;b/c")),
        ("/caf\u00c3\u00a9", ("/caf%C3%A9", "/café")),  # raw UTF-8 bytes, as latin-1 characters
        ("/a#b/../c", ("/a", "/a")),
        ("*", ("*", "*")),
    ],
)
def test_normalize_path(raw: str, expected: tuple[str, str]) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize("raw", ["a/b", "", "/a b", "/a\x01", "/a\x7f", "/a%2F", "/a%5c", "/a\\b", "/%", "/%0", "/%g0"])
def test_normalize_path_refuses(raw: str) -> None:
    with pytest.raises(PathError):
        normalize_path(raw)


def test_normalize_path_is_idempotent_and_leaves_no_dot_segments() -> None:
    from hypothesis import given, strategies as st

    segment = st.sampled_from([".", "..", "", "a", "%2e", "%2E%2e", "b%41", "c;d", "%20", "~"])

    @given(st.lists(segment, max_size=8), st.booleans())
    def run(segments: list[str], trailing: bool) -> None:
        raw = "/" + "/".join(segments) + ("/" if trailing else "")
        try:
            canonical, _ = normalize_path(raw)
        except PathError:
            return
        assert normalize_path(canonical) == (canonical, normalize_path(canonical)[1])
        assert "//" not in canonical
        assert not any(s in (".", "..") for s in canonical.split("/"))

    run()


def test_xfcc_format_and_parse_round_trip() -> None:
    cert = PeerCertificate(uri=FRONTEND, hash="ab12", subject='CN=a "quoted", O=x;y', dns=("a.example", "b.example"))
    header = format_xfcc(cert, by="spiffe://example.org/ns/default/sa/reviews")
    assert header.startswith("By=spiffe://example.org/ns/default/sa/reviews;Hash=ab12;Subject=")
    assert peer_from_xfcc(header) == cert
    elements = parse_xfcc(f"{header},URI=spiffe://x/y")
    assert len(elements) == 2
    assert elements[1] == [("URI", "spiffe://x/y")]


@pytest.mark.parametrize("header", ["", "URI", 'URI="x', "URI=a;=b", 'URI=a"b', "URI=a b=c"])
def test_malformed_xfcc(header: str) -> None:
    with pytest.raises(XfccError):
        parse_xfcc(header)
    assert peer_from_xfcc(header) is None
