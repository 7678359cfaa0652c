"""Merging the workers' /stats documents into one (``--workers N``)."""

from __future__ import annotations

from typing import Any

import pytest

from meshlib._sidecar.aggregate import merge_stats


def doc(version: int, **clusters: dict[str, Any]) -> dict[str, Any]:
    return {"version": version, "clusters": clusters, "listeners": {}}


def endpoint(requests: int = 0, *, healthy: bool = True, ejected: bool = False, times: int = 0) -> dict[str, Any]:
    return {"in_flight": 0, "requests": requests, "healthy": healthy, "ejected": ejected, "times_ejected": times}


def test_numbers_add_up_and_flags_follow_their_rules() -> None:
    a = doc(3, c={"endpoints": {"u": endpoint(2, times=1)}, "counters": {"retries": 1}})
    b = doc(3, c={"endpoints": {"u": endpoint(5, healthy=False, ejected=True, times=2)}, "counters": {"hedges": 4}})
    merged = merge_stats([(0, a), (1, b)])
    c = merged["clusters"]["c"]
    assert c["endpoints"]["u"] == {"in_flight": 0, "requests": 7, "healthy": False, "ejected": True, "times_ejected": 3}
    assert c["counters"] == {"retries": 1, "hedges": 4}
    assert merged["version"] == 3
    assert [w["worker"] for w in merged["workers"]] == [0, 1]
    assert merged["workers"][1]["clusters"]["c"]["endpoints"]["u"]["requests"] == 5  # each worker's own, kept


def test_healthy_only_when_every_worker_says_so_and_ejected_when_any_does() -> None:
    both_fine = merge_stats(
        [(0, doc(1, c={"endpoints": {"u": endpoint()}})), (1, doc(1, c={"endpoints": {"u": endpoint()}}))]
    )
    assert both_fine["clusters"]["c"]["endpoints"]["u"]["healthy"] is True
    assert both_fine["clusters"]["c"]["endpoints"]["u"]["ejected"] is False


@pytest.mark.parametrize(
    ("states", "worst"),
    [
        (["closed", "closed"], "closed"),
        (["closed", "half-open"], "half-open"),
        (["half-open", "open"], "open"),
        (["open", "closed", "half-open"], "open"),
    ],
)
def test_the_breaker_state_is_the_most_severe(states: list[str], worst: str) -> None:
    docs = [(i, doc(1, c={"circuit_breaker": {"state": s, "in_flight": 1}})) for i, s in enumerate(states)]
    assert merge_stats(docs)["clusters"]["c"]["circuit_breaker"] == {"state": worst, "in_flight": len(states)}


def test_clusters_known_to_some_workers_only_are_kept_and_the_first_workers_version_wins() -> None:
    # Mid-reload, workers may run different config versions with different clusters.
    merged = merge_stats([(0, doc(2, new={"counters": {"retries": 1}})), (1, doc(1, old={"counters": {"retries": 2}}))])
    assert set(merged["clusters"]) == {"new", "old"}
    assert merged["version"] == 2
    assert [w["version"] for w in merged["workers"]] == [2, 1]


def test_listeners_add_connections_and_keep_the_address() -> None:
    def with_listener(connections: int) -> dict[str, Any]:
        return {
            "version": 1,
            "clusters": {},
            "listeners": {"outbound": {"connections": connections, "in_flight": 0, "address": "127.0.0.1:15001"}},
        }

    merged = merge_stats([(0, with_listener(4)), (1, with_listener(12))])
    assert merged["listeners"]["outbound"] == {"connections": 16, "in_flight": 0, "address": "127.0.0.1:15001"}


def test_missing_workers_are_listed_and_an_empty_merge_is_refused() -> None:
    assert merge_stats([(0, doc(1))], missing=[2, 1])["workers_missing"] == [1, 2]
    assert "workers_missing" not in merge_stats([(0, doc(1))])
    with pytest.raises(ValueError, match="at least one"):
        merge_stats([])


def test_observability_counts_add_up_and_settings_stay_worker_0s() -> None:
    def doc(exported: int, written: int) -> dict[str, Any]:
        return {
            "version": 1,
            "observability": {
                "tracing": {"exporter": "zipkin", "sampling": 0.25, "exported": exported, "last_export_error": None},
                "access_log": {"path": "/var/log/mesh.log", "written": written, "dropped": 1},
            },
        }

    merged = merge_stats([(0, doc(10, 100)), (1, doc(5, 50))])["observability"]
    assert merged["tracing"] == {"exporter": "zipkin", "sampling": 0.25, "exported": 15, "last_export_error": None}
    assert merged["access_log"] == {"path": "/var/log/mesh.log", "written": 150, "dropped": 2}
