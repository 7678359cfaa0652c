"""Inbound authentication: the peer (``inbound.mtls``, PeerAuthentication) and the request's JWT (``inbound.jwt``).

JWT, as Istio's RequestAuthentication with Envoy's ``jwt_authn`` messages:
a token present but invalid gets 401 with ``WWW-Authenticate: Bearer ...
error="invalid_token"`` (RFC 6750 §3); a request without a token passes
unauthenticated (authorization decides whether that is enough). Only
asymmetric algorithms fitting the key's type are accepted. A verified token
is cached (by its text, bounded, until ``exp``), so a repeated token costs a
dict lookup.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Final, Protocol
from urllib.parse import parse_qsl

import jwt

from meshlib._config.security import JwtProviderConfig
from meshlib._engine.inbound_context import UNAUTHENTICATED, Denial, InboundContext, JwtPrincipal
from meshlib._policies.jwks import ALGORITHMS, KeySet

__all__ = ["JwtError", "JwtFilter", "JwtProvider", "KeySource", "TokenCache"]

# Tokens verified and remembered; beyond this the oldest are forgotten (verified again if they come back).
CACHE_SIZE: Final = 4096
# A token without exp is re-verified after this long, so a key that was removed stops working.
_NO_EXP_TTL: Final = 300.0


class KeySource(Protocol):
    """Where a provider's keys come from (jwks.py): the current keys, or None before the first fetch."""

    def current(self) -> KeySet | None: ...


class JwtError(Exception):
    """A token that fails verification: ``description`` is the RFC 6750 ``error_description``."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


@dataclass(frozen=True, slots=True, eq=False)
class JwtProvider:
    """One ``inbound.jwt`` entry, compiled: issuer, audiences, keys, and where its tokens are read from."""

    issuer: str
    audiences: tuple[str, ...]
    keys: KeySource
    headers: tuple[tuple[str, str], ...]  # (lower-case name, prefix)
    params: tuple[str, ...]
    forward_original_token: bool
    output_payload_to_header: str | None
    leeway: float

    @classmethod
    def from_config(cls, config: JwtProviderConfig, keys: KeySource) -> JwtProvider:
        return cls(
            issuer=config.issuer,
            audiences=tuple(config.audiences),
            keys=keys,
            headers=tuple((h.name.lower(), h.prefix) for h in config.from_headers),
            params=tuple(config.from_params),
            forward_original_token=config.forward_original_token,
            output_payload_to_header=(
                config.output_payload_to_header.lower() if config.output_payload_to_header else None
            ),
            leeway=config.leeway,
        )


def _b64json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def _describe_audiences(aud: object) -> str:
    # repr, not JSON: the description goes into a quoted-string of WWW-Authenticate, where '"' would end it.
    return repr(aud) if isinstance(aud, str | list) else "none"


class TokenCache:
    """Verified tokens by their text → (principal, provider, key generation); bounded, oldest out first.

    A hit is valid while the wall clock is before ``principal.valid_until`` and
    the provider's keys are still the ones that verified it.
    """

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._entries: dict[str, tuple[JwtPrincipal, JwtProvider, int]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> tuple[JwtPrincipal, JwtProvider, int] | None:
        return self._entries.get(token)

    def put(self, token: str, entry: tuple[JwtPrincipal, JwtProvider, int]) -> None:
        with self._lock:
            entries = self._entries
            while len(entries) >= self.size:
                entries.pop(next(iter(entries)))
            entries[token] = entry

    def discard(self, token: str) -> None:
        self._entries.pop(token, None)

    def __len__(self) -> int:
        return len(self._entries)


class JwtVerifier:
    """Verifies a token against the providers: picks the provider by ``iss``, then checks signature and claims."""

    def __init__(
        self, providers: Sequence[JwtProvider], *, now: Callable[[], float] = time.time, cache: TokenCache | None = None
    ) -> None:
        self.providers = {p.issuer: p for p in providers}
        self.now = now
        self.cache = cache if cache is not None else TokenCache()

    def verify(self, token: str, found_by: Sequence[JwtProvider]) -> tuple[JwtPrincipal, JwtProvider]:
        """The principal of a valid ``token`` found where the providers ``found_by`` look; raises :class:`JwtError`."""
        hit = self.cache.get(token)
        if hit is not None:
            principal, provider, generation = hit
            keys = provider.keys.current()
            if (
                self.now() < principal.valid_until
                and keys is not None
                and keys.generation == generation
                and provider in found_by
            ):
                return principal, provider
            self.cache.discard(token)
        principal, provider, generation = self._verify(token, found_by)
        self.cache.put(token, (principal, provider, generation))
        return principal, provider

    def _verify(self, token: str, found_by: Sequence[JwtProvider]) -> tuple[JwtPrincipal, JwtProvider, int]:
        parts = token.split(".")
        if len(parts) != 3 or not all(parts[:2]):
            raise JwtError("Jwt is not in the form of Header.Payload.Signature")
        try:
            header = _b64json(parts[0])
            payload = _b64json(parts[1])
        except (ValueError, binascii.Error, UnicodeError):
            raise JwtError("Jwt header or payload is not base64url-encoded JSON") from None
        if not isinstance(header, dict) or not isinstance(payload, dict):
            raise JwtError("Jwt header or payload is not a JSON object")
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise JwtError("Jwt header has no alg")
        if alg.lower() == "none":
            raise JwtError("Jwt algorithm 'none' is not allowed: the token is unsigned")
        if alg not in ALGORITHMS:
            # HS256 with the issuer's public key as the HMAC secret is the classic algorithm confusion.
            raise JwtError(f"Jwt algorithm {alg!r} is not allowed: only {', '.join(ALGORITHMS)}")
        issuer = payload.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise JwtError("Jwt has no issuer (iss)")
        provider = self.providers.get(issuer)
        if provider is None:
            raise JwtError(f"Jwt issuer {issuer!r} is not configured")
        if provider not in found_by:
            raise JwtError(f"Jwt issuer {issuer!r} is not configured for the location the token was found in")
        keys = provider.keys.current()
        if keys is None:
            raise JwtError(f"Jwks of issuer {issuer!r} not available yet: no keys fetched")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise JwtError("Jwt header kid is not a string")
        candidates, kid_known = keys.candidates(kid, alg)
        if not kid_known:
            raise JwtError(f"Jwks has no key with kid {kid!r}")
        if not candidates:
            raise JwtError(f"Jwt algorithm {alg!r} does not fit the key" + (f" with kid {kid!r}" if kid else "s"))
        claims: dict[str, Any] | None = None
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key=key.key,
                    algorithms=[alg],
                    issuer=issuer,
                    audience=list(provider.audiences) or None,
                    leeway=provider.leeway,
                    options={"verify_aud": bool(provider.audiences), "require": []},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise JwtError("Jwt is expired") from None
            except jwt.ImmatureSignatureError as exc:
                what = "iat is in the future" if "iat" in str(exc) else "nbf is in the future"
                raise JwtError(f"Jwt is not yet valid: {what}") from None
            except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError):
                allowed = ", ".join(provider.audiences)
                given = _describe_audiences(payload.get("aud"))
                raise JwtError(f"Audiences in Jwt are not allowed: {given} is not one of {allowed}") from None
            except jwt.InvalidIssuedAtError:
                raise JwtError("Jwt iat is not a number") from None
            except jwt.DecodeError as exc:
                raise JwtError(f"Jwt is malformed: {exc}") from None
            except jwt.InvalidTokenError as exc:
                raise JwtError(f"Jwt is invalid: {exc}") from None
        if claims is None:
            raise JwtError("Jwt verification fails: bad signature")
        aud = claims.get("aud")
        audiences = (aud,) if isinstance(aud, str) else tuple(a for a in aud if isinstance(a, str)) if aud else ()
        exp = claims.get("exp")
        now = self.now()
        valid_until = float(exp) + provider.leeway if isinstance(exp, int | float) else now + _NO_EXP_TTL
        subject = claims.get("sub")
        presenter = claims.get("azp")
        principal = JwtPrincipal(
            issuer=issuer,
            subject=subject if isinstance(subject, str) else "",
            claims=MappingProxyType(claims),
            audiences=audiences,
            presenter=presenter if isinstance(presenter, str) else None,
            valid_until=valid_until,
        )
        return principal, provider, keys.generation


def _challenge(realm: str, description: str) -> tuple[tuple[str, str], ...]:
    # RFC 6750 §3: quoted-string values; a quote or backslash in the description would end it early.
    text = description.replace("\\", "").replace('"', "'")
    value = f'Bearer realm="{realm}", error="invalid_token", error_description="{text}"'
    return (("www-authenticate", value),)


class JwtFilter:
    """Finds the request's token, verifies it, and records the principal; 401 for a token that fails.

    More than one token (in different places, or a repeated header) is
    refused: Istio leaves the principal of such a request undefined, and Envoy
    once let a good token in the query vouch for a bad one in the header (envoyproxy/envoy#12089).
    """

    name: ClassVar[str] = "jwt"

    def __init__(self, providers: Sequence[JwtProvider], *, realm: str, now: Callable[[], float] = time.time) -> None:
        self.providers = tuple(providers)
        self.realm = realm
        self.verifier = JwtVerifier(self.providers, now=now)
        # header name → [(prefix, provider)]: where each provider looks, grouped by header.
        by_header: dict[str, list[tuple[str, str, JwtProvider]]] = {}
        for p in self.providers:
            for name, prefix in p.headers:
                by_header.setdefault(name, []).append((prefix, prefix.lower(), p))
        self._headers = tuple((name, tuple(entries)) for name, entries in by_header.items())
        by_param: dict[str, list[JwtProvider]] = {}
        for p in self.providers:
            for param in p.params:
                by_param.setdefault(param, []).append(p)
        self._params = {name: tuple(ps) for name, ps in by_param.items()}
        # Headers the app must only ever get from meshlib: a caller must not forge verified claims.
        self._output_headers = tuple(
            {p.output_payload_to_header for p in self.providers if p.output_payload_to_header is not None}
        )

    def _deny(self, description: str) -> Denial:
        return Denial(401, UNAUTHENTICATED, description, _challenge(self.realm, description))

    def apply(self, ctx: InboundContext) -> Denial | None:
        request = ctx.request
        headers = request.headers
        for name in self._output_headers:
            if name in headers:
                ctx.remove_header(name)
        # The token, the providers whose locations hold it, and the header it came in (None: a query parameter).
        token: str | None = None
        found_by: list[JwtProvider] = []
        header: str | None = None
        for name, entries in self._headers:
            value = headers.get(name)
            if value is None:
                continue
            for prefix, lower_prefix, provider in entries:
                if prefix:
                    if value[: len(prefix)].lower() != lower_prefix:
                        continue  # another scheme (Authorization: Basic ...): not a JWT location
                    candidate = value[len(prefix) :].strip()
                else:
                    candidate = value.strip()
                if "," in candidate or " " in candidate:
                    # A repeated header, joined with ", ": base64url and '.' never hold either.
                    return self._deny("more than one Jwt in the request")
                if token is None:
                    token, header = candidate, name
                elif candidate != token:
                    return self._deny("more than one Jwt in the request")
                found_by.append(provider)
        if self._params and request.query:
            for key, candidate in parse_qsl(request.query, keep_blank_values=True):
                providers = self._params.get(key)
                if providers:
                    if token is None:
                        token = candidate
                    elif candidate != token:
                        return self._deny("more than one Jwt in the request")
                    found_by.extend(providers)
        if token is None:
            return None
        if not token:
            return self._deny("Jwt is not in the form of Header.Payload.Signature")
        try:
            principal, provider = self.verifier.verify(token, found_by)
        except JwtError as exc:
            return self._deny(exc.description)
        ctx.jwt = principal
        if header is not None and not provider.forward_original_token:
            ctx.remove_header(header)
        if provider.output_payload_to_header is not None:
            # Envoy's forward_payload_header: the token's payload segment, base64url as it came.
            ctx.set_header(provider.output_payload_to_header, token.split(".")[1])
        return None
