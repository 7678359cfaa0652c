"""JWT authentication: every bad token gets 401 with its own error; good ones are verified once and cached."""

from __future__ import annotations

import base64
import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
import time_machine

import meshlib
from meshlib._policies import authn
from tests.conftest import MakeMesh
from tests.inbound import tokens
from tests.inbound.doors import Reply, call, echo_doors

DOORS = ["asgi", "wsgi"]


def provider(**overrides: Any) -> dict[str, Any]:
    return {
        "issuer": tokens.ISSUER,
        "audiences": [tokens.AUDIENCE],
        "jwks": json.dumps(tokens.default_jwks()),
        **overrides,
    }


def config_with(inbound: dict[str, Any]) -> dict[str, Any]:
    return {"service": "reviews", "inbound": inbound}


def make(inbound: dict[str, Any]) -> meshlib.Mesh:
    """A mesh for the module-scoped fixture below (a test builds its own with ``make_mesh(config_with(...))``)."""
    return meshlib.Mesh.from_dict(config_with(inbound))


@pytest.fixture(scope="module")
def mesh() -> Iterator[meshlib.Mesh]:
    with make({"jwt": [provider()]}) as mesh:
        yield mesh


def get(door: str, mesh: meshlib.Mesh, token: str | None = None, **kwargs: Any) -> Reply:
    headers = kwargs.pop("headers", ())
    if token is not None:
        headers = (("authorization", f"Bearer {token}"), *headers)
    return call(door, echo_doors(mesh)[door], "GET", b"/api/x", headers=headers, **kwargs)


def _unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    def enc(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return ".".join([enc(json.dumps(header).encode()), enc(json.dumps(payload).encode()), enc(signature)])


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": tokens.ISSUER, "sub": "alice", "aud": tokens.AUDIENCE, "iat": now, "exp": now + 600, **extra}


def _hs256_with_public_key() -> str:
    # Algorithm confusion: HMAC keyed with the issuer's RSA public key (PEM), which any caller can get.
    # pyjwt refuses to make one (it rejects PEM keys as HMAC secrets), so it is built by hand.
    import hashlib
    import hmac

    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    unsigned = _unsigned(header, _claims()).rsplit(".", 1)[0]
    mac = hmac.new(tokens.public_pem(tokens.rsa_key()), unsigned.encode(), hashlib.sha256).digest()
    return unsigned + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _bad_signature() -> str:
    good = tokens.token()
    head, payload, _ = good.split(".")
    other = tokens.token(key=tokens.rsa_key("rsa-other"))
    return f"{head}.{payload}.{other.split('.')[2]}"


BAD_TOKENS = [
    pytest.param(_bad_signature, "Jwt verification fails: bad signature", id="bad-signature"),
    pytest.param(
        lambda: tokens.token(key=tokens.rsa_key("rsa-other")), "Jwt verification fails: bad signature", id="other-key"
    ),
    pytest.param(lambda: tokens.token(lifetime=-120), "Jwt is expired", id="expired"),
    pytest.param(lambda: tokens.token(nbf=int(time.time()) + 600), "Jwt is not yet valid: nbf", id="not-yet-valid"),
    pytest.param(lambda: tokens.token(iat=int(time.time()) + 600), "Jwt is not yet valid: iat", id="issued-in-future"),
    pytest.param(
        lambda: tokens.token(iss="https://evil.example.org"),
        "Jwt issuer 'https://evil.example.org' is not configured",
        id="wrong-issuer",
    ),
    pytest.param(lambda: tokens.token(iss=None), "Jwt has no issuer (iss)", id="no-issuer"),
    pytest.param(
        lambda: tokens.token(aud="ratings"),
        "Audiences in Jwt are not allowed: 'ratings' is not one of reviews",
        id="wrong-audience",
    ),
    pytest.param(
        lambda: tokens.token(aud=None), "Audiences in Jwt are not allowed: none is not one of reviews", id="no-audience"
    ),
    pytest.param(
        lambda: _unsigned({"alg": "none", "typ": "JWT"}, _claims()),
        "Jwt algorithm 'none' is not allowed",
        id="alg-none",
    ),
    pytest.param(
        lambda: _unsigned({"alg": "None"}, _claims()), "Jwt algorithm 'none' is not allowed", id="alg-none-case"
    ),
    pytest.param(_hs256_with_public_key, "Jwt algorithm 'HS256' is not allowed", id="hs256-with-rsa-public-key"),
    pytest.param(
        lambda: tokens.token(alg="ES256", key=tokens.ec_key(), kid="rsa-1"),
        "Jwt algorithm 'ES256' does not fit the key with kid 'rsa-1'",
        id="alg-key-type-mismatch",
    ),
    pytest.param(
        lambda: tokens.token(alg="RS512"),
        "Jwt algorithm 'RS512' does not fit the key with kid 'rsa-1'",
        id="alg-vs-jwk",
    ),
    pytest.param(lambda: tokens.token(kid="nope"), "Jwks has no key with kid 'nope'", id="unknown-kid"),
    pytest.param(lambda: "not-a-jwt", "Jwt is not in the form of Header.Payload.Signature", id="malformed-no-dots"),
    pytest.param(lambda: "a.b", "Jwt is not in the form of Header.Payload.Signature", id="malformed-two-parts"),
    pytest.param(lambda: "!!!.@@@.###", "Jwt header or payload is not base64url-encoded JSON", id="malformed-base64"),
    pytest.param(
        lambda: _unsigned(["alg"], {}),  # type: ignore[arg-type]
        "Jwt header or payload is not a JSON object",
        id="malformed-not-object",
    ),
    pytest.param(lambda: _unsigned({"typ": "JWT"}, _claims()), "Jwt header has no alg", id="no-alg"),
    pytest.param(
        lambda: _unsigned({"alg": "RS256", "kid": 7}, _claims()),
        "Jwt header kid is not a string",
        id="kid-not-a-string",
    ),
    pytest.param(lambda: tokens.token() + "x", "Jwt is malformed", id="signature-tampered"),
]


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize(("make_token", "error"), BAD_TOKENS)
def test_a_bad_token_gets_401_with_its_error(mesh: meshlib.Mesh, door: str, make_token: Any, error: str) -> None:
    reply = get(door, mesh, make_token())
    assert reply.status == 401
    assert reply.headers["x-meshlib-error"] == "unauthenticated"
    assert error in reply.text
    challenge = reply.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="reviews", error="invalid_token", error_description="')
    assert error in challenge


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize(
    ("key", "alg", "kid"),
    [
        (tokens.rsa_key, "RS256", "rsa-1"),
        (tokens.ec_key, "ES256", "ec-1"),
        (tokens.ed_key, "EdDSA", "ed-1"),
        (tokens.rsa_key, "RS256", None),
    ],
)
def test_a_good_token_reaches_the_app_with_its_principal(
    mesh: meshlib.Mesh, door: str, key: Any, alg: str, kid: Any
) -> None:
    identities: list[meshlib.Identity] = []
    reply = _identity_call(door, mesh, tokens.token(key=key(), alg=alg, kid=kid, azp="frontend"), identities)
    assert reply.status == 200
    (identity,) = identities
    assert identity.request_principal == f"{tokens.ISSUER}/alice"
    assert identity.audiences == ("reviews",)
    assert identity.presenter == "frontend"
    assert identity.claims["sub"] == "alice"


def _identity_call(door: str, mesh: meshlib.Mesh, token: str | None, seen: list[Any], **kwargs: Any) -> Reply:
    from meshlib.asgi import MeshMiddleware as Asgi
    from meshlib.wsgi import MeshMiddleware as Wsgi

    async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["meshlib.identity"])
        seen.append(dict((k.decode(), v.decode()) for k, v in scope["headers"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["meshlib.identity"])
        seen.append({k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")})
        start_response("200 OK", [])
        return [b"{}"]

    app = Asgi(asgi_app, mesh=mesh) if door == "asgi" else Wsgi(wsgi_app, mesh=mesh)
    headers = kwargs.pop("headers", ())
    if token is not None:
        headers = (("authorization", f"Bearer {token}"), *headers)
    reply = call(door, app, "GET", kwargs.pop("path", b"/api/x"), headers=headers, **kwargs)
    if seen:
        seen.pop()  # the headers, read by the tests that want them through _headers_seen
    return reply


def _headers_seen(door: str, mesh: meshlib.Mesh, token: str | None, **kwargs: Any) -> dict[str, str]:
    from meshlib.asgi import MeshMiddleware as Asgi
    from meshlib.wsgi import MeshMiddleware as Wsgi

    seen: dict[str, str] = {}

    async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update((k.decode(), v.decode()) for k, v in scope["headers"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update({k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")})
        start_response("200 OK", [])
        return [b""]

    app = Asgi(asgi_app, mesh=mesh) if door == "asgi" else Wsgi(wsgi_app, mesh=mesh)
    headers = kwargs.pop("headers", ())
    if token is not None:
        headers = (("authorization", f"Bearer {token}"), *headers)
    reply = call(door, app, "GET", b"/api/x", headers=headers, **kwargs)
    assert reply.status == 200, reply.body
    return seen


@pytest.mark.parametrize("door", DOORS)
def test_a_missing_token_passes_unauthenticated(mesh: meshlib.Mesh, door: str) -> None:
    seen: list[Any] = []
    assert _identity_call(door, mesh, None, seen).status == 200
    assert seen[0].request_principal is None
    assert seen[0].claims == {}


@pytest.mark.parametrize("door", DOORS)
def test_a_missing_token_is_refused_when_a_policy_requires_a_request_principal(door: str, make_mesh: MakeMesh) -> None:
    policy = {"action": "allow", "rules": [{"from": {"request_principals": ["*"]}}]}
    mesh = make_mesh(config_with({"jwt": [provider()], "authorization": [policy]}))
    reply = get(door, mesh)
    assert reply.status == 403
    assert "RBAC: access denied" in reply.text
    assert get(door, mesh, tokens.token()).status == 200


@pytest.mark.parametrize("door", DOORS)
def test_other_authorization_schemes_are_not_tokens(mesh: meshlib.Mesh, door: str) -> None:
    assert get(door, mesh, headers=(("authorization", "Basic dXNlcjpwYXNz"),)).status == 200


@pytest.mark.parametrize("door", DOORS)
def test_the_bearer_prefix_is_case_insensitive(mesh: meshlib.Mesh, door: str) -> None:
    reply = get(door, mesh, headers=(("authorization", f"bearer {tokens.token(lifetime=-120)}"),))
    assert reply.status == 401


@pytest.mark.parametrize("door", DOORS)
def test_an_empty_bearer_token_is_malformed(mesh: meshlib.Mesh, door: str) -> None:
    reply = get(door, mesh, headers=(("authorization", "Bearer "),))
    assert reply.status == 401
    assert "Header.Payload.Signature" in reply.text


@pytest.mark.parametrize("door", DOORS)
def test_two_tokens_are_refused(door: str, make_mesh: MakeMesh) -> None:
    mesh = make_mesh(config_with({"jwt": [provider(from_params=["access_token"])]}))
    good, other = tokens.token(), tokens.token(sub="bob")
    reply = get(door, mesh, good, query=f"access_token={other}".encode())
    assert reply.status == 401
    assert "more than one Jwt in the request" in reply.text
    # The same token in both places is one token.
    assert get(door, mesh, good, query=f"access_token={good}".encode()).status == 200
    assert get(door, mesh, query=f"access_token={good}".encode()).status == 200


def test_a_repeated_authorization_header_is_refused(mesh: meshlib.Mesh) -> None:
    from tests.inbound.doors import call_asgi

    app = echo_doors(mesh)["asgi"]
    headers = (("authorization", f"Bearer {tokens.token()}"), ("authorization", f"Bearer {tokens.token(sub='b')}"))
    reply = call_asgi(app, "GET", b"/api/x", headers=headers)
    assert reply.status == 401
    assert "more than one Jwt" in reply.text


def test_a_token_is_verified_once_and_cached_until_it_expires(
    monkeypatch: pytest.MonkeyPatch, make_mesh: MakeMesh
) -> None:
    decodes: list[str] = []
    real = pyjwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        decodes.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(pyjwt, "decode", counting)
    start = time.time()
    mesh = make_mesh(config_with({"jwt": [provider(leeway=0)]}))
    with time_machine.travel(start, tick=False) as traveller:
        token = tokens.token(lifetime=60)
        for _ in range(5):
            assert get("asgi", mesh, token).status == 200
        assert len(decodes) == 1
        traveller.shift(61)  # past exp: the cache no longer vouches for it, and verification says it expired
        reply = get("asgi", mesh, token)
        assert reply.status == 401
        assert "Jwt is expired" in reply.text
        assert len(decodes) == 2


def test_the_token_cache_is_bounded() -> None:
    cache = authn.TokenCache(size=3)
    principal: Any = object()
    for i in range(5):
        cache.put(f"t{i}", (principal, principal, 1))
    assert len(cache) == 3
    assert cache.get("t0") is None
    assert cache.get("t4") is not None


@pytest.mark.parametrize("door", DOORS)
def test_the_token_header_is_removed_unless_forwarded(door: str, make_mesh: MakeMesh) -> None:
    token = tokens.token()
    mesh = make_mesh(config_with({"jwt": [provider()]}))
    assert "authorization" not in _headers_seen(door, mesh, token)
    mesh = make_mesh(config_with({"jwt": [provider(forward_original_token=True)]}))
    assert _headers_seen(door, mesh, token)["authorization"] == f"Bearer {token}"


@pytest.mark.parametrize("door", DOORS)
def test_output_payload_to_header_passes_the_claims_and_cannot_be_forged(door: str, make_mesh: MakeMesh) -> None:
    token = tokens.token(role="admin")
    mesh = make_mesh(config_with({"jwt": [provider(output_payload_to_header="x-jwt-payload")]}))
    seen = _headers_seen(door, mesh, token)
    payload = seen["x-jwt-payload"]
    assert json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["role"] == "admin"
    forged = _headers_seen(door, mesh, None, headers=(("x-jwt-payload", "eyJyb2xlIjoiYWRtaW4ifQ"),))
    assert "x-jwt-payload" not in forged


@pytest.mark.parametrize("door", DOORS)
def test_tokens_are_read_from_configured_headers_and_params(door: str, make_mesh: MakeMesh) -> None:
    config = provider(from_headers=[{"name": "x-jwt-assertion"}], from_params=["token"])
    mesh = make_mesh(config_with({"jwt": [config]}))
    bad = tokens.token(lifetime=-120)
    assert get(door, mesh, headers=(("x-jwt-assertion", bad),)).status == 401
    assert get(door, mesh, query=f"token={bad}".encode()).status == 401
    # The default Authorization header is not one of this provider's locations.
    assert get(door, mesh, bad).status == 200


def test_a_provider_only_accepts_its_tokens_where_it_looks(make_mesh: MakeMesh) -> None:
    other = "https://other.example.org"
    providers = [provider(), provider(issuer=other, from_headers=[{"name": "x-other"}])]
    mesh = make_mesh(config_with({"jwt": providers}))
    reply = get("asgi", mesh, tokens.token(iss=other))
    assert reply.status == 401
    assert "not configured for the location" in reply.text
    assert get("asgi", mesh, headers=(("x-other", tokens.token(iss=other)),)).status == 200


def _write_jwks(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document))
    os.replace(tmp, path)


def test_a_jwks_file_is_re_read_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_mesh: MakeMesh
) -> None:
    from meshlib._policies import jwks

    monkeypatch.setattr(jwks, "_FILE_CHECK_INTERVAL", 0.0)
    path = tmp_path / "jwks.json"
    _write_jwks(path, tokens.jwks(tokens.public_jwk(tokens.rsa_key(), "rsa-1")))
    token = tokens.token()
    new_key = tokens.rsa_key("rsa-2")
    new_token = tokens.token(key=new_key, kid="rsa-2")
    mesh = make_mesh(config_with({"jwt": [provider(jwks=None, jwks_file=str(path))]}))
    assert get("asgi", mesh, token).status == 200
    assert get("asgi", mesh, new_token).status == 401
    _write_jwks(path, tokens.jwks(tokens.public_jwk(new_key, "rsa-2"), {"kty": "RSA", "junk": 1}))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert get("asgi", mesh, new_token).status == 200
    # The cached token of the removed key is verified again, and fails.
    reply = get("asgi", mesh, token)
    assert reply.status == 401
    assert "Jwks has no key with kid 'rsa-1'" in reply.text
    # A broken file keeps the last good keys.
    path.write_text("{not json")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert get("asgi", mesh, new_token).status == 200


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        ({"jwks": None, "jwks_file": "/nonexistent/jwks.json"}, "inbound.jwt[0].jwks_file", "cannot read the JWKS"),
        ({"jwks": "{nope"}, "inbound.jwt[0].jwks", "invalid JWKS: not a JSON document"),
        ({"jwks": '{"keys": []}'}, "inbound.jwt[0].jwks", "no usable signing key"),
        ({"jwks": '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'}, "inbound.jwt[0].jwks", "no usable signing key"),
        ({"jwks": '{"keys": [{"kty": "RSA", "n": "x"}]}'}, "inbound.jwt[0].jwks", "keys[0]"),
        ({"jwks": "[1, 2]"}, "inbound.jwt[0].jwks", 'expected {"keys": [...]}'),
    ],
)
def test_bad_jwks_material_is_a_config_error_at_its_field(config: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(meshlib.ConfigError) as raised:
        make({"jwt": [provider(**config)]})
    assert any(p == path and message in m for p, m in raised.value.errors), raised.value.errors


class _JwksServer:
    """A real HTTP server on loopback serving a JWKS document, stoppable mid-test."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/jwks.json"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_a_jwks_url_is_fetched_refreshed_and_survives_going_down(make_mesh: MakeMesh) -> None:
    from meshlib._policies.jwks import RemoteJwks

    server = _JwksServer(tokens.jwks(tokens.public_jwk(tokens.rsa_key(), "rsa-1")))
    try:
        mesh = make_mesh(config_with({"jwt": [provider(jwks=None, jwks_uri=server.url, jwks_cache_duration="1h")]}))
        remote = next(f for f in mesh.snapshot.inbound.filters if f.name == "jwt").providers[0].keys  # type: ignore[attr-defined]
        assert isinstance(remote, RemoteJwks)
        assert remote.wait_ready(5)
        assert get("asgi", mesh, tokens.token()).status == 200
        # A new key appears at the URL; a refresh picks it up.
        server.document = tokens.jwks(
            tokens.public_jwk(tokens.rsa_key(), "rsa-1"), tokens.public_jwk(tokens.rsa_key("rsa-2"), "rsa-2")
        )
        assert remote.refresh()
        assert get("asgi", mesh, tokens.token(key=tokens.rsa_key("rsa-2"), kid="rsa-2")).status == 200
        # The URL goes down: the refresh fails and the last good keys keep serving.
        server.stop()
        assert not remote.refresh()
        assert remote.failures >= 1
        assert get("asgi", mesh, tokens.token(sub="new-user")).status == 200
    finally:
        server.server.server_close()


def test_before_the_first_fetch_a_token_gets_401_no_keys(make_mesh: MakeMesh) -> None:
    # Nothing listens on the URL: the provider never gets keys.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mesh = make_mesh(config_with({"jwt": [provider(jwks=None, jwks_uri=f"http://127.0.0.1:{port}/jwks")]}))
    reply = get("asgi", mesh, tokens.token())
    assert reply.status == 401
    assert f"Jwks of issuer '{tokens.ISSUER}' not available yet" in reply.text
    # Requests without a token are not held up by the missing keys.
    assert get("asgi", mesh).status == 200


def test_a_jwks_url_fetcher_survives_a_reload_that_keeps_it() -> None:
    server = _JwksServer(tokens.default_jwks())
    try:
        config = {"service": "reviews", "inbound": {"jwt": [provider(jwks=None, jwks_uri=server.url)]}}
        with meshlib.Mesh.from_dict(config) as mesh:
            first = mesh.snapshot.inbound.filters[-1].providers[0].keys  # type: ignore[attr-defined]
            assert first.wait_ready(5)
            mesh.reload({**config, "clusters": {"ratings": {"endpoints": ["http://127.0.0.1:9090"]}}})
            assert mesh.snapshot.inbound.filters[-1].providers[0].keys is first  # type: ignore[attr-defined]
        assert first._stop.is_set()  # closed with the mesh
    finally:
        server.stop()
