"""The ``sidecar:`` section: listeners (loopback by default) and the limits untrusted clients are held to."""

from __future__ import annotations

import pytest

from meshlib import ConfigError, MeshConfig
from meshlib._config.sidecar import Address, parse_address


def test_defaults_are_loopback_and_envoys_limits() -> None:
    sidecar = MeshConfig(allow_empty=True).sidecar
    assert parse_address(sidecar.outbound.listen) == Address("127.0.0.1", 15001)
    assert parse_address(sidecar.admin.listen) == Address("127.0.0.1", 15000)
    assert sidecar.inbound is None
    limits = sidecar.limits
    assert (limits.max_connections, limits.max_request_headers_kb) == (10000, 60)
    assert (limits.header_timeout, limits.idle_timeout, limits.drain_timeout) == (10.0, 60.0, 20.0)


def test_the_issue_example_is_accepted() -> None:
    config = MeshConfig.from_dict(
        {
            "allow_empty": True,  # the sidecar section alone routes nothing
            "sidecar": {
                "outbound": {"listen": "127.0.0.1:15001"},
                "inbound": {"listen": "127.0.0.1:15006", "app": "http://127.0.0.1:8000"},
                "admin": {"listen": "127.0.0.1:15000"},
                "limits": {
                    "max_connections": 10000,
                    "max_request_headers_kb": 60,
                    "header_timeout": "10s",
                    "idle_timeout": "60s",
                    "drain_timeout": "20s",
                },
            },
        }
    )
    assert config.sidecar.inbound is not None
    assert config.sidecar.inbound.app == "http://127.0.0.1:8000"
    assert MeshConfig.model_validate(config.model_dump()) == config


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:0", Address("127.0.0.1", 0)),
        ("[::1]:15001", Address("::1", 15001)),
        (":15001", Address("127.0.0.1", 15001)),
        ("localhost:8080", Address("localhost", 8080)),
        ("0.0.0.0:15001", Address("0.0.0.0", 15001)),
    ],
)
def test_listen_addresses(text: str, address: Address) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"outbound": {"listen": "15001"}},
            "sidecar.outbound.listen: invalid listen address '15001': expected HOST:PORT",
        ),
        ({"outbound": {"listen": "127.0.0.1:99999"}}, "port 99999 is above 65535"),
        ({"outbound": {"listen": "::1:15001"}}, "write an IPv6 host in brackets"),
        ({"outbound": {"listen": "[nope]:1"}}, "'nope' is not an IPv6 address"),
        ({"outbound": {}}, "sidecar.outbound.listen: required"),
        ({"admin": {"listen": "0.0.0.0:15000"}}, "admin listens on loopback only"),
        ({"admin": {"listen": "10.0.0.1:15000"}}, "admin listens on loopback only"),
        ({"inbound": {"listen": "127.0.0.1:15006"}}, "sidecar.inbound.app: required"),
        ({"inbound": {"listen": "127.0.0.1:15006", "app": "ftp://x"}}, "expected http://HOST:PORT"),
        ({"inbound": {"listen": "127.0.0.1:15006", "app": "http://a:1/path"}}, "give only scheme, host and port"),
        ({"limits": {"max_connections": 0}}, "sidecar.limits.max_connections"),
        ({"limits": {"header_timeout": 10}}, "sidecar.limits.header_timeout: expected a duration string"),
        ({"limits": {"idle_timeout": "0s"}}, "sidecar.limits.idle_timeout: must be longer than 0s"),
        ({"limits": {"max_request_headers_kb": 0}}, "sidecar.limits.max_request_headers_kb"),
        ({"listeners": {}}, "sidecar.listeners: unknown key 'listeners'"),
    ],
)
def test_bad_sidecar_sections_name_the_field(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        MeshConfig.from_dict({"sidecar": section})
    assert message in str(caught.value)
