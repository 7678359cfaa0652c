"""The gRPC xDS bootstrap: read as gRPC reads it, and every malformed one refused with its JSON path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshlib import ConfigError
from meshlib._xds.bootstrap import ENV_CONFIG, ENV_FILE, load_bootstrap, parse_bootstrap

GOOD: dict[str, Any] = {
    "xds_servers": [
        {
            "server_uri": "127.0.0.1:15010",
            "channel_creds": [{"type": "google_default"}, {"type": "insecure"}],
            "server_features": ["xds_v3", "ignore_resource_deletion"],
        }
    ],
    "node": {
        "id": "sidecar~10.0.0.1~frontend.default~default.svc.cluster.local",
        "cluster": "frontend",
        "locality": {"region": "eu", "zone": "eu-1a"},
        "metadata": {"GENERATOR": "grpc", "ISTIO_VERSION": "1.24.0"},
    },
    "certificate_providers": {
        "default": {
            "plugin_name": "file_watcher",
            "config": {"certificate_file": "cert.pem", "private_key_file": "key.pem", "ca_certificate_file": "ca.pem"},
        }
    },
}


def test_a_good_bootstrap_gives_the_first_usable_credentials_the_node_and_the_providers() -> None:
    bootstrap = parse_bootstrap(json.dumps(GOOD), "bootstrap.json")
    assert bootstrap.server.server_uri == "127.0.0.1:15010"
    assert bootstrap.server.creds.type == "insecure"  # google_default is skipped, as gRPC skips what it can't use
    assert bootstrap.server.ignore_resource_deletion
    assert bootstrap.node["metadata"]["GENERATOR"] == "grpc"
    assert bootstrap.certificate_providers["default"]["config"]["certificate_file"] == "cert.pem"


def test_tls_channel_credentials_take_grpcs_file_names() -> None:
    data = {
        "xds_servers": [
            {
                "server_uri": "istiod:15012",
                "channel_creds": [
                    {
                        "type": "tls",
                        "config": {
                            "ca_certificate_file": "ca.pem",
                            "certificate_file": "c.pem",
                            "private_key_file": "k.pem",
                        },
                    }
                ],
            }
        ]
    }
    creds = parse_bootstrap(json.dumps(data), "b.json").server.creds
    assert (creds.type, creds.ca_certificate_file, creds.certificate_file, creds.private_key_file) == (
        "tls",
        "ca.pem",
        "c.pem",
        "k.pem",
    )


def _server(**entry: Any) -> dict[str, Any]:
    return {"xds_servers": [{"server_uri": "127.0.0.1:1", "channel_creds": [{"type": "insecure"}], **entry}]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "b.json: not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        ("[]", "b.json: must be a JSON object"),
        ("{}", "b.json: xds_servers: must be a non-empty list"),
        (json.dumps({"xds_servers": []}), "b.json: xds_servers: must be a non-empty list"),
        (json.dumps({"xds_servers": ["x"]}), "b.json: xds_servers[0]: must be an object"),
        (json.dumps(_server(server_uri="")), "b.json: xds_servers[0].server_uri: must be a non-empty string"),
        (json.dumps(_server(channel_creds=[])), "b.json: xds_servers[0].channel_creds: must be a non-empty list"),
        (
            json.dumps(_server(channel_creds=[{"type": "google_default"}])),
            "b.json: xds_servers[0].channel_creds: none of ['google_default'] is supported (insecure, tls)",
        ),
        (
            json.dumps(_server(channel_creds=[{"config": {}}])),
            "b.json: xds_servers[0].channel_creds[0]: must be an object with a 'type'",
        ),
        (
            json.dumps(_server(channel_creds=[{"type": "tls", "config": {"certificate_file": "c.pem"}}])),
            "b.json: xds_servers[0].channel_creds[0].config: certificate_file and private_key_file go together",
        ),
        (
            json.dumps(_server(server_features="xds_v3")),
            "b.json: xds_servers[0].server_features: must be a list of strings",
        ),
        (json.dumps({**_server(), "node": []}), "b.json: node: must be an object"),
        (json.dumps({**_server(), "node": {"id": 7}}), "b.json: node.id: must be a string"),
        (json.dumps({**_server(), "node": {"metadata": "x"}}), "b.json: node.metadata: must be an object"),
        (
            json.dumps({**_server(), "certificate_providers": {"p": {"plugin_name": "spiffe"}}}),
            "b.json: certificate_providers.p.plugin_name: plugin 'spiffe' is not supported (only file_watcher)",
        ),
    ],
)
def test_a_malformed_bootstrap_is_refused_at_its_json_path(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(text, "b.json")
    assert info.value.errors == [("xds.bootstrap", message)]


def test_the_file_named_in_the_config_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(GOOD))
    monkeypatch.setenv(ENV_CONFIG, json.dumps(_server()))
    assert load_bootstrap(str(path)).server.server_uri == "127.0.0.1:15010"


def test_the_environment_names_a_file_or_holds_the_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(GOOD))
    monkeypatch.delenv(ENV_FILE, raising=False)
    monkeypatch.setenv(ENV_CONFIG, json.dumps(_server()))
    assert load_bootstrap(None).server.server_uri == "127.0.0.1:1"
    monkeypatch.setenv(ENV_FILE, str(path))  # gRPC reads GRPC_XDS_BOOTSTRAP first
    bootstrap = load_bootstrap(None)
    assert bootstrap.server.server_uri == "127.0.0.1:15010"
    assert bootstrap.source == f"{path} (from {ENV_FILE})"


def test_no_bootstrap_anywhere_says_where_one_may_come_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_FILE, raising=False)
    monkeypatch.delenv(ENV_CONFIG, raising=False)
    with pytest.raises(ConfigError) as info:
        load_bootstrap(None)
    assert info.value.errors == [
        ("xds.bootstrap", f"no bootstrap: set xds.bootstrap, or {ENV_FILE} (a file) or {ENV_CONFIG} (the JSON)")
    ]


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_bootstrap(str(tmp_path / "nope.json"))
    assert info.value.errors == [
        ("xds.bootstrap", f"cannot read the bootstrap file {tmp_path / 'nope.json'}: No such file or directory")
    ]
