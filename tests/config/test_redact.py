"""Credentials are found by what a config value means (a header's name, a URL, a query match), never shown."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import Field

from meshlib import ConfigError, MeshConfig
from meshlib._config.base import ConfigModel
from meshlib._config.redact import REDACTED, Secret, redact_config, redact_url, redactor_at, sensitive_header

ENDPOINT = "http://127.0.0.1:9081"


@pytest.mark.parametrize(
    "name",
    [
        "authorization",
        "Proxy-Authorization",
        "cookie",
        "set-cookie",
        "x-auth",
        "x-api-key",
        "apikey",
        "x-csrf-token",
        "x-upstream-credential",
        "x-client-secret",
        "x-db-password",
        "x-session-id",
        "x-cache-key",  # safe over pretty: any name with "key"
    ],
)
def test_sensitive_headers(name: str) -> None:
    assert sensitive_header(name)


@pytest.mark.parametrize("name", ["x-user", "user-agent", "content-type", "x-team", "accept", "x-request-id"])
def test_plain_headers(name: str) -> None:
    assert not sensitive_header(name)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "redis://[redacted]@127.0.0.1:6379/0"),
        ("redis://user:pw@h:6379/0?password=x&db=1", "redis://[redacted]@h:6379/0?password=[redacted]&db=[redacted]"),
        ("redis://u:p/a@ss@h:6379", "redis://[redacted]@h:6379"),  # unencoded '/' and '@' in the password
        ("http://h/x?tok#frag", "http://h/x?[redacted]#[redacted]"),
        ("http://127.0.0.1:9081", "http://127.0.0.1:9081"),
        ("redis://h:6379/0?", "redis://h:6379/0?"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_config_keeps_the_dump_shape_and_plain_values() -> None:
    config = MeshConfig.from_dict(
        {
            "clusters": {"reviews": {"endpoints": [ENDPOINT]}},
            "routes": [
                {
                    "match": {"headers": {"authorization": {"prefix": "Bearer "}, "x-user": {"present": True}}},
                    "cluster": "reviews",
                }
            ],
        }
    )
    dumped = config.model_dump(mode="json")
    redacted = redact_config(config)
    headers = redacted["routes"][0]["match"]["headers"]
    assert headers["authorization"] == {**dumped["routes"][0]["match"]["headers"]["authorization"], "prefix": REDACTED}
    assert headers["x-user"]["present"] is True
    redacted["routes"][0]["match"]["headers"] = dumped["routes"][0]["match"]["headers"]
    assert redacted == dumped  # nothing else changed


def _route(**route: Any) -> dict[str, Any]:
    return {"clusters": {"reviews": {"endpoints": [ENDPOINT]}}, "routes": [{"cluster": "reviews", **route}]}


@pytest.mark.parametrize(
    ("config", "secret"),
    [
        pytest.param(_route(headers={"request": {"set": {"authorization": "Bearer tok1\r\n"}}}), "tok1", id="crlf"),
        pytest.param(_route(match={"headers": {"x-api-key": {"regex": "tok2("}}}), "tok2", id="header-regex"),
        pytest.param(_route(match={"query": {"page": {"regex": "tok3("}}}), "tok3", id="query-regex"),
        pytest.param(
            {"clusters": {"reviews": {"endpoints": ["http://u:tok4@127.0.0.1:9081"]}}}, "tok4", id="endpoint-user"
        ),
        pytest.param(
            {
                "clusters": {
                    "reviews": {"endpoints": [ENDPOINT], "circuit_breaker": {"storage": "redis://:tok5@h:99999/0"}}
                }
            },
            "tok5",
            id="storage-port",
        ),
        pytest.param(
            {
                "clusters": {
                    "reviews": {
                        "endpoints": [ENDPOINT],
                        "rate_limit": {"rate": "1/second", "storage": "redis://h:6379/0?password=tok6&nope=1"},
                    }
                }
            },
            "tok6",
            id="storage-option",
        ),
        pytest.param(
            {"allow_empty": True, "sidecar": {"inbound": {"listen": ":15006", "app": "http://u:tok7@h:8000/x"}}},
            "tok7",
            id="app-url",
        ),
    ],
)
def test_error_messages_never_quote_a_credential(config: dict[str, Any], secret: str) -> None:
    """Errors are logged and shown in /stats: they name the field, quote what they may, hide credentials."""
    with pytest.raises(ConfigError) as raised:
        MeshConfig.from_dict(config)
    assert secret not in str(raised.value)
    assert REDACTED in str(raised.value)


def test_error_messages_still_quote_plain_values() -> None:
    with pytest.raises(ConfigError) as raised:
        MeshConfig.from_dict(_route(headers={"request": {"set": {"x-canary": "a\nb"}}}))
    assert "header value 'a\\nb' contains CR, LF or NUL" in str(raised.value)


class _Jwt(ConfigModel):
    """A field a later issue might add: one marker makes it a secret everywhere."""

    issuer: str
    key: Annotated[str, Secret.VALUE]
    keys: Annotated[list[str], Secret.VALUE] = Field(default_factory=list)
    jwks: Annotated[str, Secret.URL] | None = None


def test_a_new_field_is_a_secret_by_its_marker() -> None:
    jwt = _Jwt(issuer="mesh", key="k1", keys=["k2"], jwks="https://u:p@idp/keys?sig=s")
    assert redact_config(jwt) == {
        "issuer": "mesh",
        "key": REDACTED,
        "keys": [REDACTED],
        "jwks": "https://[redacted]@idp/keys?sig=[redacted]",
    }
    assert redactor_at(_Jwt, ("key",))("k1") == REDACTED
    assert redactor_at(_Jwt, ("jwks",)) is redact_url
    assert redactor_at(_Jwt, ("issuer",))("mesh") == "mesh"
