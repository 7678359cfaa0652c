"""Keys, JWKS documents and tokens for the inbound tests and the benchmark, made once per process."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ISSUER = "https://issuer.example.org"
AUDIENCE = "reviews"


@functools.cache
def rsa_key(name: str = "rsa-1") -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(name: str = "ec-1") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def ed_key(name: str = "ed-1") -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_jwk(key: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    """The public JWK of a private key, with its kid (and alg when given)."""
    algorithm = jwt.get_algorithm_by_name(alg or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm = jwt.get_algorithm_by_name("EdDSA")
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    return jwk


def jwks(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(entries)}


def default_jwks() -> dict[str, Any]:
    """rsa-1 (RS256), ec-1 (ES256) and ed-1 (EdDSA)."""
    return jwks(public_jwk(rsa_key(), "rsa-1", "RS256"), public_jwk(ec_key(), "ec-1"), public_jwk(ed_key(), "ed-1"))


def public_pem(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def token(
    *,
    key: Any = None,
    alg: str = "RS256",
    kid: str | None = "rsa-1",
    iss: str | None = ISSUER,
    sub: str = "alice",
    aud: str | list[str] | None = AUDIENCE,
    lifetime: float | None = 600,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A signed JWT (RS256 with rsa-1 by default) valid for ``lifetime`` seconds from now."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "iat": now, **claims}
    if iss is not None:
        payload["iss"] = iss
    if aud is not None:
        payload["aud"] = aud
    if lifetime is not None and "exp" not in claims:
        payload["exp"] = now + int(lifetime)
    extra = dict(headers or {})
    if kid is not None:
        extra["kid"] = kid
    return jwt.encode(payload, key if key is not None else rsa_key(), algorithm=alg, headers=extra)
