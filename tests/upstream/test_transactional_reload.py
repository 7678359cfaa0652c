"""A reload whose compile fails midway leaves the old snapshot's live state running and intact.

The new snapshot's state is built beside the old (health checkers built but not started, breakers
beside breakers) and committed only when the whole compile succeeded; a failure closes what was built.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from meshlib._policies import rate_limit
from meshlib._upstream.health import HealthChecker
from tests.conftest import MakeMesh

A, B = "http://127.0.0.1:9081", "http://127.0.0.1:9082"


def _config(*, threshold: int, interval: str, limited: bool = False) -> dict[str, Any]:
    reviews: dict[str, Any] = {
        "endpoints": [A, B],
        "health_check": {"interval": interval},
        "circuit_breaker": {"failure_threshold": threshold, "recovery_timeout": "1h"},
    }
    if limited:  # built after the cluster's health checker: the compile fails once that one exists
        reviews["rate_limit"] = {"rate": "10/second"}
    return {"clusters": {"reviews": reviews}}


def _health_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "meshlib-health-reviews"]


class _BoomError(Exception):
    pass


def test_a_failed_compile_keeps_the_old_health_checker_and_breaker(
    make_mesh: MakeMesh, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    mesh = make_mesh(_config(threshold=5, interval="1h"))
    registry = mesh._runtime.registry
    checker = registry.get("health_check", "reviews")
    breaker = registry.get("circuit_breaker", "reviews")
    assert isinstance(checker, HealthChecker)
    breaker.breaker.open()  # live state that a rebuilt breaker would lose
    states = [e.state for e in mesh.snapshot.clusters["reviews"].endpoints]

    def boom(*args: Any, **kwargs: Any) -> None:
        raise _BoomError("a policy failed to build")

    built: list[HealthChecker] = []
    monkeypatch.setattr(rate_limit.RateLimiter, "__init__", boom)
    monkeypatch.setattr(HealthChecker, "close", _recording(HealthChecker.close, built))
    caplog.set_level(logging.INFO, logger="meshlib")
    caplog.clear()
    with pytest.raises(_BoomError):
        mesh.reload(_config(threshold=1, interval="2h", limited=True))

    assert mesh.snapshot.version == 1
    assert registry.get("health_check", "reviews") is checker
    assert checker.running
    assert all(state.health_owner is checker for state in states)  # the new checker never took them over
    assert len(_health_threads()) == 1
    assert [c is not checker for c in built] == [True]  # the checker built for the failed compile was closed
    assert registry.get("circuit_breaker", "reviews") is breaker
    assert breaker.state == "open"
    assert mesh.stats()["clusters"]["reviews"]["circuit_breaker"]["state"] == "open"
    assert mesh.stats()["reloads"]["refused"] == 1
    # One line, no traceback (unless at DEBUG).
    [line] = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert (line.levelname, line.exc_info) == ("ERROR", None)
    assert line.getMessage() == (
        "reload failed, still serving config version 1: internal error: _BoomError: a policy failed to build"
    )

    monkeypatch.undo()
    mesh.reload(_config(threshold=1, interval="2h", limited=True))
    new_checker = registry.get("health_check", "reviews")
    assert new_checker is not checker
    assert new_checker.running
    assert not checker.running
    assert all(state.health_owner is new_checker for state in states)
    assert registry.get("circuit_breaker", "reviews").state == "closed"  # its config changed: a new breaker


def _recording(close: Any, into: list[HealthChecker]) -> Any:
    def recorded(self: HealthChecker) -> None:
        into.append(self)
        close(self)

    return recorded


def test_state_outside_a_transaction_is_refused(make_mesh: MakeMesh) -> None:
    registry = make_mesh({"clusters": {"reviews": {"endpoints": [A]}}})._runtime.registry
    with pytest.raises(RuntimeError, match="transaction"):
        registry.cluster("reviews")
