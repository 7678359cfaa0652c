"""The ``sidecar:`` section: where ``meshlib proxy`` listens, and the limits it holds untrusted clients to.

Every listener defaults to loopback. ``listen`` is ``HOST:PORT``, ``[IPv6]:PORT``
or ``:PORT`` (loopback); port 0 asks the OS for a free port. An address given
another way (a ``meshlib proxy`` flag, an environment variable) goes through
the very same models (:func:`with_listen_addresses`), so no way of setting a
listener skips a check: the admin listener is loopback only, whichever way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import httpx

from meshlib._config.base import ConfigModel, PositiveInt
from meshlib._config.durations import PositiveDuration
from meshlib._config.pydantic_names import AfterValidator, Field, ValidationError, WithJsonSchema
from meshlib._config.redact import Secret
from meshlib._errors import ConfigError

__all__ = [
    "LISTENERS",
    "Address",
    "AdminListenerConfig",
    "InboundListenerConfig",
    "ListenerConfig",
    "ListenerName",
    "SidecarConfig",
    "SidecarLimitsConfig",
    "parse_address",
    "with_listen_addresses",
]


@dataclass(frozen=True, slots=True)
class Address:
    """A listener's host and port, parsed from ``HOST:PORT``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(value: str) -> Address:
    """``"127.0.0.1:15001"``, ``"[::1]:15001"``, ``"localhost:15001"`` or ``":15001"`` (loopback) → Address."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"invalid listen address {value!r}: expected HOST:PORT, e.g. '127.0.0.1:15001'")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"invalid listen address {value!r}: port {port} is above 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid listen address {value!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"invalid listen address {value!r}: write an IPv6 host in brackets, e.g. '[::1]:15001'")
    if not host:
        host = "127.0.0.1"
    if any(c.isspace() for c in host):
        raise ValueError(f"invalid listen address {value!r}: the host has spaces")
    return Address(host, port)


def _address(value: str) -> str:
    parse_address(value)
    return value


ListenAddress = Annotated[
    str,
    AfterValidator(_address),
    WithJsonSchema({"type": "string", "examples": ["127.0.0.1:15001", "[::1]:15001"]}),
]


def _app_url(value: str) -> str:
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"invalid app URL {value!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"invalid app URL {value!r}: expected http://HOST:PORT")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError(f"invalid app URL {value!r}: give only scheme, host and port")
    return value


class ListenerConfig(ConfigModel):
    """A listener: ``listen: HOST:PORT``."""

    listen: ListenAddress


class InboundListenerConfig(ListenerConfig):
    """The inbound listener, and the local app it forwards to (``app: http://127.0.0.1:8000``)."""

    app: Annotated[str, AfterValidator(_app_url), Secret.URL]


def _loopback(value: str) -> str:
    host = parse_address(value).host
    if host == "localhost":
        return value
    try:
        if ipaddress.ip_address(host).is_loopback:
            return value
    except ValueError:
        pass
    raise ValueError(f"admin listens on loopback only (127.0.0.0/8, ::1 or localhost), not {host!r}")


class AdminListenerConfig(ConfigModel):
    """The admin listener: loopback only, since it can reload and drain the proxy."""

    listen: Annotated[ListenAddress, AfterValidator(_loopback)] = "127.0.0.1:15000"


class SidecarLimitsConfig(ConfigModel):
    """What one untrusted client may take; the defaults are Envoy's where it has one."""

    max_connections: PositiveInt = 10000
    max_request_headers_kb: Annotated[int, Field(strict=True, ge=1, le=8192)] = 60
    header_timeout: PositiveDuration = 10.0
    idle_timeout: PositiveDuration = 60.0
    drain_timeout: PositiveDuration = 20.0


class SidecarConfig(ConfigModel):
    """``meshlib proxy``: its listeners and limits. Every listener defaults to loopback."""

    outbound: ListenerConfig = Field(default_factory=lambda: ListenerConfig(listen="127.0.0.1:15001"))
    inbound: InboundListenerConfig | None = None
    admin: AdminListenerConfig = Field(default_factory=AdminListenerConfig)
    limits: SidecarLimitsConfig = Field(default_factory=SidecarLimitsConfig)


ListenerName = Literal["outbound", "inbound", "admin"]
LISTENERS: Final[tuple[ListenerName, ...]] = ("outbound", "inbound", "admin")


def with_listen_addresses(sidecar: SidecarConfig, given: Mapping[ListenerName, tuple[str, str]]) -> SidecarConfig:
    """``sidecar`` with listen addresses set elsewhere, each validated as ``sidecar.NAME.listen`` is in a config.

    ``given`` maps a listener to (where its address comes from, the address),
    e.g. ``{"admin": ("--admin", "0.0.0.0:15000")}``. Raises
    :class:`ConfigError` with one ``(where, why)`` pair per bad address::

        with_listen_addresses(sidecar, {"admin": ("--admin", "0.0.0.0:15000")})
        # ConfigError: --admin: admin listens on loopback only (127.0.0.0/8, ::1 or localhost), not '0.0.0.0'
    """
    errors: list[tuple[str, str]] = []
    update: dict[str, ListenerConfig] = {}
    for name, (where, listen) in given.items():
        current: ListenerConfig | None = getattr(sidecar, name)
        if current is None:  # only the inbound listener is optional: it needs to know where the app is
            errors.append(
                (where, "the inbound listener needs sidecar.inbound.app in the config (where the app listens)")
            )
            continue
        try:
            update[name] = type(current).model_validate({**current.model_dump(), "listen": listen})
        except ValidationError as exc:
            errors += [(where, err["msg"].removeprefix("Value error, ")) for err in exc.errors(include_url=False)]
    if errors:
        raise ConfigError(errors)
    return sidecar.model_copy(update=update)
