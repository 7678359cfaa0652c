"""Loading configs from YAML and JSON files and dicts: good files load whole, bad ones name the file and the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshlib import ConfigError, MeshConfig
from meshlib._config.load import config_from_dict, load_file
from meshlib._config.models import EMPTY_CONFIG, ClusterConfig, RouteConfig

EXAMPLE = Path(__file__).with_name("issue_example.yaml")
GOOD = {"clusters": {"ratings": {"endpoints": ["http://127.0.0.1:9090"]}}}


def _example_dict() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    return data


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _only_error(exc: ConfigError) -> str:
    assert len(exc.errors) == 1, exc.errors
    path, message = exc.errors[0]
    assert path == ""
    return message


def test_the_issue_example_yaml_loads_with_every_field(tmp_path: Path) -> None:
    config = load_file(_write(tmp_path, "mesh.yaml", EXAMPLE.read_text(encoding="utf-8")))
    assert config.service == "frontend"
    assert config.outbound_policy == "allow_any"
    assert list(config.clusters) == ["reviews-v1", "reviews-v2", "ratings"]
    v1, v2 = config.clusters["reviews-v1"], config.clusters["reviews-v2"]
    assert [(e.url, e.weight) for e in v1.endpoints] == [("http://127.0.0.1:9081", 1), ("http://127.0.0.1:9082", 1)]
    assert [(e.url, e.weight) for e in v2.endpoints] == [("http://127.0.0.1:9083", 3), ("http://127.0.0.1:9084", 1)]
    assert v2.lb == "ring_hash"
    assert v2.hash_on is not None
    assert v2.hash_on.header == "x-user"
    android, canary, maintenance = config.routes
    assert android.name == "reviews-android"
    assert android.match.host == "reviews"
    assert android.match.path_prefix == "/api/"
    assert android.match.method == ["GET", "HEAD"]
    assert android.match.headers["user-agent"].regex == ".*Android.*"
    assert android.match.query["beta"].exact == "1"
    assert android.cluster == "reviews-v2"
    assert canary.split is not None
    assert [(leg.cluster, leg.weight) for leg in canary.split] == [("reviews-v1", 95), ("reviews-v2", 5)]
    assert canary.rewrite is not None
    assert (canary.rewrite.path_prefix, canary.rewrite.host) == ("/", "reviews.internal")
    assert canary.headers is not None
    assert canary.headers.request.set == {"x-canary": "true"}
    assert canary.headers.request.remove == ["x-debug"]
    assert canary.headers.response.set == {"x-served-by": "mesh"}
    assert maintenance.direct_response is not None
    assert (maintenance.direct_response.status, maintenance.direct_response.body) == (503, "down for maintenance")


@pytest.mark.parametrize("name", ["mesh.json", "MESH.JSON"])
def test_the_same_config_as_json_loads_to_the_same_model(tmp_path: Path, name: str) -> None:
    from_yaml = MeshConfig.from_file(EXAMPLE)
    from_json = MeshConfig.from_file(_write(tmp_path, name, json.dumps(_example_dict(), indent=2)))
    assert from_json == from_yaml


def test_yml_suffix_and_json_text_in_a_yaml_file_load(tmp_path: Path) -> None:
    assert load_file(
        _write(tmp_path, "mesh.yml", "clusters:\n  ratings:\n    endpoints: [http://127.0.0.1:9090]\n")
    ) == (load_file(_write(tmp_path, "mesh.yaml", json.dumps(GOOD))))


def test_a_loaded_config_dumps_and_reloads_unchanged() -> None:
    config = MeshConfig.from_file(EXAMPLE)
    assert MeshConfig.model_validate(config.model_dump()) == config
    assert MeshConfig.model_validate_json(config.model_dump_json()) == config


def test_yaml_merge_keys_may_be_overridden_without_a_duplicate_key_error(tmp_path: Path) -> None:
    text = """
clusters:
  a: &base {endpoints: ["http://127.0.0.1:9081"], lb: random}
  b:
    <<: *base
    lb: least_request
"""
    config = load_file(_write(tmp_path, "mesh.yaml", text))
    assert config.clusters["b"].lb == "least_request"
    assert config.clusters["b"].endpoints == config.clusters["a"].endpoints


@pytest.mark.parametrize(
    ("text", "where"),
    [
        pytest.param("service: a\nservice: b\n", "duplicate key 'service' at line 2, column 1", id="top-level"),
        pytest.param(
            "clusters:\n  a:\n    endpoints: [http://127.0.0.1:9081]\n    lb: random\n    lb: ring_hash\n",
            "duplicate key 'lb' at line 5, column 5",
            id="nested",
        ),
        pytest.param(
            "clusters:\n  a: {endpoints: [http://127.0.0.1:9081]}\n  a: {endpoints: [http://127.0.0.1:9082]}\n",
            "duplicate key 'a' at line 3, column 3",
            id="cluster-name",
        ),
        pytest.param(
            "routes: [{cluster: a, cluster: b}]\n", "duplicate key 'cluster' at line 1, column 23", id="flow-mapping"
        ),
        pytest.param("x:\n  <<: {a: 1}\n  <<: {a: 2}\n", "duplicate key '<<' at line 3, column 3", id="two-merge-keys"),
    ],
)
def test_duplicate_yaml_keys_are_refused_with_their_line(tmp_path: Path, text: str, where: str) -> None:
    path = _write(tmp_path, "mesh.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert _only_error(info.value) == where
    assert info.value.source == str(path)


def test_duplicate_json_keys_are_refused_with_their_line(tmp_path: Path) -> None:
    text = (
        '{\n  "clusters": {\n    "a": {"endpoints": ["http://127.0.0.1:9081"]},\n    "a": {"endpoints": []}\n  }\n}\n'
    )
    path = _write(tmp_path, "mesh.json", text)
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert _only_error(info.value) == "duplicate key 'a' at line 4, column 5"
    assert str(info.value).startswith(f"invalid mesh config in {path}:")


def test_a_yaml_mapping_key_that_is_a_list_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_file(_write(tmp_path, "mesh.yaml", "? [a, b]\n: 1\n"))
    assert _only_error(info.value) == "a mapping key cannot be a list or a mapping, at line 1, column 3"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        pytest.param(
            "mesh.yaml",
            "clusters: [\n",
            "invalid YAML at line 2, column 1: expected the node content, but found '<stream end>'",
            id="yaml-unclosed",
        ),
        pytest.param(
            "mesh.yaml",
            "service: a: b\n",
            "invalid YAML at line 1, column 11: mapping values are not allowed here",
            id="yaml-colon",
        ),
        pytest.param(
            "mesh.yaml",
            "clusters:\n\t- a\n",
            "invalid YAML at line 2, column 1: found character '\\t' that cannot start any token",
            id="yaml-tab",
        ),
        pytest.param(
            "mesh.yaml",
            "service: *x\n",
            "invalid YAML at line 1, column 10: found undefined alias 'x'",
            id="yaml-alias",
        ),
        pytest.param(
            "mesh.yaml",
            "!!python/object/apply:os.system [echo]\n",
            "invalid YAML at line 1, column 1: could not determine a constructor for the tag",
            id="yaml-python-tag",
        ),
        pytest.param(
            "mesh.json", '{"service": }', "invalid JSON at line 1, column 13: Expecting value", id="json-missing-value"
        ),
        pytest.param(
            "mesh.json",
            '{\n  "service": "a",\n}\n',
            "invalid JSON at line 3, column 1: ",  # the wording after the position differs between Pythons
            id="json-trailing-comma",
        ),
        pytest.param(
            "mesh.json", "service: a\n", "invalid JSON at line 1, column 1: Expecting value", id="yaml-in-json-file"
        ),
        pytest.param("mesh.json", "", "invalid JSON at line 1, column 1: Expecting value", id="json-empty"),
    ],
)
def test_invalid_yaml_or_json_says_where(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert _only_error(info.value).startswith(message)
    assert info.value.source == str(path)
    assert str(info.value).splitlines()[0] == f"invalid mesh config in {path}:"


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        pytest.param("mesh.yaml", "- clusters\n- routes\n", "list", id="yaml-list"),
        pytest.param("mesh.yaml", "frontend\n", "string", id="yaml-string"),
        pytest.param("mesh.yaml", "42\n", "integer", id="yaml-int"),
        pytest.param("mesh.json", '[{"service": "a"}]', "list", id="json-list"),
        pytest.param("mesh.json", '"frontend"', "string", id="json-string"),
        pytest.param("mesh.json", "true", "boolean", id="json-bool"),
    ],
)
def test_a_top_level_that_is_not_a_mapping_is_refused(tmp_path: Path, name: str, text: str, kind: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_file(_write(tmp_path, name, text))
    assert _only_error(info.value) == f"the config must be a mapping, got {kind}"


@pytest.mark.parametrize("text", ["", "\n\n", "  \n", "# nothing here yet\n", "---\n", "--- # later\n"])
def test_an_empty_file_is_refused_as_empty(tmp_path: Path, text: str) -> None:
    """A truncated or not yet written file must never load as a mesh that routes nothing."""
    path = _write(tmp_path, "mesh.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert info.value.errors == [("", "the config file is empty")]
    assert str(info.value) == f"invalid mesh config in {path}:\n  the config file is empty"


@pytest.mark.parametrize(("name", "text"), [("mesh.yaml", "null\n"), ("mesh.yaml", "~\n"), ("mesh.json", "null")])
def test_an_explicit_null_document_is_not_a_mapping(tmp_path: Path, name: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_file(_write(tmp_path, name, text))
    assert _only_error(info.value) == "the config must be a mapping, got null"


@pytest.mark.parametrize(
    "text",
    [
        "service: frontend\n",
        "clusters: {}\nroutes: []\n",
        "outbound_policy: registry_only\n",
        "sidecar:\n  outbound: {listen: '127.0.0.1:15001'}\n",
        "allow_empty: false\n",
    ],
)
def test_a_file_with_nothing_to_route_is_refused_naming_allow_empty(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, "mesh.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert info.value.errors == [("", EMPTY_CONFIG)]
    assert "set allow_empty: true" in str(info.value)
    assert info.value.source == str(path)


def test_allow_empty_true_loads_an_empty_config(tmp_path: Path) -> None:
    config = load_file(_write(tmp_path, "mesh.yaml", "allow_empty: true\noutbound_policy: registry_only\n"))
    assert (config.allow_empty, config.clusters, config.routes) == (True, {}, [])
    assert config.outbound_policy == "registry_only"


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: MeshConfig(), id="MeshConfig()"),
        pytest.param(lambda: MeshConfig(service="a"), id="MeshConfig(service)"),
        pytest.param(lambda: MeshConfig.from_dict({}), id="from_dict"),
        pytest.param(lambda: MeshConfig.model_validate({"sidecar": {}}), id="model_validate"),
        pytest.param(lambda: MeshConfig.model_validate_json('{"routes": []}'), id="model_validate_json"),
        pytest.param(lambda: config_from_dict({"clusters": {}}), id="config_from_dict"),
    ],
)
def test_every_way_of_making_a_config_refuses_an_empty_one(build: Any) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert info.value.errors == [("", EMPTY_CONFIG)]


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_allow_empty_is_a_strict_boolean(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        MeshConfig.from_dict({"allow_empty": value})
    assert info.value.errors[0] == ("allow_empty", "Input should be a valid boolean")


def test_an_empty_config_is_reported_with_the_other_errors() -> None:
    with pytest.raises(ConfigError) as info:
        MeshConfig.from_dict({"servce": "frontend"})
    assert info.value.errors == [("servce", "unknown key 'servce' (did you mean 'service'?)"), ("", EMPTY_CONFIG)]


def test_a_missing_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert _only_error(info.value) == "cannot read config file: No such file or directory"
    assert str(info.value) == f"invalid mesh config in {path}:\n  cannot read config file: No such file or directory"


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_file(tmp_path)
    assert _only_error(info.value) == "cannot read config file: Is a directory"


def test_an_unreadable_file_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated: the suite may run as root, which reads files whatever their mode."""
    path = _write(tmp_path, "mesh.yaml", "service: a\n")

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert _only_error(info.value) == "cannot read config file: Permission denied"


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "mesh.yaml", "service: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert _only_error(info.value) == "config file is not UTF-8: invalid continuation byte at byte 12"
    assert info.value.source == str(path)


@pytest.mark.parametrize("name", ["mesh.yaml", "mesh.json"])
def test_a_utf8_byte_order_mark_is_ignored(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name, b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    assert list(load_file(path).clusters) == ["ratings"]


def test_validation_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "mesh.yaml", "clusters:\n  ratings:\n    endpoints: []\n")
    with pytest.raises(ConfigError) as info:
        MeshConfig.from_file(path)
    assert info.value.source == str(path)
    assert info.value.errors == [("clusters.ratings.endpoints", "must not be empty")]
    assert str(info.value) == f"invalid mesh config in {path}:\n  clusters.ratings.endpoints: must not be empty"


def test_from_dict_names_the_source_it_is_given() -> None:
    with pytest.raises(ConfigError) as info:
        MeshConfig.from_dict({**GOOD, "servce": "a"}, source="configmap/mesh")
    assert str(info.value) == (
        "invalid mesh config in configmap/mesh:\n  servce: unknown key 'servce' (did you mean 'service'?)"
    )


def test_meshconfig_with_bad_keyword_arguments_raises_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        MeshConfig(servce="frontend", clusters={"a": {"endpoints": []}})
    assert sorted(info.value.errors) == [
        ("clusters.a.endpoints", "must not be empty"),
        ("servce", "unknown key 'servce' (did you mean 'service'?)"),
    ]
    assert info.value.source is None


def test_meshconfig_built_from_models_checks_references_and_fields_together() -> None:
    ratings = ClusterConfig.model_validate({"endpoints": ["http://127.0.0.1:9090"]})
    with pytest.raises(ConfigError) as info:
        MeshConfig(
            outbound_policy="deny",
            clusters={"ratings": ratings},
            routes=[RouteConfig(cluster="reviews"), RouteConfig(cluster="ratings")],
        )
    assert info.value.errors == [
        ("outbound_policy", "Input should be 'allow_any' or 'registry_only'"),
        ("routes[0].cluster", "unknown cluster 'reviews'"),
    ]


@pytest.mark.parametrize(
    ("data", "errors"),
    [
        pytest.param({"routes": [{"cluster": "x"}]}, [("routes[0].cluster", "unknown cluster 'x'")], id="dict"),
        pytest.param([GOOD], [("", "the config must be a mapping, got list")], id="list"),
        pytest.param(None, [("", "the config must be a mapping, got null")], id="none"),
    ],
)
def test_model_validate_raises_config_error_too(data: Any, errors: list[tuple[str, str]]) -> None:
    with pytest.raises(ConfigError) as info:
        MeshConfig.model_validate(data)
    assert info.value.errors == errors


def test_model_validate_json_raises_config_error_for_a_bad_config() -> None:
    with pytest.raises(ConfigError) as info:
        MeshConfig.model_validate_json('{"clusters": {"a": {"endpoints": ["ftp://x"]}}}')
    assert info.value.errors == [("clusters.a.endpoints[0].url", "URL 'ftp://x' must start with http:// or https://")]
