"""The config contract: pydantic v2 models of what users write in mesh.yaml.

Every model forbids unknown keys and is frozen. Field-level checks live on the
fields; cross-references (clusters named by routes, duplicate route names) are
checked once on :class:`MeshConfig`, reported at the exact field path.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
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
]

# RFC 9110 §5.6.2 token: header names and methods.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# A cluster name is also a host name clients use (http://ratings/), so it must be one.
_CLUSTER_NAME = r"^[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*$"
_HOST = re.compile(r"^(?:\*|(?:\*\.)?[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?|[0-9a-f:]*:[0-9a-f:.]*)$")

PositiveInt = Annotated[int, Field(strict=True, ge=1)]
ClusterName = Annotated[str, StringConstraints(pattern=_CLUSTER_NAME, max_length=253)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_header_name(name: str) -> str:
    if not _TOKEN.match(name):
        raise ValueError(f"invalid header name {name!r}")
    return name.lower()


def _check_header_value(value: str) -> str:
    if any(ch in value for ch in "\r\n\x00"):
        raise ValueError(f"header value {value!r} contains CR, LF or NUL")
    return value


def _compile_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
    return pattern


def _check_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} must start with '/'")
    return path


class EndpointConfig(_Model):
    """One upstream address: ``"http://127.0.0.1:9081"`` or ``{url: ..., weight: 3}``."""

    url: str
    weight: PositiveInt = 1

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"url": data} if isinstance(data, str) else data

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
        if url.raw_path not in (b"", b"/") or url.fragment or url.userinfo:
            raise ValueError(f"URL {value!r} must be scheme://host[:port] only: no path, query, fragment or user")
        return str(url.copy_with(raw_path=b"/")).rstrip("/")


class HashOnConfig(_Model):
    """What ``ring_hash`` hashes: exactly one of a request header or a cookie."""

    header: str | None = None
    cookie: str | None = None

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        return None if value is None else _check_header_name(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("set exactly one of 'header' or 'cookie'")
        return self


LbName = Literal["round_robin", "random", "least_request", "ring_hash"]


class ClusterConfig(_Model):
    """A named group of endpoints and how to balance load across them."""

    endpoints: list[EndpointConfig] = Field(min_length=1)
    lb: LbName = "round_robin"
    hash_on: HashOnConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.lb == "ring_hash" and self.hash_on is None:
            raise ValueError("lb 'ring_hash' needs hash_on: {header: NAME} or {cookie: NAME}")
        if self.lb != "ring_hash" and self.hash_on is not None:
            raise ValueError(f"hash_on applies only to lb 'ring_hash', not {self.lb!r}")
        seen: set[str] = set()
        for endpoint in self.endpoints:
            if endpoint.url in seen:
                raise ValueError(f"duplicate endpoint {endpoint.url!r}")
            seen.add(endpoint.url)
        return self


class StringMatchConfig(_Model):
    """How to match a header or query value: exactly one of exact, prefix, regex, present, absent.

    A plain string is shorthand for ``{exact: STRING}``. Regexes must match the whole value.
    """

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: Literal[True] | None = None
    absent: Literal[True] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"exact": data} if isinstance(data, str) else data

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return None if value is None else _compile_regex(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        chosen = [k for k in ("exact", "prefix", "regex", "present", "absent") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "set exactly one of exact, prefix, regex, present: true, absent: true"
                + (f" (got {', '.join(chosen)})" if chosen else "")
            )
        return self


class RouteMatchConfig(_Model):
    """Conditions a request must meet, all of them, for its route to apply."""

    host: str | None = None
    path: str | None = None
    path_prefix: str | None = None
    path_regex: str | None = None
    method: list[str] | None = None
    headers: dict[str, StringMatchConfig] = Field(default_factory=dict)
    query: dict[str, StringMatchConfig] = Field(default_factory=dict)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host = value.lower()
        if not _HOST.match(host):
            raise ValueError(f"invalid host {value!r}: a host name, '*.suffix' or '*' (no scheme, port or path)")
        return host

    @field_validator("path", "path_prefix")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        return None if value is None else _check_path(value)

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
        if value is None:
            return None
        if not value:
            raise ValueError("list at least one method, or leave method out to match any")
        for method in value:
            if not _TOKEN.match(method):
                raise ValueError(f"invalid method {method!r}")
        return [m.upper() for m in value]

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, StringMatchConfig]) -> dict[str, StringMatchConfig]:
        return {_check_header_name(k): v for k, v in value.items()}

    @model_validator(mode="after")
    def _one_path(self) -> Self:
        given = [k for k in ("path", "path_prefix", "path_regex") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"set at most one of path, path_prefix, path_regex (got {', '.join(given)})")
        return self


class SplitConfig(_Model):
    """One leg of a weighted split. Weights are relative: 95 and 5 send 95% and 5%."""

    cluster: str
    weight: PositiveInt


class RewriteConfig(_Model):
    """Changes made to the request before it goes upstream."""

    path_prefix: str | None = None
    host: str | None = None

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        return None if value is None else _check_path(value)

    @field_validator("host")
    @classmethod
    def _rewrite_host(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in " /\r\n\x00@")):
            raise ValueError(f"invalid host {value!r}")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.path_prefix is None and self.host is None:
            raise ValueError("set path_prefix, host, or both")
        return self


class HeaderOpsConfig(_Model):
    """Header edits, applied in the order remove, set (replace), add (append)."""

    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)

    @field_validator("set", "add")
    @classmethod
    def _pairs(cls, value: dict[str, str]) -> dict[str, str]:
        return {_check_header_name(k): _check_header_value(v) for k, v in value.items()}

    @field_validator("remove")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return [_check_header_name(k) for k in value]


class RouteHeadersConfig(_Model):
    """Header edits on the way upstream (``request``) and back (``response``)."""

    request: HeaderOpsConfig = Field(default_factory=HeaderOpsConfig)
    response: HeaderOpsConfig = Field(default_factory=HeaderOpsConfig)


class DirectResponseConfig(_Model):
    """Answer locally, without any upstream."""

    status: Annotated[int, Field(strict=True, ge=200, le=599)]
    body: str = ""
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _pairs(cls, value: dict[str, str]) -> dict[str, str]:
        return {_check_header_name(k): _check_header_value(v) for k, v in value.items()}


class RouteConfig(_Model):
    """A route: when ``match`` holds, send to ``cluster``, a ``split``, or answer with ``direct_response``."""

    name: str | None = Field(default=None, min_length=1)
    match: RouteMatchConfig = Field(default_factory=RouteMatchConfig)
    cluster: str | None = None
    split: list[SplitConfig] | None = Field(default=None, min_length=1)
    direct_response: DirectResponseConfig | None = None
    rewrite: RewriteConfig | None = None
    headers: RouteHeadersConfig | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Self:
        given = [k for k in ("cluster", "split", "direct_response") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of cluster, split, direct_response" + (f" (got {', '.join(given)})" if given else "")
            )
        if self.direct_response is not None and self.rewrite is not None:
            raise ValueError("rewrite has no effect on a direct_response route")
        if self.rewrite and self.rewrite.path_prefix is not None and self.match.path_regex:
            raise ValueError("rewrite.path_prefix needs match.path_prefix or match.path, not path_regex")
        return self


class MeshConfig(_Model):
    """A whole mesh config: this workload's name, its clusters and its routes.

    Build one from a file or a dict (:meth:`from_file`, :meth:`from_dict`) or
    directly with keyword arguments; a bad config raises
    :class:`meshlib.ConfigError` naming each bad field path::

        config = MeshConfig.from_dict({
            "clusters": {"ratings": {"endpoints": ["http://127.0.0.1:9090"]}},
        })
    """

    service: str = Field(default="default", min_length=1)
    outbound_policy: Literal["allow_any", "registry_only"] = "allow_any"
    clusters: dict[ClusterName, ClusterConfig] = Field(default_factory=dict)
    routes: list[RouteConfig] = Field(default_factory=list)

    def __init__(self, **data: Any) -> None:
        from meshlib._config.load import config_error_from

        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise config_error_from(exc) from None

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

    @model_validator(mode="after")
    def _cross_references(self) -> Self:
        errors: list[InitErrorDetails] = []

        def error(loc: tuple[str | int, ...], message: str, value: object) -> None:
            errors.append(InitErrorDetails(type=PydanticCustomError("config", message), loc=loc, input=value))

        names: dict[str, int] = {}
        for i, route in enumerate(self.routes):
            if route.name is not None:
                if route.name in names:
                    error(
                        ("routes", i, "name"),
                        f"duplicate route name {route.name!r} (also routes[{names[route.name]}])",
                        route.name,
                    )
                names.setdefault(route.name, i)
            if route.cluster is not None and route.cluster not in self.clusters:
                error(("routes", i, "cluster"), f"unknown cluster {route.cluster!r}", route.cluster)
            for j, leg in enumerate(route.split or ()):
                if leg.cluster not in self.clusters:
                    error(("routes", i, "split", j, "cluster"), f"unknown cluster {leg.cluster!r}", leg.cluster)
            seen_legs = [leg.cluster for leg in route.split or ()]
            for j, leg in enumerate(route.split or ()):
                if seen_legs.index(leg.cluster) != j:
                    error(
                        ("routes", i, "split", j, "cluster"),
                        f"cluster {leg.cluster!r} appears twice in this split",
                        leg.cluster,
                    )
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self
