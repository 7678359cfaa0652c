"""The config of discovery: registry, register, config_source and clusters.NAME.discovery, good and bad.

Every malformed value names its field path and what is wrong, all in one run.
"""

from __future__ import annotations

from typing import Any

import pytest

from meshlib import ConfigError, MeshConfig

ETCD = {"endpoints": ["http://127.0.0.1:2379"]}


def _errors(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        MeshConfig.from_dict(data)
    return info.value.errors


def test_the_issue_example_loads() -> None:
    config = MeshConfig.from_dict(
        {
            "registry": {
                "etcd": {
                    "endpoints": ["http://127.0.0.1:2379", "http://127.0.0.1:22379", "http://127.0.0.1:32379"],
                    "prefix": "/meshlib/",
                    "snapshot": "/var/lib/meshlib/frontend.json",
                },
                "register": {
                    "service": "reviews",
                    "address": "http://127.0.0.1:9081",
                    "labels": {"version": "v2"},
                    "ttl": "10s",
                },
            },
            "config_source": {"etcd": {"key": "/meshlib/config/frontend"}},
            "clusters": {
                "reviews-v2": {"discovery": {"etcd": {"service": "reviews", "labels": {"version": "v2"}}}},
                "ratings": {
                    "discovery": {"dns": {"name": "ratings.internal", "port": 9080, "scheme": "http", "refresh": "5s"}}
                },
                "legacy": {"endpoints": ["http://127.0.0.1:9090"]},
            },
        }
    )
    assert config.registry is not None
    assert config.registry.register_ is not None
    assert config.registry.register_.ttl == 10
    assert config.clusters["ratings"].discovery is not None
    assert config.clusters["ratings"].discovery.dns is not None
    assert config.clusters["ratings"].endpoints == []
    # Written back as users write it: the alias, not the attribute name.
    assert "register" in config.model_dump(by_alias=True)["registry"]


def test_a_config_from_etcd_or_a_registration_alone_is_not_empty() -> None:
    MeshConfig.from_dict({"registry": {"etcd": ETCD}, "config_source": {"etcd": {"key": "/meshlib/config/x"}}})
    MeshConfig.from_dict({"registry": {"etcd": ETCD, "register": {"service": "reviews"}}})


BAD = [
    pytest.param(
        {"clusters": {"a": {}}},
        [("clusters.a.endpoints", "set endpoints (a list of URLs) or discovery")],
        id="neither",
    ),
    pytest.param(
        {"clusters": {"a": {"endpoints": ["http://a:1"], "discovery": {"dns": {"name": "a", "port": 1}}}}},
        [("clusters.a.discovery", "set endpoints or discovery, not both")],
        id="both",
    ),
    pytest.param(
        {"clusters": {"a": {"discovery": {}}}},
        [("clusters.a.discovery", "set exactly one of etcd, dns, xds")],
        id="none",
    ),
    pytest.param(
        {
            "registry": {"etcd": ETCD},
            "clusters": {"a": {"discovery": {"dns": {"name": "a", "port": 1}, "etcd": {"service": "a"}}}},
        },
        [("clusters.a.discovery", "set exactly one of etcd, dns, xds (got etcd, dns)")],
        id="two-sources",
    ),
    pytest.param(
        {"clusters": {"a": {"discovery": {"etcd": {"service": "a"}}}}},
        [("clusters.a.discovery.etcd", "discovery from etcd needs registry.etcd (where etcd runs)")],
        id="etcd-without-registry",
    ),
    pytest.param(
        {"clusters": {"a": {"discovery": {"dns": {"name": "bad name", "port": 0, "resolvers": ["1.2.3.4"]}}}}},
        [
            ("clusters.a.discovery.dns.name", "invalid DNS name 'bad name'"),
            ("clusters.a.discovery.dns.port", "Input should be greater than or equal to 1"),
            (
                "clusters.a.discovery.dns.resolvers[0]",
                "invalid resolver '1.2.3.4': write IP:PORT, e.g. '127.0.0.1:53' or '[::1]:53'",
            ),
        ],
        id="dns-fields",
    ),
    pytest.param(
        {
            "clusters": {
                "a": {"tls": {"mode": "disable"}, "discovery": {"dns": {"name": "a", "port": 1, "scheme": "https"}}}
            }
        },
        [("clusters.a.discovery.dns.scheme", "scheme 'https' needs TLS: tls mode is 'disable'")],
        id="https-without-tls",
    ),
    pytest.param(
        {"config_source": {"etcd": {"key": "/meshlib/config/x"}}},
        [("config_source.etcd", "a config source in etcd needs registry.etcd (where etcd runs)")],
        id="config-source-without-registry",
    ),
    pytest.param(
        {"registry": {"etcd": ETCD}, "config_source": {"etcd": {"key": "/elsewhere/config"}}},
        [("config_source.etcd.key", "must be under registry.etcd.prefix '/meshlib/'")],
        id="config-key-outside-the-prefix",
    ),
    pytest.param(
        {"registry": {"register": {"service": "s", "ttl": "1500ms"}}},
        [
            ("registry.register.ttl", "ttl must be a whole number of seconds, at least 2s (etcd leases count seconds)"),
            ("registry.register", "register needs registry.etcd (where to register)"),
        ],
        id="register-ttl-and-no-etcd",
    ),
    pytest.param(
        {"registry": {"etcd": {"endpoints": ["ftp://x"], "prefix": "meshlib", "username": "u"}}},
        [
            ("registry.etcd.endpoints[0]", "URL 'ftp://x' must be http://host:port or https://host:port"),
            ("registry.etcd.prefix", "prefix 'meshlib' must start and end with '/', e.g. '/meshlib/'"),
            ("registry.etcd", "set username and password together"),
        ],
        id="etcd-fields",
    ),
    pytest.param(
        {"registry": {"etcd": {"endpoints": ["http://a:1", "https://b:2"]}}},
        [("registry.etcd.endpoints", "use http:// or https:// for every member, not both")],
        id="mixed-schemes",
    ),
    pytest.param(
        {"registry": {"etcd": {"endpoints": ["http://a:1"], "tls": {"ca_file": "ca.pem"}}}},
        [("registry.etcd.tls", "tls needs https:// endpoints")],
        id="tls-over-http",
    ),
    pytest.param(
        {"registry": {"etcd": {"endpoints": ["https://a:1"], "tls": {"cert_file": "c.pem"}}}},
        [("registry.etcd.tls", "set cert_file and key_file together")],
        id="cert-without-key",
    ),
    pytest.param(
        {"registry": {"etcd": {"endpoints": ["http://a:1/v3"]}}},
        [("registry.etcd.endpoints[0]", "URL 'http://a:1/v3' must be scheme://host[:port] only")],
        id="endpoint-with-path",
    ),
    pytest.param(
        {"registry": {"etcd": ETCD, "register": {"service": "-bad-", "address": "127.0.0.1:9081"}}},
        [
            (
                "registry.register.service",
                "invalid name '-bad-': use letters, digits, '.', '-' and '_', starting and ending with a letter or"
                " digit",
            ),
            ("registry.register.address", "URL '127.0.0.1:9081' must be http://host:port or https://host:port"),
        ],
        id="register-fields",
    ),
    pytest.param(
        {"registry": {"etcd": ETCD, "registr": {}}},
        [("registry.registr", "unknown key 'registr' (did you mean 'register'?)")],
        id="misspelt-register",
    ),
]


@pytest.mark.parametrize(("data", "errors"), BAD)
def test_malformed_discovery_config_names_each_problem(data: dict[str, Any], errors: list[tuple[str, str]]) -> None:
    assert _errors(data) == errors
