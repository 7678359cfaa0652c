"""One validation reports every error it can find: field errors, whole-model checks, references, unknown keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshlib import ConfigError, MeshConfig
from meshlib._cli import main
from meshlib._config.models import EMPTY_CONFIG

A, B = "http://127.0.0.1:9081", "http://127.0.0.1:9082"
CODES_MESSAGE = "retry_on lists retriable-status-codes: name at least one code"


def errors_of(data: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        MeshConfig.from_dict(data)
    return info.value.errors


def test_the_issue_rounds_come_in_one_run() -> None:
    """Issue 9: field errors, then ring_hash without hash_on, then duplicate endpoints took three runs."""
    errors = errors_of({"clusters": {"reviews": {"endpoints": [A, B, A], "lb": "ring_hash", "connect_timeout": 5}}})
    assert errors == [
        ("clusters.reviews.connect_timeout", "expected a duration string such as '250ms' or '2s', got 5"),
        ("clusters.reviews.hash_on", "lb 'ring_hash' needs hash_on: {header: NAME} or {cookie: NAME}"),
        ("clusters.reviews.endpoints[2]", f"duplicate endpoint {A!r} (also endpoints[0])"),
    ]


def test_one_run_reports_an_error_of_every_kind() -> None:
    data = {
        "servce": "frontend",  # unknown key, with a suggestion
        "clusters": {
            "reviews": {
                # a bad endpoint does not hide the duplicate among the good ones
                "endpoints": [A, "ftp://127.0.0.1:9083", "http://127.0.0.1:9081/"],
                "lb": "ring_hash",  # without hash_on
                "timeout": "soon",  # field error
                "retry": {
                    "attempts": 0,
                    "retry_on": ["retriable-status-codes"],
                    "backoff": {"base": "1s", "max": "1ms"},
                },
                "mirror": {"cluster": "ratings"},  # route-only key on a cluster
            },
            "ratings": {"endpoints": [B], "hash_on": {"header": "x-user", "cookie": "session"}},
        },
        "routes": [
            {
                "name": "r",
                "match": {"host": "reviews", "path": "/a", "path_prefix": "/a", "headers": {"x-user": {}}},
                "cluster": "reviews",
                "split": [{"cluster": "ratings", "weight": 0}],
                "retires": {"attempts": 2},
            },
            {"name": "r", "cluster": "nowhere", "circuit_breaker": {}},
            {"direct_response": {"status": 503}, "retry": {"attempts": 2}, "timeout": "1s", "rewrite": {}},
            {"cluster": "ratings", "retry": {"retry_on": ["retriable-status-codes"]}},
        ],
    }
    assert errors_of(data) == [
        # pydantic's field errors, and the checks of models whose own fields are all valid
        ("clusters.reviews.endpoints[1].url", "URL 'ftp://127.0.0.1:9083' must start with http:// or https://"),
        (
            "clusters.reviews.timeout",
            "invalid duration 'soon': use a number and a unit (us, ms, s, m, h), e.g. '250ms'",
        ),
        ("clusters.reviews.retry.attempts", "Input should be greater than or equal to 1"),
        ("clusters.reviews.retry.backoff.max", "must be at least backoff.base"),
        ("clusters.reviews.mirror", "mirror is set per route, not per cluster: put it under a route in routes"),
        ("clusters.ratings.hash_on", "set exactly one of 'header' or 'cookie'"),
        ("routes[0].match.headers.x-user", "set exactly one of exact, prefix, regex, present: true, absent: true"),
        ("routes[0].split[0].weight", "Input should be greater than or equal to 1"),
        ("routes[0].retires", "unknown key 'retires' (did you mean 'retry'?)"),
        ("routes[1].circuit_breaker", "circuit_breaker is set per cluster, not per route: put it under clusters.NAME"),
        ("routes[2].rewrite", "set path_prefix, host, or both"),
        ("servce", "unknown key 'servce' (did you mean 'service'?)"),
        # the checks of models with a bad field, which pydantic skips: run on the raw input
        ("clusters.reviews.hash_on", "lb 'ring_hash' needs hash_on: {header: NAME} or {cookie: NAME}"),
        # a bad endpoint does not hide a duplicate among the good ones (compared once normalised)
        ("clusters.reviews.endpoints[2]", f"duplicate endpoint {A!r} (also endpoints[0])"),
        ("clusters.ratings.hash_on", "hash_on applies only to lb 'ring_hash', not 'round_robin'"),
        ("routes[0]", "set exactly one of cluster, split, direct_response (got cluster, split)"),
        ("routes[0].match", "set at most one of path, path_prefix, path_regex (got path, path_prefix)"),
        ("routes[2].retry", "retry has no effect on a direct_response route"),
        ("routes[2].timeout", "timeout has no effect on a direct_response route"),
        ("routes[2].rewrite", "rewrite has no effect on a direct_response route"),
        # references and retry codes, also on the raw input
        ("routes[1].name", "duplicate route name 'r' (also routes[0])"),
        ("routes[1].cluster", "unknown cluster 'nowhere'"),
        ("clusters.reviews.retry.retriable_status_codes", CODES_MESSAGE),
        ("routes[3].retry.retriable_status_codes", route_codes_message("cluster 'ratings'")),
    ]


def route_codes_message(clusters: str) -> str:
    return f"retry_on lists retriable-status-codes, but neither this retry nor the retry of {clusters} names a code"


def test_model_validate_and_keyword_arguments_report_the_same_errors() -> None:
    data: dict[str, Any] = {"clusters": {"reviews": {"endpoints": [A, A], "lb": "ring_hash", "timeout": 5}}}
    expected = errors_of(data)
    assert len(expected) == 3
    with pytest.raises(ConfigError) as info:
        MeshConfig.model_validate(data)
    assert info.value.errors == expected
    with pytest.raises(ConfigError) as info:
        MeshConfig(**data)
    assert info.value.errors == expected


def test_a_check_reading_a_bad_field_is_skipped() -> None:
    """lb is invalid, so whether hash_on fits it is unknowable: only the lb error is reported."""
    assert errors_of({"clusters": {"reviews": {"endpoints": [A], "lb": "fastest", "hash_on": {"header": "x"}}}}) == [
        ("clusters.reviews.lb", "Input should be 'round_robin', 'random', 'least_request' or 'ring_hash'")
    ]


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        pytest.param({"clusterz": {}}, "clusterz", "unknown key 'clusterz' (did you mean 'clusters'?)", id="top"),
        pytest.param(
            {"clusters": {"reviews": {"endpoint": [A]}}},
            "clusters.reviews.endpoint",
            "unknown key 'endpoint' (did you mean 'endpoints'?)",
            id="cluster",
        ),
        pytest.param(
            {"clusters": {"reviews": {"endpoints": [{"url": A, "wieght": 2}]}}},
            "clusters.reviews.endpoints[0].wieght",
            "unknown key 'wieght' (did you mean 'weight'?)",
            id="endpoint",
        ),
        pytest.param(
            {"clusters": {"reviews": {"endpoints": [A], "retry": {"attempt": 3}}}},
            "clusters.reviews.retry.attempt",
            "unknown key 'attempt' (did you mean 'attempts'?)",
            id="retry",
        ),
        pytest.param(
            {"routes": [{"direct_response": {"status": 200}, "matches": {}}]},
            "routes[0].matches",
            "unknown key 'matches' (did you mean 'match'?)",
            id="route",
        ),
        pytest.param(
            {"routes": [{"direct_response": {"status": 200}, "match": {"headers": {"x": {"prefx": "a"}}}}]},
            "routes[0].match.headers.x.prefx",
            "unknown key 'prefx' (did you mean 'prefix'?)",
            id="string-match",
        ),
        pytest.param(
            {"allow_empty": True, "sidecar": {"outbund": {"listen": ":1"}}},
            "sidecar.outbund",
            "unknown key 'outbund' (did you mean 'outbound'?)",
            id="sidecar",
        ),
        pytest.param({"allow_empty": True, "bogus": 1}, "bogus", "unknown key 'bogus'", id="nothing-close"),
    ],
)
def test_an_unknown_key_suggests_the_closest_field_there(data: Any, path: str, message: str) -> None:
    """Only what the model at that place has is suggested; one error per typo (the misspelt field counts as set)."""
    assert errors_of(data) == [(path, message)]


@pytest.mark.parametrize(
    ("data", "errors"),
    [
        pytest.param(
            {"clusters": {"r": {"endpoints": [A]}}, "routes": [{"clustr": "r"}]},
            [("routes[0].clustr", "unknown key 'clustr' (did you mean 'cluster'?)")],
            id="route-action",
        ),
        pytest.param(
            {"clusters": {"r": {"endpoints": [A], "lb": "ring_hash", "hash_onn": {"header": "x"}}}},
            [("clusters.r.hash_onn", "unknown key 'hash_onn' (did you mean 'hash_on'?)")],
            id="ring-hash",
        ),
        pytest.param(
            {"clusters": {"r": {"endpoints": [A]}}, "routes": [{"cluster": "r", "fault": {"dleay": {}}}]},
            [("routes[0].fault.dleay", "unknown key 'dleay' (did you mean 'delay'?)")],
            id="fault",
        ),
        pytest.param(
            {"clusters": {"r": {"endpoints": [A]}}, "routes": [{"cluster": "r", "fault": {"wait": {}}}]},
            [("routes[0].fault.wait", "unknown key 'wait'"), ("routes[0].fault", "set delay, abort, or both")],
            id="fault-nothing-close",
        ),
    ],
)
def test_a_misspelt_field_counts_as_given(data: Any, errors: list[tuple[str, str]]) -> None:
    """No second error saying the field the typo meant is missing; with no close field, both are reported."""
    assert errors_of(data) == errors


def test_a_route_retry_takes_the_codes_of_its_cluster() -> None:
    config = MeshConfig.from_dict(
        {
            "clusters": {"r": {"endpoints": [A], "retry": {"retriable_status_codes": [409]}}},
            "routes": [{"cluster": "r", "retry": {"attempts": 2, "retry_on": ["retriable-status-codes"]}}],
        }
    )
    retry = config.routes[0].retry
    assert retry is not None
    assert retry.retriable_status_codes == []  # the model keeps what was written; compile.py inherits
    assert retry.inheriting_codes(config.clusters["r"].retry).retriable_status_codes == [409]
    assert retry.inheriting_codes(None) is retry


@pytest.mark.parametrize(
    ("clusters", "route", "errors"),
    [
        pytest.param(
            {"a": {"endpoints": [A]}},
            {"cluster": "a"},
            [("routes[0].retry.retriable_status_codes", route_codes_message("cluster 'a'"))],
            id="cluster-without-retry",
        ),
        pytest.param(
            {"a": {"endpoints": [A], "retry": {"attempts": 3}}, "b": {"endpoints": [B]}},
            {"split": [{"cluster": "a", "weight": 1}, {"cluster": "b", "weight": 1}]},
            [("routes[0].retry.retriable_status_codes", route_codes_message("clusters 'a' and 'b'"))],
            id="split-without-codes",
        ),
        pytest.param(
            {"a": {"endpoints": [A], "retry": {"retriable_status_codes": [409]}}, "b": {"endpoints": [B]}},
            {"split": [{"cluster": "a", "weight": 1}, {"cluster": "b", "weight": 1}]},
            [],
            id="split-one-leg-with-codes",
        ),
        pytest.param(
            {"a": {"endpoints": [A]}},
            {"cluster": "gone"},
            [("routes[0].cluster", "unknown cluster 'gone'")],
            id="unknown-cluster-only",
        ),
        pytest.param(
            {"a": {"endpoints": [A], "retry": {"retry_on": ["retriable-status-codes"]}}},
            {"cluster": "a"},
            [
                ("clusters.a.retry.retriable_status_codes", CODES_MESSAGE),
                ("routes[0].retry.retriable_status_codes", route_codes_message("cluster 'a'")),
            ],
            id="cluster-needs-codes-too",
        ),
    ],
)
def test_retriable_status_codes_need_a_code_here_or_in_the_cluster(
    clusters: dict[str, Any], route: dict[str, Any], errors: list[tuple[str, str]]
) -> None:
    data = {"clusters": clusters, "routes": [{**route, "retry": {"retry_on": ["retriable-status-codes"]}}]}
    if errors:
        assert errors_of(data) == errors
    else:
        MeshConfig.from_dict(data)


def test_a_cluster_retry_needs_its_own_codes() -> None:
    data = {"clusters": {"a": {"endpoints": [A], "retry": {"retry_on": ["5xx", "retriable-status-codes"]}}}}
    assert errors_of(data) == [("clusters.a.retry.retriable_status_codes", CODES_MESSAGE)]


def test_validate_prints_every_error_in_one_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(
        f"clusters:\n  reviews:\n    endpoints: [{A}, {B}, {A}]\n    lb: ring_hash\n    connect_timeout: 5\n",
        encoding="utf-8",
    )
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"invalid mesh config in {path}:",
        "  clusters.reviews.connect_timeout: expected a duration string such as '250ms' or '2s', got 5",
        "  clusters.reviews.hash_on: lb 'ring_hash' needs hash_on: {header: NAME} or {cookie: NAME}",
        f"  clusters.reviews.endpoints[2]: duplicate endpoint {A!r} (also endpoints[0])",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "the config file is empty"), ("service: frontend\n", EMPTY_CONFIG)],
    ids=["empty-file", "nothing-to-route"],
)
def test_validate_refuses_an_empty_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr() == ("", f"invalid mesh config in {path}:\n  {message}\n")
