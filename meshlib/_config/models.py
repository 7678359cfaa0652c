"""The config contract: pydantic v2 models of what users write in mesh.yaml.

Every model forbids unknown keys and is frozen. Field-level checks live on the
fields, rules that read several fields are ``@check`` methods, and
cross-references (clusters named by routes, duplicate route names) are checked
once on :class:`MeshConfig`; all of them are reported at the exact field path,
together, so one run reports every error (see ``base.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, ClassVar, Literal

import httpx

from meshlib._config.base import (
    CheckError,
    ConfigModel,
    Loc,
    Percent,
    Weight,
    check,
    check_path,
    field_of,
    raw_check_errors,
)
from meshlib._config.discovery import ConfigSourceConfig, DiscoveryConfig, EtcdConfig, RegistryConfig
from meshlib._config.durations import PositiveDuration
from meshlib._config.hosts import authority_host, check_authority, is_ip
from meshlib._config.observability import AccessLogConfig, MetricsConfig, TracingConfig
from meshlib._config.pydantic_names import (
    AfterValidator,
    BeforeValidator,
    CoreSchema,
    Field,
    GetJsonSchemaHandler,
    JsonSchemaValue,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from meshlib._config.redact import Secret
from meshlib._config.resilience import (
    CircuitBreakerConfig,
    FaultConfig,
    HealthCheckConfig,
    HedgeConfig,
    MirrorConfig,
    OutlierDetectionConfig,
    RateLimitConfig,
    RetryConfig,
    needs_codes,
)
from meshlib._config.security import ClusterTlsConfig, InboundConfig
from meshlib._config.sidecar import SidecarConfig
from meshlib._config.xds import XdsConfig
from meshlib._errors import ConfigError

__all__ = [
    "EMPTY_CONFIG",
    "ClusterConfig",
    "DirectResponseConfig",
    "EndpointConfig",
    "HashOnConfig",
    "HeaderOpsConfig",
    "MeshConfig",
    "RewriteConfig",
    "RouteConfig",
    "RouteHeadersConfig",
    "RouteMatchConfig",
    "SplitConfig",
    "StringMatchConfig",
    "route_clusters",
]

# RFC 9110 §5.6.2 token: header names and methods.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# A cluster name is also a host name clients use (http://ratings/), so it must be one.
_CLUSTER_NAME = r"^[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*$"
_CLUSTER_NAME_RE = re.compile(_CLUSTER_NAME)
# A host name, '*.suffix', '*', or an IPv4 address; IPv6 addresses are checked by ipaddress.
_HOST = re.compile(r"^(?:\*|(?:\*\.)?[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?)$")
# What httpx leaves in URL.host for a name or an IPv4 address (anything else comes back percent-encoded).
_URL_HOST = re.compile(r"^[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?$")


def _check_cluster_name(name: str) -> str:
    if len(name) > 253 or not _CLUSTER_NAME_RE.match(name):
        raise ValueError(
            f"invalid cluster name {name!r}: clients use it as a host name, so use letters, digits, '-' and '_',"
            " with '.' between parts, at most 253 characters"
        )
    return name


ClusterName = Annotated[
    str,
    AfterValidator(_check_cluster_name),
    WithJsonSchema({"type": "string", "pattern": _CLUSTER_NAME, "maxLength": 253}),
]


def _check_header_name(name: str) -> str:
    if not _TOKEN.match(name):
        raise ValueError(f"invalid header name {name!r}")
    return name.lower()


def _check_header_value(value: str) -> str:
    if any(ch in value for ch in "\r\n\x00"):
        raise ValueError(f"header value {value!r} contains CR, LF or NUL")
    return value


def _check_method(method: str) -> str:
    if not _TOKEN.match(method):
        raise ValueError(f"invalid method {method!r}")
    return method.upper()


# As dict keys and list items, these report errors at the offending key or item, not at the whole field.
HeaderName = Annotated[str, AfterValidator(_check_header_name)]
HeaderValue = Annotated[str, AfterValidator(_check_header_value)]
Method = Annotated[str, AfterValidator(_check_method)]
# ``method: GET`` is shorthand for ``method: [GET]``.
_METHOD_SCHEMA = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}, {"type": "null"}],
    "default": None,
}


def _unique_header_names(value: Any) -> Any:
    """Refuse a mapping that names one header twice in different case (they would silently merge)."""
    if isinstance(value, dict):
        seen: dict[str, object] = {}
        for key in value:
            if isinstance(key, str) and key.lower() in seen:
                raise ValueError(f"header {key!r} is also written as {seen[key.lower()]!r}: header names ignore case")
            seen[key.lower() if isinstance(key, str) else key] = key
    return value


# Header edits: the values of sensitive headers (authorization, cookie, x-api-key...) are credentials.
HeaderMap = Annotated[dict[HeaderName, HeaderValue], BeforeValidator(_unique_header_names), Secret.HEADER_VALUES]


def _type_name(value: object) -> str:
    """The YAML/JSON word for a value's type, for error messages."""
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _compile_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
    return pattern


class EndpointConfig(ConfigModel):
    """One upstream address: ``"http://127.0.0.1:9081"`` or ``{url: ..., weight: 3}``."""

    url: Annotated[str, Secret.URL]
    weight: Weight = 1

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        # The schema must accept the string shorthand that _from_string accepts.
        return {"anyOf": [{"type": "string", "description": "the endpoint's URL, with weight 1"}, handler(schema)]}

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"url": data}
        if not isinstance(data, dict | EndpointConfig):
            raise ValueError(f"expected a URL string or {{url: URL, weight: N}}, got {_type_name(data)}")
        return data

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"invalid URL {value!r}: {exc}") from None
        if url.scheme not in ("http", "https"):
            raise ValueError(f"URL {value!r} must start with http:// or https://")
        if not url.host:
            raise ValueError(f"URL {value!r} has no host")
        host = url.raw_host.decode("ascii")  # IDNA-encoded, so international names pass as xn--...
        if not _URL_HOST.match(host) and not is_ip(host, 6):
            raise ValueError(f"URL {value!r} has an invalid host")
        if url.port is not None and not 1 <= url.port <= 65535:
            raise ValueError(f"URL {value!r} has an invalid port: use 1 to 65535")
        if url.raw_path not in (b"", b"/") or url.fragment or url.userinfo:
            raise ValueError(f"URL {value!r} must be scheme://host[:port] only: no path, query, fragment or user")
        return str(url.copy_with(raw_path=b"/")).rstrip("/")


class HashOnConfig(ConfigModel):
    """What ``ring_hash`` hashes: exactly one of a request header or a cookie."""

    header: HeaderName | None = None
    cookie: str | None = None

    @check()
    def _exactly_one(self) -> Iterator[CheckError]:
        if (self.header is None) == (self.cookie is None):
            yield (), "set exactly one of 'header' or 'cookie'", None


LbName = Literal["round_robin", "random", "least_request", "ring_hash"]


class ClusterConfig(ConfigModel):
    """A named group of endpoints, how to balance load across them, and its resilience defaults."""

    # Static endpoints, or none with discovery (from DNS or the registry).
    endpoints: list[EndpointConfig] = Field(default_factory=list)
    discovery: DiscoveryConfig | None = None
    lb: LbName = "round_robin"
    hash_on: HashOnConfig | None = None
    connect_timeout: PositiveDuration | None = None
    timeout: PositiveDuration | None = None
    retry: RetryConfig | None = None
    circuit_breaker: CircuitBreakerConfig | None = None
    outlier_detection: OutlierDetectionConfig | None = None
    health_check: HealthCheckConfig | None = None
    rate_limit: RateLimitConfig | None = None
    hedge: HedgeConfig | None = None
    tls: ClusterTlsConfig | None = None

    misplaced_keys: ClassVar[Mapping[str, str]] = {
        key: f"{key} is set per route, not per cluster: put it under a route in routes" for key in ("fault", "mirror")
    }

    @check()
    def _endpoints_or_discovery(self) -> Iterator[CheckError]:
        if self.discovery is None and not self.endpoints:
            given = "endpoints" in self.model_fields_set
            yield ("endpoints",), "must not be empty" if given else "set endpoints (a list of URLs) or discovery", None
        elif self.discovery is not None and self.endpoints:
            yield ("discovery",), "set endpoints or discovery, not both", None

    @check("endpoints", "tls", "discovery")
    def _tls_fits_endpoints(self) -> Iterator[CheckError]:
        if self.tls is None or self.tls.mode != "disable":
            return
        dns = self.discovery.dns if self.discovery is not None else None
        if dns is not None and dns.scheme == "https":
            yield ("discovery", "dns", "scheme"), "scheme 'https' needs TLS: tls mode is 'disable'", dns.scheme
        for i, endpoint in enumerate(self.endpoints):
            if isinstance(endpoint, EndpointConfig) and endpoint.url.startswith("https://"):
                yield ("endpoints", i), "an https:// endpoint needs TLS: tls mode is 'disable'", endpoint.url

    @check("lb")
    def _hash_on_fits_lb(self) -> Iterator[CheckError]:
        if self.lb == "ring_hash" and self.hash_on is None:
            yield ("hash_on",), "lb 'ring_hash' needs hash_on: {header: NAME} or {cookie: NAME}", None
        if self.lb != "ring_hash" and self.hash_on is not None:
            yield ("hash_on",), f"hash_on applies only to lb 'ring_hash', not {self.lb!r}", None

    @check("endpoints")
    def _unique_endpoints(self) -> Iterator[CheckError]:
        seen: dict[str, int] = {}
        for i, endpoint in enumerate(self.endpoints):
            if not isinstance(endpoint, EndpointConfig):  # an invalid one, in a config that failed elsewhere
                continue
            if endpoint.url in seen:
                message = f"duplicate endpoint {endpoint.url!r} (also endpoints[{seen[endpoint.url]}])"
                yield ("endpoints", i), message, endpoint.url
            seen.setdefault(endpoint.url, i)


class StringMatchConfig(ConfigModel):
    """How to match a header or query value: exactly one of exact, prefix, regex, present, absent.

    A plain string is shorthand for ``{exact: STRING}``. Regexes must match the whole value.
    """

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: Literal[True] | None = None
    absent: Literal[True] | None = None

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        # The schema must accept the string shorthand that _from_string accepts.
        return {"anyOf": [{"type": "string", "description": "shorthand for {exact: STRING}"}, handler(schema)]}

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"exact": data}
        if not isinstance(data, dict | StringMatchConfig):
            raise ValueError(
                f"expected a string or one of {{exact|prefix|regex: STRING}}, {{present: true}}, {{absent: true}},"
                f" got {_type_name(data)}"
            )
        return data

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return None if value is None else _compile_regex(value)

    @check()
    def _exactly_one(self) -> Iterator[CheckError]:
        chosen = [k for k in ("exact", "prefix", "regex", "present", "absent") if getattr(self, k) is not None]
        if len(chosen) != 1:
            got = f" (got {', '.join(chosen)})" if chosen else ""
            yield (), f"set exactly one of exact, prefix, regex, present: true, absent: true{got}", None


class RouteMatchConfig(ConfigModel):
    """Conditions a request must meet, all of them, for its route to apply."""

    host: str | None = None
    # The exact authority, host[:port] as the URL has it (default ports dropped): what xDS listeners are named by.
    authority: str | None = None
    path: str | None = None
    path_prefix: str | None = None
    path_regex: str | None = None
    method: Annotated[list[Method] | None, WithJsonSchema(_METHOD_SCHEMA)] = None
    headers: Annotated[
        dict[HeaderName, StringMatchConfig], BeforeValidator(_unique_header_names), Secret.HEADER_MATCHES
    ] = Field(default_factory=dict)
    # Any query parameter may carry a credential (?token=, ?sig=, ?key=): every matched value is one.
    query: Annotated[dict[str, StringMatchConfig], Secret.MATCHES] = Field(default_factory=dict)
    # The share of requests the route applies to, drawn per request (Envoy's runtime_fraction).
    percent: Percent | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host = value.lower()
        if not _HOST.match(host) and not is_ip(host, 6):
            raise ValueError(f"invalid host {value!r}: a host name, '*.suffix' or '*' (no scheme, port or path)")
        return host

    @field_validator("authority")
    @classmethod
    def _authority(cls, value: str | None) -> str | None:
        return None if value is None else check_authority(value)

    @field_validator("path", "path_prefix")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        return None if value is None else check_path(value)

    @field_validator("path_regex")
    @classmethod
    def _path_regex(cls, value: str | None) -> str | None:
        return None if value is None else _compile_regex(value)

    @field_validator("method", mode="before")
    @classmethod
    def _method_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("method")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("list at least one method, or leave method out to match any")
        return value

    @check()
    def _one_path(self) -> Iterator[CheckError]:
        given = [k for k in ("path", "path_prefix", "path_regex") if getattr(self, k) is not None]
        if len(given) > 1:
            yield (), f"set at most one of path, path_prefix, path_regex (got {', '.join(given)})", None

    @check("host", "authority")
    def _host_fits_authority(self) -> Iterator[CheckError]:
        if self.authority is None:
            return
        host = authority_host(self.authority)
        if self.host is not None and self.host != host:
            yield ("host",), f"must be the host of authority {self.authority!r} ({host!r}), or left out", self.host


class SplitConfig(ConfigModel):
    """One leg of a weighted split. Weights are relative: 95 and 5 send 95% and 5%."""

    cluster: str
    weight: Weight


class RewriteConfig(ConfigModel):
    """Changes made to the request before it goes upstream."""

    path_prefix: str | None = None
    host: str | None = None

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        return None if value is None else check_path(value)

    @field_validator("host")
    @classmethod
    def _rewrite_host(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in " /\r\n\x00@")):
            raise ValueError(f"invalid host {value!r}")
        return value

    @check()
    def _not_empty(self) -> Iterator[CheckError]:
        if self.path_prefix is None and self.host is None:
            yield (), "set path_prefix, host, or both", None


class HeaderOpsConfig(ConfigModel):
    """Header edits, applied in the order remove, set (replace), add (append)."""

    set: HeaderMap = Field(default_factory=dict)
    add: HeaderMap = Field(default_factory=dict)
    remove: list[HeaderName] = Field(default_factory=list)


class RouteHeadersConfig(ConfigModel):
    """Header edits on the way upstream (``request``) and back (``response``)."""

    request: HeaderOpsConfig = Field(default_factory=HeaderOpsConfig)
    response: HeaderOpsConfig = Field(default_factory=HeaderOpsConfig)


class DirectResponseConfig(ConfigModel):
    """Answer locally, without any upstream."""

    status: Annotated[int, Field(strict=True, ge=200, le=599)]
    body: str = ""
    headers: HeaderMap = Field(default_factory=dict)


class RouteConfig(ConfigModel):
    """A route: when ``match`` holds, send to ``cluster``, a ``split``, or answer with ``direct_response``."""

    name: str | None = Field(default=None, min_length=1)
    match: RouteMatchConfig = Field(default_factory=RouteMatchConfig)
    cluster: str | None = None
    split: list[SplitConfig] | None = Field(default=None, min_length=1)
    direct_response: DirectResponseConfig | None = None
    rewrite: RewriteConfig | None = None
    headers: RouteHeadersConfig | None = None
    # Route-level overrides of the cluster's defaults, and route-only policies.
    timeout: PositiveDuration | None = None
    retry: RetryConfig | None = None
    rate_limit: RateLimitConfig | None = None
    hedge: HedgeConfig | None = None
    fault: FaultConfig | None = None
    mirror: MirrorConfig | None = None

    misplaced_keys: ClassVar[Mapping[str, str]] = {
        key: f"{key} is set per cluster, not per route: put it under clusters.NAME"
        for key in ("circuit_breaker", "outlier_detection", "health_check", "connect_timeout")
    }

    @check()
    def _one_action(self) -> Iterator[CheckError]:
        given = [k for k in ("cluster", "split", "direct_response") if getattr(self, k) is not None]
        if len(given) != 1:
            got = f" (got {', '.join(given)})" if given else ""
            yield (), f"set exactly one of cluster, split, direct_response{got}", None
        if self.direct_response is not None:
            for key in ("retry", "timeout", "hedge", "mirror", "rewrite"):
                if getattr(self, key) is not None:
                    yield (key,), f"{key} has no effect on a direct_response route", None

    @check("rewrite", "match")
    def _rewrite_fits_match(self) -> Iterator[CheckError]:
        if self.rewrite and self.rewrite.path_prefix is not None and self.match.path_regex:
            message = "needs match.path_prefix or match.path to replace, not match.path_regex"
            yield ("rewrite", "path_prefix"), message, self.rewrite.path_prefix


EMPTY_CONFIG = (
    "the config has no clusters and no routes, so it routes nothing:"
    " add some, or set allow_empty: true if an empty mesh is what you want"
)


class MeshConfig(ConfigModel):
    """A whole mesh config: this workload's name, its clusters and its routes.

    Build one from a file or a dict (:meth:`from_file`, :meth:`from_dict`) or
    directly with keyword arguments; a bad config raises
    :class:`meshlib.ConfigError` naming each bad field path, every one it can
    find in one go::

        config = MeshConfig.from_dict({
            "clusters": {"ratings": {"endpoints": ["http://127.0.0.1:9090"]}},
        })

    A config with no clusters, no routes and no ``inbound`` is refused unless it sets
    ``allow_empty: true``. Settings that load but can never take effect are
    listed by :meth:`warnings`.
    """

    service: str = Field(default="default", min_length=1)
    outbound_policy: Literal["allow_any", "registry_only"] = "allow_any"
    # additionalProperties: the schema's patternProperties alone would let any other name through.
    clusters: dict[ClusterName, ClusterConfig] = Field(
        default_factory=dict, json_schema_extra={"additionalProperties": False}
    )
    routes: list[RouteConfig] = Field(default_factory=list)
    sidecar: SidecarConfig = Field(default_factory=SidecarConfig)
    # What every inbound door (the sidecar's inbound listener, the ASGI/WSGI middleware) applies.
    inbound: InboundConfig | None = None
    # What the mesh reports (docs/observability.md): each is off when absent.
    tracing: TracingConfig | None = None
    metrics: MetricsConfig | None = None
    access_log: AccessLogConfig | None = None
    # Past one machine (docs/discovery.md): the etcd registry and this workload's registration, and the config's
    # own source; both always come from the local file.
    registry: RegistryConfig | None = None
    config_source: ConfigSourceConfig | None = None
    # Routes, clusters and endpoints from an xDS control plane (docs/xds.md), beside this file's.
    xds: XdsConfig | None = None
    # An empty config is far more often a truncated file or a bad template than a wish to route nothing.
    allow_empty: Annotated[bool, Field(strict=True)] = False

    def __init__(self, **data: Any) -> None:
        from meshlib._config.load import config_error_from, format_loc

        try:
            super().__init__(**data)
        except ValidationError as exc:
            error = config_error_from(exc)
            # pydantic skips the checks of every model with a bad field: run them, and the references,
            # on the raw input too, so that one run reports every error.
            failed = [tuple(err["loc"]) for err in exc.errors(include_url=False)]
            more = raw_check_errors(MeshConfig, data, failed)
            more += _reference_errors(data.get("clusters", {}), data.get("routes", []))
            for loc, message, _ in more:
                if (format_loc(loc), message) not in error.errors:
                    error.errors.append((format_loc(loc), message))
            raise ConfigError(error.errors) from None

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> MeshConfig:
        """Validate a parsed config (a dict); raises :class:`meshlib.ConfigError`."""
        from meshlib._config.load import config_from_dict

        return config_from_dict(data, source=source)

    @classmethod
    def from_file(cls, path: str | Any) -> MeshConfig:
        """Read and validate a YAML or JSON file; raises :class:`meshlib.ConfigError`."""
        from meshlib._config.load import load_file

        return load_file(path)

    def warnings(self) -> list[tuple[str, str]]:
        """``(field_path, message)`` for each setting that loads but can never take effect (never fatal)."""
        from meshlib._config.warnings import config_warnings

        return config_warnings(self)

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        # A ConfigError (not a ValueError) passes through pydantic as is, so model_validate([...]) raises it too.
        if not isinstance(data, dict | MeshConfig):
            raise ConfigError([("", f"the config must be a mapping, got {_type_name(data)}")])
        return data

    @check("clusters", "routes", "allow_empty")
    def _not_empty(self) -> Iterator[CheckError]:
        # An inbound policy alone is a mesh that does something: an app's middleware needs no clusters.
        # So is a config from etcd (config_source), or a workload that only registers itself.
        registers = self.registry is not None and getattr(self.registry, "register_", True) is not None
        elsewhere = self.config_source is not None or registers or self.xds is not None
        if not self.clusters and not self.routes and self.inbound is None and not elsewhere and not self.allow_empty:
            yield (), EMPTY_CONFIG, None

    @check("clusters", "registry", "config_source")
    def _etcd_is_configured(self) -> Iterator[CheckError]:
        if self.registry is not None and (not isinstance(self.registry, RegistryConfig) or self.registry.etcd):
            etcd = getattr(self.registry, "etcd", None)
            source = self.config_source if isinstance(self.config_source, ConfigSourceConfig) else None
            key = source.etcd.key if source is not None else None
            if (
                isinstance(key, str)
                and key.startswith("/")
                and isinstance(etcd, EtcdConfig)
                and not key.startswith(etcd.prefix)
            ):
                yield ("config_source", "etcd", "key"), f"must be under registry.etcd.prefix {etcd.prefix!r}", key
            return  # configured, or invalid (its own error says why)
        why = "needs registry.etcd (where etcd runs)"
        if self.config_source is not None:
            yield ("config_source", "etcd"), f"a config source in etcd {why}", None
        for name, cluster in self.clusters.items():
            discovery = cluster.discovery if isinstance(cluster, ClusterConfig) else None
            if isinstance(discovery, DiscoveryConfig) and discovery.etcd is not None:
                yield ("clusters", name, "discovery", "etcd"), f"discovery from etcd {why}", None

    @check("clusters", "routes")
    def _cross_references(self) -> Iterator[CheckError]:
        yield from _reference_errors(self.clusters, self.routes)


def route_clusters(route: object) -> list[str]:
    """The clusters a route (a RouteConfig, or its raw mapping) sends to: its ``cluster`` or each split leg's."""
    cluster = field_of(route, "cluster")
    if isinstance(cluster, str):
        return [cluster]
    split = field_of(route, "split")
    legs = split if isinstance(split, list | tuple) else ()
    return [c for c in (field_of(leg, "cluster") for leg in legs) if isinstance(c, str)]


def _names(clusters: list[str]) -> str:
    quoted = [repr(c) for c in clusters]
    return f"cluster {quoted[0]}" if len(quoted) == 1 else f"clusters {', '.join(quoted[:-1])} and {quoted[-1]}"


def _retry_code_errors(clusters: dict[Any, Any], routes: list[Any] | tuple[Any, ...]) -> list[CheckError]:
    """Retries whose retry_on lists retriable-status-codes with no code to retry.

    A route's retry may take the codes of its clusters' retries; a cluster's has nowhere to take them from.
    """
    errors: list[CheckError] = []
    codes = "retriable_status_codes"
    for name, cluster in clusters.items():
        if needs_codes(field_of(cluster, "retry")):
            message = "retry_on lists retriable-status-codes: name at least one code"
            errors.append((("clusters", name, "retry", codes), message, None))
    for i, route in enumerate(routes):
        if not needs_codes(field_of(route, "retry")):
            continue
        targets = route_clusters(route)
        if not targets or any(t not in clusters for t in targets):
            continue  # no cluster, or one that is itself an error: nothing certain to say
        if not any(field_of(field_of(clusters[t], "retry"), codes) for t in targets):
            message = (
                f"retry_on lists retriable-status-codes, but neither this retry nor the retry of {_names(targets)}"
                " names a code"
            )
            errors.append((("routes", i, "retry", codes), message, None))
    return errors


def _reference_errors(clusters: object, routes: object) -> list[CheckError]:
    """Route names that repeat, cluster names no cluster has, and retries with no codes to retry.

    Works on validated models and, best effort, on raw input that failed validation elsewhere.
    """
    if not isinstance(clusters, dict) or not isinstance(routes, list | tuple):
        return []
    errors: list[CheckError] = []
    names: dict[str, int] = {}
    for i, route in enumerate(routes):
        name = field_of(route, "name")
        if isinstance(name, str):
            if name in names:
                message = f"duplicate route name {name!r} (also routes[{names[name]}])"
                errors.append((("routes", i, "name"), message, name))
            names.setdefault(name, i)
        cluster = field_of(route, "cluster")
        if isinstance(cluster, str) and cluster not in clusters:
            errors.append((("routes", i, "cluster"), f"unknown cluster {cluster!r}", cluster))
        # A mirror onto an undefined cluster is only a warning (warnings.py): it mirrors nothing.
        split = field_of(route, "split")
        if not isinstance(split, list | tuple):
            continue
        legs: dict[str, int] = {}
        for j, leg in enumerate(split):
            leg_cluster = field_of(leg, "cluster")
            if not isinstance(leg_cluster, str):
                continue
            loc: Loc = ("routes", i, "split", j, "cluster")
            if leg_cluster not in clusters:
                errors.append((loc, f"unknown cluster {leg_cluster!r}", leg_cluster))
            if leg_cluster in legs:
                message = f"cluster {leg_cluster!r} appears twice in this split (also split[{legs[leg_cluster]}])"
                errors.append((loc, message, leg_cluster))
            legs.setdefault(leg_cluster, j)
    return errors + _retry_code_errors(clusters, routes)
