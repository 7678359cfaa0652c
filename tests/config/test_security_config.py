"""The tls: and inbound: sections: the issue's example loads, and each malformed field names its path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import meshlib
from meshlib._config.load import load_file
from meshlib._config.security import parse_spiffe_id

EXAMPLE = Path(__file__).with_name("security_example.yaml")


def test_the_issue_example_validates_as_written() -> None:
    config = load_file(EXAMPLE)
    tls = config.clusters["reviews"].tls
    assert tls is not None
    assert (tls.mode, tls.server_name) == ("mutual", "reviews")
    assert tls.expected_identities == ["spiffe://example.org/ns/default/sa/reviews"]
    inbound = config.inbound
    assert inbound is not None
    assert inbound.mtls is not None
    assert inbound.mtls.mode == "strict"
    assert [p.issuer for p in inbound.jwt] == ["https://issuer.example.org"]
    assert [p.action for p in inbound.authorization] == ["deny", "allow"]
    allow = inbound.authorization[1]
    assert allow.rules[0].from_[0].principals == ["spiffe://example.org/ns/default/sa/frontend"]
    assert allow.rules[1].when[0].key == "request.auth.claims[role]"


def _errors(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(meshlib.ConfigError) as raised:
        meshlib.MeshConfig.from_dict(data)
    return raised.value.errors


CLUSTER = {"endpoints": ["https://127.0.0.1:9443"]}


@pytest.mark.parametrize(
    ("tls", "path", "message"),
    [
        ({"mode": "mutual", "ca_file": "ca.pem", "cert_file": "c.pem"}, "key_file", "tls mode 'mutual' needs key_file"),
        ({"mode": "simple", "cert_file": "c.pem"}, "key_file", "cert_file and key_file go together"),
        ({"mode": "disable", "ca_file": "ca.pem"}, "ca_file", "ca_file has no effect with tls mode 'disable'"),
        ({"mode": "tls"}, "mode", "Input should be 'disable', 'simple' or 'mutual'"),
        ({"expected_identities": ["example.org/ns/a/sa/b"]}, "expected_identities[0]", "is not a SPIFFE ID"),
        ({"expected_identities": ["spiffe://Example.org/x"]}, "expected_identities[0]", "invalid trust domain"),
        ({"expected_identities": ["spiffe://example.org"]}, "expected_identities[0]", "has no path"),
        ({"expected_identities": ["spiffe://example.org/a/../b"]}, "expected_identities[0]", "invalid path segment"),
        ({"server_name": "a b"}, "server_name", "invalid server_name"),
    ],
)
def test_a_bad_tls_setting_names_its_field(tls: dict[str, Any], path: str, message: str) -> None:
    errors = _errors({"clusters": {"reviews": {**CLUSTER, "tls": tls}}})
    assert any(p == f"clusters.reviews.tls.{path}" and message in m for p, m in errors), errors


def test_an_https_endpoint_with_tls_disabled_is_refused() -> None:
    errors = _errors({"clusters": {"reviews": {**CLUSTER, "tls": {"mode": "disable"}}}})
    assert errors == [("clusters.reviews.endpoints[0]", "an https:// endpoint needs TLS: tls mode is 'disable'")]


@pytest.mark.parametrize(
    ("inbound", "path", "message"),
    [
        ({"mtls": {"mode": "strict"}}, "inbound.mtls.ca_file", "mtls mode 'strict' needs ca_file"),
        ({"jwt": [{"issuer": "i"}]}, "inbound.jwt[0]", "set exactly one of jwks_file, jwks_uri, jwks"),
        (
            {"jwt": [{"issuer": "i", "jwks_file": "a", "jwks_uri": "https://x/j"}]},
            "inbound.jwt[0]",
            "(got jwks_file, jwks_uri)",
        ),
        ({"jwt": [{"issuer": "i", "jwks_uri": "ftp://x"}]}, "inbound.jwt[0].jwks_uri", "invalid jwks_uri"),
        (
            {"jwt": [{"issuer": "i", "jwks": "{}"}, {"issuer": "i", "jwks": "{}"}]},
            "inbound.jwt[1].issuer",
            "duplicate issuer (also jwt[0])",
        ),
        ({"authorization": [{"rules": []}]}, "inbound.authorization[0].action", "required"),
        ({"authorization": [{"action": "audit"}]}, "inbound.authorization[0].action", "Input should be 'allow'"),
        (
            {"authorization": [{"action": "deny", "rules": [{"to": {"paths": ["admin/*"]}}]}]},
            "inbound.authorization[0].rules[0].to[0].paths",
            "must start with '/'",
        ),
        (
            {"authorization": [{"action": "deny", "rules": [{"when": [{"key": "request.body", "values": ["x"]}]}]}]},
            "inbound.authorization[0].rules[0].when[0].key",
            "unknown condition key 'request.body'",
        ),
        (
            {"authorization": [{"action": "deny", "rules": [{"when": [{"key": "source.ip"}]}]}]},
            "inbound.authorization[0].rules[0].when[0]",
            "set values, not_values, or both",
        ),
        (
            {"authorization": [{"action": "deny", "rules": [{"from": {"ip_blocks": ["10.0.0.0/33"]}}]}]},
            "inbound.authorization[0].rules[0].from[0].ip_blocks[0]",
            "invalid IP block",
        ),
        ({"trusted_proxies": ["localhost"]}, "inbound.trusted_proxies[0]", "invalid IP block"),
    ],
)
def test_a_bad_inbound_setting_names_its_field(inbound: dict[str, Any], path: str, message: str) -> None:
    errors = _errors({"allow_empty": True, "inbound": inbound})
    assert any(p == path and message in m for p, m in errors), errors


def test_from_and_to_take_one_mapping_or_a_list() -> None:
    rule = {"from": [{"principals": ["a"]}, {"namespaces": ["b"]}], "to": {"methods": ["GET"]}}
    config = meshlib.MeshConfig.from_dict(
        {"allow_empty": True, "inbound": {"authorization": [{"action": "allow", "rules": [rule]}]}}
    )
    assert config.inbound is not None
    parsed = config.inbound.authorization[0].rules[0]
    assert [s.principals or s.namespaces for s in parsed.from_] == [["a"], ["b"]]
    assert [o.methods for o in parsed.to] == [["GET"]]


def test_spiffe_ids_split_into_trust_domain_and_path() -> None:
    assert parse_spiffe_id("spiffe://example.org/ns/default/sa/reviews") == ("example.org", "/ns/default/sa/reviews")


def test_a_misspelt_from_is_suggested_as_written() -> None:
    """The field is ``from_`` in Python; the suggestion names the key users write."""
    with pytest.raises(meshlib.ConfigError) as info:
        meshlib.MeshConfig.from_dict({"inbound": {"authorization": [{"action": "allow", "rules": [{"frm": {}}]}]}})
    assert info.value.errors == [("inbound.authorization[0].rules[0].frm", "unknown key 'frm' (did you mean 'from'?)")]
