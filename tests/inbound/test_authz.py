"""Authorization semantics, Istio's: deny first, then allow if any allow policy exists; rules, fields, patterns."""

from __future__ import annotations

import json
from typing import Any

import pytest

import meshlib
from meshlib._engine.inbound_context import InboundRequest, Peer, PeerCertificate
from tests.inbound import tokens

FRONTEND = "spiffe://example.org/ns/default/sa/frontend"
BATCH = "spiffe://example.org/ns/jobs/sa/batch"


def check(
    policies: list[dict[str, Any]],
    *,
    method: str = "GET",
    path: str = "/api/x",
    host: str = "reviews",
    port: int = 9080,
    peer: str | None = None,
    address: str = "10.0.0.5",
    token: str | None = None,
    headers: dict[str, str] | None = None,
    sni: str | None = None,
) -> tuple[int, str | None]:
    """(status, denying policy) of one request through the engine: 200 when allowed."""
    inbound: dict[str, Any] = {"authorization": policies}
    inbound["jwt"] = [{"issuer": tokens.ISSUER, "jwks": json.dumps(tokens.default_jwks())}]
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["authorization"] = f"Bearer {token}"
    certificate = PeerCertificate(uri=peer) if peer else None
    request = InboundRequest(
        method, path, "", all_headers, host, port, Peer(address, certificate is not None, certificate, sni)
    )
    with meshlib.Mesh.from_dict({"inbound": inbound}) as mesh:
        result = mesh.snapshot.inbound.check(request)
    if result.denial is None:
        return 200, None
    return result.denial.status, result.denial.policy


def allow(*rules: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    return {"action": "allow", "rules": list(rules), **({"name": name} if name else {})}


def deny(*rules: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    return {"action": "deny", "rules": list(rules), **({"name": name} if name else {})}


def test_no_policy_allows_everything() -> None:
    assert check([]) == (200, None)


def test_an_allow_policy_without_rules_denies_everything() -> None:
    assert check([allow()]) == (403, "authorization[0]")


def test_an_empty_rule_matches_every_request() -> None:
    assert check([allow({})]) == (200, None)
    assert check([deny({}, name="lockdown")]) == (403, "lockdown")


def test_a_deny_policy_without_rules_denies_nothing() -> None:
    assert check([deny()]) == (200, None)


def test_deny_wins_over_allow() -> None:
    policies = [allow({}), deny({"to": {"paths": ["/api/*"]}}, name="no-api")]
    assert check(policies) == (403, "no-api")
    assert check(policies, path="/other") == (200, None)


def test_with_an_allow_policy_a_request_must_match_one() -> None:
    policies = [allow({"to": {"paths": ["/a"]}}, name="a"), allow({"to": {"paths": ["/b"]}}, name="b")]
    assert check(policies, path="/a")[0] == 200
    assert check(policies, path="/b")[0] == 200
    assert check(policies, path="/c") == (403, "a, b")


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/api/x", "/api/x", True),
        ("/api/x", "/api/x/", False),
        ("/api/*", "/api/x/y", True),
        ("/api/*", "/api", False),
        ("*/x", "/api/x", True),
        ("*.png", "/img/a.png", True),
        ("*.png", "/img/a.jpg", False),
        ("*", "/anything", True),
        ("/API/*", "/api/x", False),  # paths are case-sensitive
    ],
)
def test_patterns_exact_prefix_suffix_presence(pattern: str, path: str, matches: bool) -> None:
    assert (check([allow({"to": {"paths": [pattern]}})], path=path)[0] == 200) is matches


def test_a_rule_needs_some_source_some_operation_and_every_condition() -> None:
    rule = {
        "from": [{"principals": [FRONTEND]}, {"namespaces": ["jobs"]}],
        "to": [{"methods": ["GET"]}, {"paths": ["/write/*"]}],
        "when": [{"key": "request.headers[x-env]", "values": ["prod"]}, {"key": "source.ip", "values": ["10.0.0.0/8"]}],
    }
    env = {"x-env": "prod"}
    assert check([allow(rule)], peer=FRONTEND, headers=env)[0] == 200
    assert check([allow(rule)], peer=BATCH, method="POST", path="/write/1", headers=env)[0] == 200
    assert check([allow(rule)], peer=BATCH, method="POST", path="/read/1", headers=env)[0] == 403  # no operation
    assert check([allow(rule)], peer="spiffe://example.org/ns/x/sa/y", headers=env)[0] == 403  # no source
    assert check([allow(rule)], peer=FRONTEND, headers={"x-env": "dev"})[0] == 403  # a condition fails
    assert check([allow(rule)], peer=FRONTEND, headers=env, address="192.168.1.1")[0] == 403


def test_fields_of_one_source_are_and_ed() -> None:
    rule = {"from": {"principals": [FRONTEND], "ip_blocks": ["10.0.0.0/8"]}}
    assert check([allow(rule)], peer=FRONTEND)[0] == 200
    assert check([allow(rule)], peer=FRONTEND, address="172.16.0.1")[0] == 403


@pytest.mark.parametrize(
    ("source", "peer", "address", "allowed"),
    [
        ({"principals": [FRONTEND]}, FRONTEND, "10.0.0.5", True),
        ({"principals": ["example.org/ns/default/sa/frontend"]}, FRONTEND, "10.0.0.5", True),  # Istio's form
        ({"principals": ["example.org/ns/default/*"]}, FRONTEND, "10.0.0.5", True),
        ({"principals": ["*/sa/frontend"]}, FRONTEND, "10.0.0.5", True),
        ({"principals": ["*"]}, None, "10.0.0.5", False),  # presence needs an authenticated peer
        ({"not_principals": [FRONTEND]}, BATCH, "10.0.0.5", True),
        ({"not_principals": [FRONTEND]}, FRONTEND, "10.0.0.5", False),
        ({"not_principals": [FRONTEND]}, None, "10.0.0.5", True),
        ({"namespaces": ["jobs"]}, BATCH, "10.0.0.5", True),
        ({"namespaces": ["jobs"]}, FRONTEND, "10.0.0.5", False),
        ({"not_namespaces": ["jobs"]}, FRONTEND, "10.0.0.5", True),
        ({"ip_blocks": ["10.0.0.0/24"]}, None, "10.0.0.5", True),
        ({"ip_blocks": ["10.0.0.0/24"]}, None, "10.0.1.5", False),
        ({"ip_blocks": ["10.0.0.5"]}, None, "::ffff:10.0.0.5", True),  # IPv4-mapped IPv6
        ({"ip_blocks": ["fd00::/8"]}, None, "fd00::1", True),
        ({"not_ip_blocks": ["10.0.0.0/8"]}, None, "10.0.0.5", False),
    ],
)
def test_source_fields(source: dict[str, Any], peer: str | None, address: str, allowed: bool) -> None:
    assert (check([allow({"from": source})], peer=peer, address=address)[0] == 200) is allowed


def test_request_principals_are_iss_slash_sub() -> None:
    rule = {"from": {"request_principals": [f"{tokens.ISSUER}/alice"]}}
    assert check([allow(rule)], token=tokens.token(aud=None))[0] == 200
    assert check([allow(rule)], token=tokens.token(aud=None, sub="bob"))[0] == 403
    assert check([allow(rule)])[0] == 403  # no token: no request principal (Istio: 403)
    negated = {"from": {"not_request_principals": ["*"]}}
    assert check([deny(negated)])[0] == 403  # "deny requests without a token"
    assert check([deny(negated)], token=tokens.token(aud=None))[0] == 200


@pytest.mark.parametrize(
    ("operation", "request_kwargs", "allowed"),
    [
        ({"hosts": ["reviews"]}, {"host": "reviews"}, True),
        ({"hosts": ["reviews"]}, {"host": "Reviews:9080"}, True),
        ({"hosts": ["reviews"]}, {"host": "reviews."}, True),
        ({"hosts": ["reviews:9080"]}, {"host": "reviews:9080"}, True),
        ({"hosts": ["reviews:9080"]}, {"host": "reviews"}, False),
        ({"hosts": ["*.example.org"]}, {"host": "api.EXAMPLE.org"}, True),
        ({"hosts": ["Reviews"]}, {"host": "reviews"}, True),
        ({"not_hosts": ["reviews"]}, {"host": "ratings"}, True),
        ({"hosts": ["[::1]"]}, {"host": "[::1]:9080"}, True),
        ({"ports": [9080]}, {"port": 9080}, True),
        ({"ports": [9080]}, {"port": 8080}, False),
        ({"not_ports": [9080]}, {"port": 8080}, True),
        ({"methods": ["GET", "HEAD"]}, {"method": "HEAD"}, True),
        ({"methods": ["GET"]}, {"method": "POST"}, False),
        ({"not_methods": ["POST"]}, {"method": "GET"}, True),
        ({"not_paths": ["/admin/*"]}, {"path": "/admin/x"}, False),
    ],
)
def test_operation_fields(operation: dict[str, Any], request_kwargs: dict[str, Any], allowed: bool) -> None:
    assert (check([allow({"to": operation})], **request_kwargs)[0] == 200) is allowed


@pytest.mark.parametrize(
    ("condition", "request_kwargs", "allowed"),
    [
        ({"key": "request.headers[X-Env]", "values": ["prod"]}, {"headers": {"x-env": "prod"}}, True),
        ({"key": "request.headers[x-env]", "values": ["prod"]}, {}, False),
        ({"key": "request.headers[x-env]", "not_values": ["prod"]}, {}, True),
        ({"key": "request.headers[x-env]", "values": ["*"]}, {"headers": {"x-env": ""}}, False),
        ({"key": "request.auth.claims[role]", "values": ["admin"]}, {"token": {"role": "admin"}}, True),
        ({"key": "request.auth.claims[role]", "values": ["admin"]}, {"token": {"role": "user"}}, False),
        ({"key": "request.auth.claims[groups]", "values": ["ops"]}, {"token": {"groups": ["dev", "ops"]}}, True),
        ({"key": "request.auth.claims[org][team]", "values": ["sre"]}, {"token": {"org": {"team": "sre"}}}, True),
        ({"key": "request.auth.claims[org][team]", "values": ["sre"]}, {"token": {"org": "sre"}}, False),
        ({"key": "request.auth.claims[admin]", "values": ["true"]}, {"token": {"admin": True}}, True),
        ({"key": "request.auth.claims[role]", "values": ["admin"]}, {}, False),
        ({"key": "request.auth.principal", "values": [f"{tokens.ISSUER}/alice"]}, {"token": {}}, True),
        ({"key": "request.auth.audiences", "values": ["reviews"]}, {"token": {}}, True),
        ({"key": "request.auth.presenter", "values": ["web"]}, {"token": {"azp": "web"}}, True),
        ({"key": "source.ip", "values": ["10.0.0.0/8"]}, {}, True),
        ({"key": "source.ip", "not_values": ["10.0.0.5"]}, {}, False),
        ({"key": "source.principal", "values": [FRONTEND]}, {"peer": FRONTEND}, True),
        ({"key": "source.namespace", "values": ["default"]}, {"peer": FRONTEND}, True),
        ({"key": "destination.port", "values": ["9080"]}, {}, True),
        ({"key": "connection.sni", "values": ["reviews.example.org"]}, {"sni": "reviews.example.org"}, True),
        ({"key": "connection.sni", "values": ["*"]}, {}, False),
    ],
)
def test_conditions(condition: dict[str, Any], request_kwargs: dict[str, Any], allowed: bool) -> None:
    claims = request_kwargs.pop("token", None)
    token = tokens.token(**claims) if claims is not None else None
    assert (check([allow({"when": [condition]})], token=token, **request_kwargs)[0] == 200) is allowed


def test_the_issue_example() -> None:
    """The issue's policy: /admin/* denied to all; GETs on /api/* from frontend; anything for a JWT admin."""
    policies = [
        deny({"to": {"paths": ["/admin/*"]}}),
        allow(
            {"from": {"principals": [FRONTEND]}, "to": {"methods": ["GET"], "paths": ["/api/*"]}},
            {
                "from": {"request_principals": [f"{tokens.ISSUER}/*"]},
                "when": [{"key": "request.auth.claims[role]", "values": ["admin"]}],
            },
        ),
    ]
    admin = tokens.token(role="admin")
    assert check(policies, peer=FRONTEND)[0] == 200
    assert check(policies, peer=FRONTEND, method="POST")[0] == 403
    assert check(policies, peer=FRONTEND, path="/admin/x") == (403, "authorization[0]")
    assert check(policies, token=admin, method="DELETE", path="/other")[0] == 200
    assert check(policies, token=admin, path="/admin/x")[0] == 403
    assert check(policies, token=tokens.token(role="user"))[0] == 403
    assert check(policies)[0] == 403
