"""The security contract: a cluster's ``tls:`` (outbound TLS and mTLS) and the top-level ``inbound:`` policy.

``inbound:`` is the policy that the sidecar's inbound listener and the
in-process ASGI/WSGI middleware both apply (Istio's PeerAuthentication,
RequestAuthentication and AuthorizationPolicy); ``sidecar.inbound`` stays the
listener. File paths are relative to the working directory, as Envoy's are.
What a file holds (a certificate, a key that matches it, a JWKS) is checked
when the mesh loads it, with the same field paths.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from meshlib._config.base import CheckError, ConfigModel, check
from meshlib._config.durations import PositiveDuration
from meshlib._config.pydantic_names import AfterValidator, BeforeValidator, Field, field_validator

__all__ = [
    "AuthorizationPolicyConfig",
    "ClusterTlsConfig",
    "ConditionConfig",
    "InboundConfig",
    "InboundMtlsConfig",
    "JwtHeaderConfig",
    "JwtProviderConfig",
    "OperationConfig",
    "RuleConfig",
    "SourceConfig",
    "parse_spiffe_id",
]

# spiffe://TRUST-DOMAIN/PATH: a trust domain is lowercase letters, digits, '.', '-' and '_' (SPIFFE ID spec §2.1);
# the path's segments are letters, digits, '.', '-' and '_' and may not be '.' or '..' (§2.2).
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


def parse_spiffe_id(value: str) -> tuple[str, str]:
    """``spiffe://example.org/ns/default/sa/reviews`` → ``("example.org", "/ns/default/sa/reviews")``; ValueError."""
    if not value.startswith("spiffe://"):
        raise ValueError(f"{value!r} is not a SPIFFE ID: it must start with 'spiffe://'")
    rest = value[len("spiffe://") :]
    domain, slash, path = rest.partition("/")
    if not domain or not _TRUST_DOMAIN.match(domain):
        raise ValueError(f"{value!r} has an invalid trust domain: lowercase letters, digits, '.', '-', '_'")
    if not slash or not path:
        raise ValueError(f"{value!r} has no path: spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE")
    for segment in path.split("/"):
        if not segment or segment in (".", "..") or not _PATH_SEGMENT.match(segment):
            raise ValueError(f"{value!r} has an invalid path segment {segment!r}")
    return domain, "/" + path


def _spiffe_id(value: str) -> str:
    parse_spiffe_id(value)
    return value


SpiffeId = Annotated[str, AfterValidator(_spiffe_id)]


def _file(value: str) -> str:
    if not value or "\x00" in value:
        raise ValueError(f"invalid file path {value!r}")
    return value


FilePath = Annotated[str, AfterValidator(_file)]


class ClusterTlsConfig(ConfigModel):
    """How a cluster's connections are secured (Istio's DestinationRule ``trafficPolicy.tls``).

    * ``disable``: plaintext (``http://`` endpoints only).
    * ``simple``: TLS; the upstream's certificate must chain to ``ca_file``
      (the system's trust store when unset) and match ``server_name``.
    * ``mutual``: TLS with this workload's certificate (``cert_file`` and
      ``key_file``) presented to the upstream, which must chain to ``ca_file``;
      with ``expected_identities`` its SPIFFE ID (URI SAN) must be one of them.
    """

    mode: Literal["disable", "simple", "mutual"] = "simple"
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    # SNI and the name the certificate is checked against; the endpoint's host when unset.
    server_name: str | None = None
    expected_identities: list[SpiffeId] = Field(default_factory=list)

    @check("mode")
    def _fits_mode(self) -> Iterator[CheckError]:
        if self.mode == "mutual":
            for key in ("ca_file", "cert_file", "key_file"):
                if getattr(self, key) is None:
                    yield (key,), f"tls mode 'mutual' needs {key}", None
        elif self.mode == "simple":
            if (self.cert_file is None) != (self.key_file is None):
                missing = "key_file" if self.key_file is None else "cert_file"
                yield (missing,), "cert_file and key_file go together (or use mode: mutual)", None
        else:
            for key in ("ca_file", "cert_file", "key_file", "server_name"):
                if getattr(self, key) is not None:
                    yield (key,), f"{key} has no effect with tls mode 'disable'", None
            if self.expected_identities:
                yield ("expected_identities",), "expected_identities has no effect with tls mode 'disable'", None

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in " /:\r\n\x00@")):
            raise ValueError(f"invalid server_name {value!r}: a host name")
        return value


class InboundMtlsConfig(ConfigModel):
    """Who may connect to this workload (Istio's PeerAuthentication ``mtls.mode``).

    * ``strict``: only mTLS, with a client certificate that chains to ``ca_file``.
    * ``permissive``: mTLS or plaintext on the same port; plaintext callers are unauthenticated.
    * ``disable``: plaintext only.
    """

    mode: Literal["strict", "permissive", "disable"] = "permissive"
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None

    @check("mode")
    def _fits_mode(self) -> Iterator[CheckError]:
        if self.mode == "disable":
            return
        for key in ("ca_file", "cert_file", "key_file"):
            if getattr(self, key) is None:
                yield (key,), f"mtls mode {self.mode!r} needs {key}", None


class JwtHeaderConfig(ConfigModel):
    """Where a token is read from: a header, and the prefix before it (``Authorization: Bearer TOKEN``)."""

    name: str = Field(min_length=1)
    prefix: str = ""


def _default_headers() -> list[JwtHeaderConfig]:
    return [JwtHeaderConfig(name="authorization", prefix="Bearer ")]


class JwtProviderConfig(ConfigModel):
    """One issuer of JWTs this workload accepts (Istio's RequestAuthentication ``jwtRules``).

    Exactly one of ``jwks_file``, ``jwks_uri`` (fetched, cached for
    ``jwks_cache_duration``, and refreshed; a fetch that fails keeps the last
    good keys) or ``jwks`` (the JSON text inline) gives the keys.
    """

    issuer: str = Field(min_length=1)
    # Empty: any audience is accepted (a token's aud is still checked against this list when given).
    audiences: list[str] = Field(default_factory=list)
    jwks_file: FilePath | None = None
    jwks_uri: str | None = None
    jwks: str | None = None
    jwks_cache_duration: PositiveDuration = 300.0
    from_headers: list[JwtHeaderConfig] = Field(default_factory=_default_headers, min_length=1)
    from_params: list[str] = Field(default_factory=list)
    # Keep the token for the app; by default it is removed, as Istio's forwardOriginalToken: false.
    forward_original_token: bool = False
    # A header the verified claims are passed to the app in (base64url JSON), as Istio's outputPayloadToHeader.
    output_payload_to_header: str | None = None
    # Clock skew allowed when checking exp, nbf and iat.
    leeway: Annotated[float, Field(ge=0, le=300)] = 60.0

    @check()
    def _one_source(self) -> Iterator[CheckError]:
        given = [k for k in ("jwks_file", "jwks_uri", "jwks") if getattr(self, k) is not None]
        if len(given) != 1:
            got = f" (got {', '.join(given)})" if given else ""
            yield (), f"set exactly one of jwks_file, jwks_uri, jwks{got}", None

    @field_validator("jwks_uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"invalid jwks_uri {value!r}: an http:// or https:// URL")
        return value


def _one_or_many(value: Any) -> Any:
    """``from: {...}`` is shorthand for ``from: [{...}]`` (Istio writes lists)."""
    return [value] if isinstance(value, dict) else value


def _ip_block(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"invalid IP block {value!r}: an address or CIDR, e.g. 10.0.0.0/8") from None
    return value


IpBlock = Annotated[str, AfterValidator(_ip_block)]
# A string matched exactly, by prefix ("abc*"), by suffix ("*abc"), or for presence ("*"), as Istio's.
Pattern = Annotated[str, Field(min_length=1)]


class SourceConfig(ConfigModel):
    """Who sent a request: the peer's identity (mTLS), the request's (JWT), its namespace or address."""

    principals: list[Pattern] = Field(default_factory=list)
    not_principals: list[Pattern] = Field(default_factory=list)
    request_principals: list[Pattern] = Field(default_factory=list)
    not_request_principals: list[Pattern] = Field(default_factory=list)
    namespaces: list[Pattern] = Field(default_factory=list)
    not_namespaces: list[Pattern] = Field(default_factory=list)
    ip_blocks: list[IpBlock] = Field(default_factory=list)
    not_ip_blocks: list[IpBlock] = Field(default_factory=list)


class OperationConfig(ConfigModel):
    """What a request does: its host, port, method and path (paths are matched after normalisation)."""

    hosts: list[Pattern] = Field(default_factory=list)
    not_hosts: list[Pattern] = Field(default_factory=list)
    ports: list[Annotated[int, Field(strict=True, ge=1, le=65535)]] = Field(default_factory=list)
    not_ports: list[Annotated[int, Field(strict=True, ge=1, le=65535)]] = Field(default_factory=list)
    methods: list[Pattern] = Field(default_factory=list)
    not_methods: list[Pattern] = Field(default_factory=list)
    paths: list[Pattern] = Field(default_factory=list)
    not_paths: list[Pattern] = Field(default_factory=list)

    @field_validator("paths", "not_paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith(("/", "*")):
                raise ValueError(f"path {path!r} must start with '/' (or '*' for a suffix match)")
        return value


# The attributes a condition can test, as Istio's: request.headers[NAME] and request.auth.claims[NAME]
# (nested claims as claims[a][b]) take a name; the others are plain.
_CONDITION_KEY = re.compile(
    r"^(?:request\.headers\[[^\]\[]+\]|request\.auth\.claims(?:\[[^\]\[]+\])+"
    r"|request\.auth\.principal|request\.auth\.audiences|request\.auth\.presenter"
    r"|source\.ip|source\.principal|source\.namespace|destination\.port|connection\.sni)$"
)


class ConditionConfig(ConfigModel):
    """``when``: an attribute of the request and the values it must (``values``) or must not (``not_values``) have."""

    key: str
    values: list[Pattern] = Field(default_factory=list)
    not_values: list[Pattern] = Field(default_factory=list)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not _CONDITION_KEY.match(value):
            raise ValueError(
                f"unknown condition key {value!r}: one of request.headers[NAME], request.auth.claims[NAME],"
                " request.auth.principal, request.auth.audiences, request.auth.presenter, source.ip,"
                " source.principal, source.namespace, destination.port, connection.sni"
            )
        return value

    @check()
    def _has_values(self) -> Iterator[CheckError]:
        if not self.values and not self.not_values:
            yield (), "set values, not_values, or both", None


class RuleConfig(ConfigModel):
    """One rule: it matches when some ``from`` source, some ``to`` operation and every ``when`` condition do.

    A part left out matches everything; ``{}`` matches every request.
    """

    from_: Annotated[list[SourceConfig], BeforeValidator(_one_or_many)] = Field(default_factory=list, alias="from")
    to: Annotated[list[OperationConfig], BeforeValidator(_one_or_many)] = Field(default_factory=list)
    when: list[ConditionConfig] = Field(default_factory=list)


class AuthorizationPolicyConfig(ConfigModel):
    """An authorization policy (Istio's AuthorizationPolicy): ``deny`` or ``allow`` the requests its rules match.

    Deny policies are checked first; then, if any allow policy exists, a
    request must match one of them. An allow policy without rules matches
    nothing (so it denies everything), as in Istio.
    """

    name: str | None = Field(default=None, min_length=1)
    action: Literal["allow", "deny"]
    rules: list[RuleConfig] = Field(default_factory=list)


_LOOPBACK = ["127.0.0.0/8", "::1/128"]


class InboundConfig(ConfigModel):
    """The inbound policy: mTLS, JWT authentication and authorization, applied by every inbound door."""

    mtls: InboundMtlsConfig | None = None
    jwt: list[JwtProviderConfig] = Field(default_factory=list)
    authorization: list[AuthorizationPolicyConfig] = Field(default_factory=list)
    # Peers whose x-forwarded-client-cert the in-process middleware believes (a sidecar or proxy in front).
    trusted_proxies: list[IpBlock] = Field(default_factory=lambda: list(_LOOPBACK))

    @check("jwt")
    def _unique_issuers(self) -> Iterator[CheckError]:
        seen: dict[str, int] = {}
        for i, provider in enumerate(self.jwt):
            if not isinstance(provider, JwtProviderConfig):
                continue
            if provider.issuer in seen:
                yield ("jwt", i, "issuer"), f"duplicate issuer (also jwt[{seen[provider.issuer]}])", provider.issuer
            seen.setdefault(provider.issuer, i)

    @check("authorization")
    def _unique_policy_names(self) -> Iterator[CheckError]:
        seen: dict[str, int] = {}
        for i, policy in enumerate(self.authorization):
            if not isinstance(policy, AuthorizationPolicyConfig) or policy.name is None:
                continue
            if policy.name in seen:
                message = f"duplicate policy name {policy.name!r} (also authorization[{seen[policy.name]}])"
                yield ("authorization", i, "name"), message, policy.name
            seen.setdefault(policy.name, i)
