"""Config models past one machine: where endpoints come from (DNS, an etcd registry) and where the config comes from.

``registry.etcd`` says how to reach etcd and where meshlib's keys live;
``registry.register`` announces this workload there; ``config_source.etcd``
watches the mesh config itself; ``clusters.NAME.discovery`` takes a cluster's
endpoints from DNS or from the registry instead of a static list.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Annotated, Literal

import httpx

from meshlib._config.base import CheckError, ConfigModel, check
from meshlib._config.durations import PositiveDuration
from meshlib._config.pydantic_names import AfterValidator, Field, field_validator
from meshlib._config.redact import Secret
from meshlib._config.security import FilePath

__all__ = [
    "ConfigSourceConfig",
    "DiscoveryConfig",
    "DnsDiscoveryConfig",
    "EtcdConfig",
    "EtcdConfigSourceConfig",
    "EtcdDiscoveryConfig",
    "EtcdTlsConfig",
    "RegisterConfig",
    "RegistryConfig",
    "XdsDiscoveryConfig",
]

# A service name is one key segment under the prefix, and a label a DestinationRule-style subset key.
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
_DNS_NAME = re.compile(
    r"^(?=.{1,253}\.?$)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?$"
)


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"invalid name {value!r}: use letters, digits, '.', '-' and '_', starting and ending with a letter or digit"
        )
    return value


Name = Annotated[str, AfterValidator(_name)]


def _http_url(value: str) -> str:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ValueError(f"invalid URL {value!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"URL {value!r} must be http://host:port or https://host:port")
    if url.raw_path not in (b"", b"/") or url.query or url.fragment or url.userinfo:
        raise ValueError(f"URL {value!r} must be scheme://host[:port] only")
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


HttpUrl = Annotated[str, AfterValidator(_http_url)]


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
        ok = sep == ":" and port.isdigit() and 0 < int(port) < 65536
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"invalid resolver {value!r}: write IP:PORT, e.g. '127.0.0.1:53' or '[::1]:53'")
    return value


Resolver = Annotated[str, AfterValidator(_host_port)]


class EtcdTlsConfig(ConfigModel):
    """TLS to etcd: the CA that signed its serving certificate, and a client certificate when etcd asks for one."""

    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None

    @check()
    def _pair(self) -> Iterator[CheckError]:
        if (self.cert_file is None) != (self.key_file is None):
            yield (), "set cert_file and key_file together", None


class EtcdConfig(ConfigModel):
    """An etcd v3 cluster: its members, the key prefix meshlib owns there, and the local snapshot to start from."""

    endpoints: list[HttpUrl] = Field(min_length=1)
    prefix: str = "/meshlib/"
    snapshot: FilePath | None = None
    tls: EtcdTlsConfig | None = None
    username: str | None = Field(default=None, min_length=1)
    password: Annotated[str, Secret.VALUE] | None = None
    # How long one call to a member may take before the next member is tried.
    timeout: PositiveDuration = 5.0
    # With etcd unreachable at start and no snapshot: how long to keep trying before giving up.
    start_timeout: PositiveDuration = 30.0

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value.startswith("/") or not value.endswith("/") or len(value) < 2:
            raise ValueError(f"prefix {value!r} must start and end with '/', e.g. '/meshlib/'")
        if any(ord(c) < 0x20 for c in value):
            raise ValueError(f"prefix {value!r} has a control character")
        return value

    @check()
    def _credentials(self) -> Iterator[CheckError]:
        if (self.username is None) != (self.password is None):
            yield (), "set username and password together", None

    @check("endpoints", "tls")
    def _tls_fits_endpoints(self) -> Iterator[CheckError]:
        schemes = {url.partition("://")[0] for url in self.endpoints if isinstance(url, str)}
        if len(schemes) > 1:
            yield ("endpoints",), "use http:// or https:// for every member, not both", None
        if self.tls is not None and "http" in schemes:
            yield ("tls",), "tls needs https:// endpoints", None


class RegisterConfig(ConfigModel):
    """This workload's announcement: one key under a lease of ``ttl``, kept alive, deleted at graceful shutdown."""

    service: Name
    # The sidecar defaults it to its inbound listener; in process it is required.
    address: HttpUrl | None = None
    labels: dict[Name, str] = Field(default_factory=dict)
    # etcd refuses leases shorter than about its election timeout; 2s is the least meshlib asks for.
    ttl: PositiveDuration = 10.0

    @field_validator("ttl")
    @classmethod
    def _check_ttl(cls, value: float) -> float:
        if value < 2 or value != int(value):
            raise ValueError("ttl must be a whole number of seconds, at least 2s (etcd leases count seconds)")
        return value


class RegistryConfig(ConfigModel):
    """The discovery system meshlib plugs into (etcd v3), and how this workload registers there."""

    etcd: EtcdConfig | None = None
    # ``register`` in a config (a model's own ``register`` is abc's).
    register_: RegisterConfig | None = Field(default=None, alias="register")

    @check()
    def _register_needs_etcd(self) -> Iterator[CheckError]:
        if self.register_ is not None and self.etcd is None:
            yield ("register",), "register needs registry.etcd (where to register)", None


class EtcdConfigSourceConfig(ConfigModel):
    """The etcd key whose value is this workload's mesh config (YAML or JSON), watched."""

    key: str = Field(min_length=1)

    @field_validator("key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        if any(ord(c) < 0x20 for c in value):
            raise ValueError(f"key {value!r} has a control character")
        return value


class ConfigSourceConfig(ConfigModel):
    """Where the mesh config comes from besides this file: an etcd key, watched (the file keeps ``registry``)."""

    etcd: EtcdConfigSourceConfig


class EtcdDiscoveryConfig(ConfigModel):
    """A cluster's endpoints: the instances of ``service`` in the registry whose labels include ``labels``."""

    service: Name
    labels: dict[Name, str] = Field(default_factory=dict)


class DnsDiscoveryConfig(ConfigModel):
    """A cluster's endpoints: every A and AAAA record of ``name``, re-resolved at the records' TTL."""

    name: str
    port: Annotated[int, Field(strict=True, ge=1, le=65535)]
    scheme: Literal["http", "https"] = "http"
    # The longest a set is kept without asking again. The records' TTL asks sooner, but never sooner than
    # min(5s, refresh), as Envoy's dns_min_refresh_rate.
    refresh: PositiveDuration = 5.0
    # IP:PORT of the name servers to ask, instead of the system's (/etc/resolv.conf).
    resolvers: list[Resolver] | None = Field(default=None, min_length=1)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _DNS_NAME.match(value):
            raise ValueError(f"invalid DNS name {value!r}")
        return value.rstrip(".").lower()


class XdsDiscoveryConfig(ConfigModel):
    """A cluster's endpoints: those an xDS control plane gives for its Cluster resource named ``cluster``.

    meshlib writes this itself when it translates xDS resources (docs/xds.md); a file has no use for it.
    """

    cluster: str = Field(min_length=1)


class DiscoveryConfig(ConfigModel):
    """Where a cluster's endpoints come from: exactly one of ``etcd``, ``dns`` and ``xds``."""

    etcd: EtcdDiscoveryConfig | None = None
    dns: DnsDiscoveryConfig | None = None
    xds: XdsDiscoveryConfig | None = None

    @check()
    def _exactly_one(self) -> Iterator[CheckError]:
        given = [name for name in ("etcd", "dns", "xds") if getattr(self, name) is not None]
        if len(given) != 1:
            yield (), "set exactly one of etcd, dns, xds" + (f" (got {', '.join(given)})" if given else ""), None
