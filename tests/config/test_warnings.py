"""Settings that can never take effect: listed by the config, printed by validate, logged by Mesh; never fatal."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshlib import Mesh, MeshConfig
from meshlib._cli import main
from meshlib._config.warnings import config_warnings

A, B, C = "http://127.0.0.1:9081", "http://127.0.0.1:9082", "http://127.0.0.1:9083"
PER_TRY = "the whole request times out first, so it never applies"
HEDGE = "the request times out before a hedge is sent"


def warnings_of(data: dict[str, Any]) -> list[tuple[str, str]]:
    config = MeshConfig.from_dict(data)
    assert config.warnings() == config_warnings(config)
    return config.warnings()


def cluster(**settings: Any) -> dict[str, Any]:
    return {"endpoints": [A], **settings}


def one_cluster(**settings: Any) -> dict[str, Any]:
    return {"clusters": {"reviews": cluster(**settings)}}


def with_route(clusters: dict[str, Any], **route: Any) -> dict[str, Any]:
    return {"clusters": clusters, "routes": [{"match": {"host": "reviews"}, **route}]}


# ── timeouts ──


@pytest.mark.parametrize("per_try", ["2s", "3s"])
def test_a_cluster_per_try_timeout_not_shorter_than_its_timeout(per_try: str) -> None:
    data = one_cluster(timeout="2s", retry={"attempts": 3, "per_try_timeout": per_try})
    assert warnings_of(data) == [
        (
            "clusters.reviews.retry.per_try_timeout",
            f"per_try_timeout {per_try} is not shorter than timeout 2s: {PER_TRY}",
        )
    ]


@pytest.mark.parametrize("after", ["2s", "2500ms"])
def test_a_cluster_hedge_not_sooner_than_its_timeout(after: str) -> None:
    assert warnings_of(one_cluster(timeout="2s", hedge={"after": after})) == [
        ("clusters.reviews.hedge.after", f"hedge.after {after} is not shorter than timeout 2s: {HEDGE}")
    ]


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"timeout": "2s", "retry": {"per_try_timeout": "1999ms"}, "hedge": {"after": "1s"}}, id="shorter"),
        pytest.param({"retry": {"per_try_timeout": "5s"}, "hedge": {"after": "5s"}}, id="no-timeout"),
        pytest.param({"timeout": "1s", "retry": {"attempts": 2}}, id="no-per-try-timeout"),
    ],
)
def test_timeouts_that_can_apply_give_no_warning(settings: dict[str, Any]) -> None:
    assert warnings_of(one_cluster(**settings)) == []


def test_a_route_timeout_shorter_than_the_cluster_per_try_timeout_and_hedge() -> None:
    data = with_route(
        {"reviews": cluster(retry={"per_try_timeout": "1s"}, hedge={"after": "500ms"})},
        cluster="reviews",
        timeout="500ms",
    )
    assert warnings_of(data) == [
        (
            "routes[0].timeout",
            "timeout 500ms is not longer than retry.per_try_timeout 1s (of cluster 'reviews'):"
            " the whole request times out first, so the per-try timeout never applies",
        ),
        ("routes[0].timeout", f"timeout 500ms is not longer than hedge.after 500ms (of cluster 'reviews'): {HEDGE}"),
    ]


def test_a_route_retry_and_hedge_against_each_split_clusters_timeout() -> None:
    clusters = {"a": cluster(timeout="1s"), "b": {"endpoints": [B], "timeout": "10s"}, "c": {"endpoints": [C]}}
    data = with_route(
        clusters,
        split=[{"cluster": c, "weight": 1} for c in ("a", "b", "c")],
        retry={"per_try_timeout": "2s"},
        hedge={"after": "1s"},
    )
    assert warnings_of(data) == [
        (
            "routes[0].retry.per_try_timeout",
            f"per_try_timeout 2s is not shorter than timeout 1s (of cluster 'a'): {PER_TRY}",
        ),
        ("routes[0].hedge.after", f"hedge.after 1s is not shorter than timeout 1s (of cluster 'a'): {HEDGE}"),
    ]


def test_a_route_overriding_both_is_judged_on_its_own_values() -> None:
    clusters = {"reviews": cluster(timeout="1s", retry={"per_try_timeout": "5s"})}
    assert warnings_of(with_route(clusters, cluster="reviews", timeout="10s", retry={"per_try_timeout": "2s"})) == [
        ("clusters.reviews.retry.per_try_timeout", f"per_try_timeout 5s is not shorter than timeout 1s: {PER_TRY}")
    ]
    assert warnings_of(with_route(clusters, cluster="reviews", timeout="2s", retry={"per_try_timeout": "2s"}))[1:] == [
        ("routes[0].retry.per_try_timeout", f"per_try_timeout 2s is not shorter than timeout 2s: {PER_TRY}")
    ]


def test_a_route_that_only_inherits_is_warned_about_once_on_the_cluster() -> None:
    clusters = {"reviews": cluster(timeout="1s", retry={"per_try_timeout": "1s"})}
    assert warnings_of(with_route(clusters, cluster="reviews", fault={"abort": {"status": 503}})) == [
        ("clusters.reviews.retry.per_try_timeout", f"per_try_timeout 1s is not shorter than timeout 1s: {PER_TRY}")
    ]


# ── mirrors ──


def test_a_mirror_onto_an_undefined_cluster_is_a_warning_not_an_error() -> None:
    data = with_route({"reviews": cluster()}, cluster="reviews", mirror={"cluster": "reviews-shadow"})
    assert warnings_of(data) == [
        ("routes[0].mirror.cluster", "mirror cluster 'reviews-shadow' is not defined: nothing is mirrored")
    ]


@pytest.mark.parametrize(
    "route",
    [
        pytest.param({"cluster": "reviews"}, id="cluster"),
        pytest.param({"split": [{"cluster": "other", "weight": 9}, {"cluster": "reviews", "weight": 1}]}, id="split"),
    ],
)
def test_a_mirror_onto_the_routes_own_cluster(route: dict[str, Any]) -> None:
    clusters = {"reviews": cluster(), "other": {"endpoints": [B]}}
    assert warnings_of(with_route(clusters, **route, mirror={"cluster": "reviews"})) == [
        (
            "routes[0].mirror.cluster",
            "mirror cluster 'reviews' is a cluster this route sends to: its requests reach it twice",
        )
    ]


def test_a_mirror_onto_another_defined_cluster_has_no_warning() -> None:
    clusters = {"reviews": cluster(), "shadow": {"endpoints": [B]}}
    assert warnings_of(with_route(clusters, cluster="reviews", mirror={"cluster": "shadow"})) == []


# ── retry codes ──


def test_a_split_leg_whose_cluster_names_no_codes() -> None:
    clusters = {"a": cluster(retry={"retriable_status_codes": [409]}), "b": {"endpoints": [B]}}
    data = with_route(
        clusters,
        split=[{"cluster": "a", "weight": 1}, {"cluster": "b", "weight": 1}],
        retry={"retry_on": ["retriable-status-codes"]},
    )
    assert warnings_of(data) == [
        (
            "routes[0].retry.retry_on",
            "retry_on lists retriable-status-codes with no codes of its own, and cluster 'b''s retry names none:"
            " requests this route sends there retry no status code",
        )
    ]


# ── shadowed routes ──

EVERYTHING: dict[str, Any] = {}


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        pytest.param(EVERYTHING, EVERYTHING, id="both-match-everything"),
        pytest.param(EVERYTHING, {"host": "reviews", "path": "/x", "method": "GET"}, id="catch-all-first"),
        pytest.param({"host": "*"}, {"host": "reviews"}, id="star-host"),
        pytest.param({"host": "reviews"}, {"host": "REVIEWS", "path_prefix": "/api"}, id="same-host"),
        pytest.param({"host": "*.example.com"}, {"host": "a.example.com"}, id="wildcard-covers-host"),
        pytest.param({"host": "*.example.com"}, {"host": "*.a.example.com"}, id="wildcard-covers-wildcard"),
        pytest.param({"path_prefix": "/api"}, {"path_prefix": "/api/v1"}, id="shorter-prefix"),
        pytest.param({"path_prefix": "/api"}, {"path": "/api/v1/x"}, id="prefix-covers-path"),
        pytest.param({"path": "/x"}, {"path": "/x", "headers": {"x-user": "a"}}, id="same-path"),
        pytest.param({"path_regex": "/v[0-9]+/.*"}, {"path": "/v2/items"}, id="regex-covers-path"),
        pytest.param({"path_regex": "/v[0-9]+/.*"}, {"path_regex": "/v[0-9]+/.*"}, id="same-regex"),
        pytest.param({"method": ["GET", "HEAD"]}, {"method": "GET"}, id="method-superset"),
        pytest.param({"headers": {"x-user": {"present": True}}}, {"headers": {"x-user": "alice"}}, id="present"),
        pytest.param({"headers": {"x-user": {"prefix": "al"}}}, {"headers": {"x-user": "alice"}}, id="prefix-exact"),
        pytest.param(
            {"headers": {"x-user": {"prefix": "al"}}}, {"headers": {"x-user": {"prefix": "ali"}}}, id="prefix-prefix"
        ),
        pytest.param({"headers": {"x-user": {"regex": "a.*"}}}, {"headers": {"x-user": "alice"}}, id="regex-exact"),
        pytest.param({"headers": {"x-user": {"absent": True}}}, {"headers": {"x-user": {"absent": True}}}, id="absent"),
        pytest.param({"query": {"beta": "1"}}, {"query": {"beta": "1", "x": "2"}}, id="query"),
    ],
)
def test_a_route_shadowed_by_an_earlier_one(earlier: dict[str, Any], later: dict[str, Any]) -> None:
    data = {
        "clusters": {"reviews": cluster()},
        "routes": [
            {"match": earlier, "cluster": "reviews"},
            {"name": "later", "match": later, "direct_response": {"status": 204}},
        ],
    }
    assert warnings_of(data) == [("routes[1]", "never matches: every request it matches is taken first by routes[0]")]


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        pytest.param({"host": "reviews"}, EVERYTHING, id="later-matches-more-hosts"),
        pytest.param({"host": "reviews"}, {"host": "ratings"}, id="other-host"),
        pytest.param({"host": "reviews"}, {"host": "*"}, id="later-star"),
        pytest.param({"host": "*.example.com"}, {"host": "example.com"}, id="wildcard-not-the-bare-domain"),
        pytest.param({"host": "a.example.com"}, {"host": "*.example.com"}, id="host-not-wildcard"),
        pytest.param({"host": "*.a.example.com"}, {"host": "*.example.com"}, id="narrower-wildcard"),
        pytest.param({"path_prefix": "/api/v1"}, {"path_prefix": "/api"}, id="longer-prefix"),
        pytest.param({"path_prefix": "/api"}, {"path_regex": "/api/.*"}, id="prefix-vs-regex"),
        pytest.param({"path": "/api"}, {"path_prefix": "/api"}, id="path-vs-prefix"),
        pytest.param({"path_regex": "/v[0-9]+/.*"}, {"path": "/vx/items"}, id="regex-misses-path"),
        pytest.param({"path_regex": "/v[0-9]+/.*"}, {"path_prefix": "/v1/"}, id="regex-vs-prefix"),
        pytest.param({"method": "GET"}, {"method": ["GET", "POST"]}, id="method-subset"),
        pytest.param({"method": "GET"}, EVERYTHING, id="method-vs-any"),
        pytest.param({"headers": {"x-user": "alice"}}, EVERYTHING, id="header-vs-none"),
        pytest.param({"headers": {"x-user": "alice"}}, {"headers": {"x-user": "bob"}}, id="other-value"),
        pytest.param(
            {"headers": {"x-user": {"present": True}}}, {"headers": {"x-user": {"absent": True}}}, id="absent"
        ),
        pytest.param({"headers": {"x-user": {"absent": True}}}, {"headers": {"x-user": "a"}}, id="absent-vs-value"),
        pytest.param({"headers": {"x-user": {"prefix": "al"}}}, {"headers": {"x-user": "bob"}}, id="prefix-misses"),
        pytest.param({"headers": {"x-user": {"regex": "a.*"}}}, {"headers": {"x-user": {"prefix": "a"}}}, id="regex"),
        pytest.param({"headers": {"x-user": "a"}}, {"query": {"x-user": "a"}}, id="header-vs-query"),
        pytest.param({"query": {"beta": "1"}}, {"query": {"beta": {"present": True}}}, id="query-value-vs-present"),
    ],
)
def test_a_route_that_can_still_match_is_not_called_shadowed(earlier: dict[str, Any], later: dict[str, Any]) -> None:
    data = {
        "clusters": {"reviews": cluster()},
        "routes": [{"match": earlier, "cluster": "reviews"}, {"match": later, "direct_response": {"status": 204}}],
    }
    assert warnings_of(data) == []


def test_a_shadowed_route_names_the_first_route_that_takes_its_requests() -> None:
    data = {
        "clusters": {"reviews": cluster()},
        "routes": [
            {"match": {"host": "ratings"}, "cluster": "reviews"},
            {"name": "all-reviews", "match": {"host": "reviews"}, "cluster": "reviews"},
            {"match": EVERYTHING, "cluster": "reviews"},
            {"name": "admin", "match": {"host": "reviews", "path_prefix": "/admin"}, "cluster": "reviews"},
        ],
    }
    assert warnings_of(data) == [
        ("routes[3]", "never matches: every request it matches is taken first by routes[1] ('all-reviews')")
    ]


def test_the_issue_example_maintenance_route_is_shadowed_by_the_canary() -> None:
    """As written in issue 2, the maintenance route comes after a route taking every reviews request."""
    config = MeshConfig.from_file(Path(__file__).with_name("issue_example.yaml"))
    assert config.warnings() == [
        ("routes[2]", "never matches: every request it matches is taken first by routes[1] ('reviews-canary')")
    ]


# ── where warnings show ──

TWO_WARNINGS: dict[str, Any] = {
    "clusters": {"reviews": cluster(timeout="1s", hedge={"after": "1s"})},
    "routes": [{"match": {"host": "reviews"}, "cluster": "reviews", "mirror": {"cluster": "nowhere"}}],
}
TWO_LINES = [
    f"warning: clusters.reviews.hedge.after: hedge.after 1s is not shorter than timeout 1s: {HEDGE}",
    "warning: routes[0].mirror.cluster: mirror cluster 'nowhere' is not defined: nothing is mirrored",
]


def _write(tmp_path: Path, name: str, data: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def test_validate_prints_warnings_to_stderr_and_still_says_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", _write(tmp_path, "mesh.yaml", TWO_WARNINGS)]) == 0
    out, err = capsys.readouterr()
    assert out == "ok\n"
    assert err.splitlines() == TWO_LINES


def test_validate_names_the_file_of_each_warning_when_given_several(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    warned, clean = _write(tmp_path, "a.yaml", TWO_WARNINGS), _write(tmp_path, "b.yaml", one_cluster())
    assert main(["validate", warned, clean]) == 0
    out, err = capsys.readouterr()
    assert out == f"{warned}: ok\n{clean}: ok\n"
    assert err.splitlines() == [f"{warned}: {line}" for line in TWO_LINES]


def _logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int, str]]:
    """What was logged at WARNING or above (a reload may also log that it happened, at INFO)."""
    return [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_mesh_logs_each_warning_once_when_built_and_when_reloaded(caplog: pytest.LogCaptureFixture) -> None:
    expected = [("meshlib.config", logging.WARNING, line.removeprefix("warning: ")) for line in TWO_LINES]
    with caplog.at_level(logging.WARNING, logger="meshlib.config"), Mesh.from_dict(TWO_WARNINGS) as mesh:
        assert _logged(caplog) == expected
        caplog.clear()
        mesh.reload(one_cluster())
        assert _logged(caplog) == []
        mesh.reload(TWO_WARNINGS)
        assert _logged(caplog) == expected


def test_a_warning_free_config_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="meshlib.config"), Mesh.from_dict(one_cluster()):
        pass
    assert _logged(caplog) == []
