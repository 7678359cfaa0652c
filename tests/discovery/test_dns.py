"""DNS discovery against a real DNS server on loopback whose answers change mid-test."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshlib._config.discovery import DnsDiscoveryConfig
from meshlib._discovery.dns import DnsWatcher
from tests.discovery.dns_server import DnsServer

NAME = "ratings.internal"
Changes = list[tuple[str, tuple[str, ...]]]
MakeWatcher = Callable[..., tuple[DnsWatcher, Changes]]


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """A DNS server on 127.0.0.1 that knows nothing until told (``set``, ``nxdomain``, ...)."""
    with DnsServer() as server:
        yield server


@pytest.fixture
def make_watcher(dns_server: DnsServer) -> Iterator[MakeWatcher]:
    """``make_watcher(timeout=..., **config)`` → a watcher asking ``dns_server`` only, and the on_change calls it made.

    The config defaults to ``ratings.internal:9080`` over http; watchers are closed after the test.
    """
    made: list[DnsWatcher] = []

    def make(*, timeout: float = 1.0, **config: Any) -> tuple[DnsWatcher, Changes]:
        changes: Changes = []
        fields: dict[str, Any] = {"name": NAME, "port": 9080, "resolvers": [dns_server.address], **config}
        watcher = DnsWatcher(
            "ratings",
            DnsDiscoveryConfig.model_validate(fields),
            lambda cluster, urls: changes.append((cluster, urls)),
            timeout=timeout,
        )
        made.append(watcher)
        return watcher, changes

    yield make
    for watcher in made:
        watcher.close()


def _warnings(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "meshlib.discovery" and r.levelno == level]


# What the records become.


def test_every_a_and_aaaa_record_becomes_an_endpoint_sorted_with_scheme_and_port(
    dns_server: DnsServer, make_watcher: MakeWatcher
) -> None:
    dns_server.set(NAME, ["127.0.0.2", "2001:db8::10", "127.0.0.1", "::1"], ttl=30)
    watcher, changes = make_watcher(scheme="https", port=8443)

    expected = (
        "https://127.0.0.1:8443",
        "https://127.0.0.2:8443",
        "https://[2001:db8::10]:8443",
        "https://[::1]:8443",
    )
    assert watcher.resolve() == expected
    assert watcher.endpoints == expected
    assert changes == [("ratings", expected)]
    assert dns_server.queries(NAME, "A") == 1
    assert dns_server.queries(NAME, "AAAA") == 1
    stats = watcher.stats()
    assert stats["endpoints"] == list(expected)
    assert stats["ttl"] == 30
    assert (stats["resolutions"], stats["failures"], stats["last_error"]) == (1, 0, None)
    assert stats["last_success"] == pytest.approx(time.time(), abs=5)


def test_a_name_with_only_a_records_or_only_aaaa_records_uses_what_it_has(
    dns_server: DnsServer, make_watcher: MakeWatcher
) -> None:
    watcher, _ = make_watcher()
    dns_server.set(NAME, ["10.0.0.1"])  # AAAA: NOERROR, no records
    assert watcher.resolve() == ("http://10.0.0.1:9080",)
    dns_server.set(NAME, ["fd00::1"])  # A: NOERROR, no records
    assert watcher.resolve() == ("http://[fd00::1]:9080",)
    dns_server.set(NAME, ["10.0.0.2"])
    dns_server.nxdomain(NAME, "AAAA")  # a zone being rewritten: the type that answers decides
    assert watcher.resolve() == ("http://10.0.0.2:9080",)
    assert watcher.stats()["failures"] == 0


def test_the_ttl_is_the_shortest_of_the_records(dns_server: DnsServer, make_watcher: MakeWatcher) -> None:
    watcher, _ = make_watcher(refresh="60s")
    dns_server.set(NAME, ["10.0.0.1"], ttl=40)
    dns_server.set(NAME, ["::2"], ttl=12, qtype="AAAA")
    watcher.resolve()
    assert watcher.stats()["ttl"] == 12
    assert watcher.next_delay() == 12


# When to ask again.


@pytest.mark.parametrize(
    ("ttl", "refresh", "expected"),
    [
        (30, "60s", 30.0),  # the TTL, between the floor and refresh
        (7, "10s", 7.0),
        (5, "5s", 5.0),
        (300, "60s", 60.0),  # never later than refresh
        (3600, "10s", 10.0),
        (1, "60s", 5.0),  # never sooner than the floor, min(5s, refresh)
        (0, "60s", 5.0),
        (4, "10s", 5.0),
        (2, "3s", 3.0),  # refresh under 5s: the floor is refresh
        (10, "3s", 3.0),
        (0, "300ms", 0.3),
        (1, "300ms", 0.3),
    ],
)
def test_next_delay_is_the_ttl_clamped_to_the_floor_and_refresh(
    dns_server: DnsServer, make_watcher: MakeWatcher, ttl: int, refresh: str, expected: float
) -> None:
    watcher, _ = make_watcher(refresh=refresh)
    dns_server.set(NAME, ["10.0.0.1"], ttl=ttl)
    assert watcher.resolve() is not None
    assert watcher.stats()["ttl"] == ttl
    assert watcher.next_delay() == pytest.approx(expected)


@pytest.mark.parametrize(("refresh", "floor"), [("60s", 5.0), ("5s", 5.0), ("2s", 2.0), ("300ms", 0.3)])
def test_next_delay_is_the_floor_before_the_first_answer_and_after_a_failure(
    dns_server: DnsServer, make_watcher: MakeWatcher, refresh: str, floor: float
) -> None:
    watcher, _ = make_watcher(refresh=refresh)
    assert watcher.next_delay() == pytest.approx(floor)
    dns_server.set(NAME, ["10.0.0.1"], ttl=3600)
    watcher.resolve()
    dns_server.servfail(NAME)
    assert watcher.resolve() is None
    assert watcher.next_delay() == pytest.approx(floor)
    dns_server.set(NAME, ["10.0.0.1"], ttl=3600)
    watcher.resolve()
    assert watcher.next_delay() == pytest.approx(60.0 if refresh == "60s" else floor)


def test_the_thread_re_resolves_at_refresh_and_reports_each_new_set(
    dns_server: DnsServer, make_watcher: MakeWatcher
) -> None:
    dns_server.set(NAME, ["127.0.0.1", "::1"], ttl=1)  # a TTL of 1s, capped by refresh: 300ms
    seen: queue.Queue[tuple[str, ...]] = queue.Queue()
    watcher, changes = make_watcher(refresh="300ms")
    report = watcher.on_change

    def on_change(cluster: str, urls: tuple[str, ...]) -> None:
        report(cluster, urls)
        seen.put(urls)

    watcher.on_change = on_change

    watcher.start()
    assert seen.get(timeout=1) == ("http://127.0.0.1:9080", "http://[::1]:9080")
    assert any(t.name == "meshlib-dns-ratings" and t.daemon for t in threading.enumerate())
    assert 0 <= watcher.stats()["next_refresh_in"] <= 0.3

    dns_server.set(NAME, ["127.0.0.2"], ttl=1)
    started = time.monotonic()
    assert seen.get(timeout=1) == ("http://127.0.0.2:9080",)
    assert time.monotonic() - started < 0.6  # at refresh (300ms), not at the TTL
    assert watcher.endpoints == ("http://127.0.0.2:9080",)

    # Answers that do not change the set are not reported.
    asked = dns_server.queries(NAME)
    assert dns_server.wait_for_queries(NAME, asked + 2, timeout=1.5)
    assert len(changes) == 2
    assert watcher.stats()["resolutions"] >= 3


# Failures keep the last good set.


@pytest.mark.parametrize(
    ("fail", "error"),
    [
        (lambda server: server.servfail(NAME), "SERVFAIL"),
        (lambda server: server.drop(NAME), "no answer within 0.2s"),
        (lambda server: server.nxdomain(NAME), "NXDOMAIN"),
        (lambda server: server.empty(NAME), "no A or AAAA records"),
        # A partial failure must not shrink the set.
        (lambda server: server.servfail(NAME, "AAAA"), "SERVFAIL"),
        (lambda server: server.drop(NAME, "AAAA"), "no answer within 0.2s"),
    ],
    ids=["servfail", "timeout", "nxdomain", "empty", "aaaa-servfail", "aaaa-timeout"],
)
def test_a_failure_keeps_the_last_good_set_is_counted_and_logged_once_per_streak(
    dns_server: DnsServer,
    make_watcher: MakeWatcher,
    caplog: pytest.LogCaptureFixture,
    fail: Callable[[DnsServer], None],
    error: str,
) -> None:
    caplog.set_level(logging.INFO, logger="meshlib.discovery")
    good = ("http://127.0.0.1:9080", "http://[::1]:9080")
    dns_server.set(NAME, ["127.0.0.1", "::1"], ttl=30)
    watcher, changes = make_watcher(timeout=0.2)
    assert watcher.resolve() == good

    fail(dns_server)
    for _ in range(2):
        assert watcher.resolve() is None
    assert watcher.endpoints == good
    stats = watcher.stats()
    assert stats["endpoints"] == list(good)
    assert (stats["resolutions"], stats["failures"]) == (1, 2)
    assert error in stats["last_error"]
    assert stats["ttl"] == 30  # of the set still in use
    warnings = _warnings(caplog)
    assert len(warnings) == 1
    assert "'ratings'" in warnings[0]
    assert NAME in warnings[0]
    assert error in warnings[0]
    assert "keeping its last 2 endpoints" in warnings[0]
    assert changes == [("ratings", good)]

    # Recovery: logged at INFO, and the new set is reported.
    dns_server.set(NAME, ["127.0.0.3"], ttl=30)
    assert watcher.resolve() == ("http://127.0.0.3:9080",)
    assert changes[-1] == ("ratings", ("http://127.0.0.3:9080",))
    assert watcher.stats()["last_error"] is None
    infos = _warnings(caplog, logging.INFO)
    assert len(infos) == 1
    assert "resolves again" in infos[0]
    assert "2 failed attempts" in infos[0]

    # A second streak is logged again.
    fail(dns_server)
    assert watcher.resolve() is None
    assert len(_warnings(caplog)) == 2
    assert watcher.stats()["endpoints"] == ["http://127.0.0.3:9080"]


def test_a_failure_before_any_answer_leaves_no_endpoints_and_says_so(
    dns_server: DnsServer, make_watcher: MakeWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    watcher, changes = make_watcher()
    dns_server.servfail(NAME)
    assert watcher.resolve() is None
    assert watcher.resolve() is None
    assert watcher.endpoints == ()
    assert watcher.stats()["last_success"] is None
    assert watcher.stats()["ttl"] is None
    assert changes == []
    [warning] = _warnings(caplog)
    assert "no endpoints yet" in warning


def test_the_thread_keeps_the_set_through_an_outage_and_picks_up_the_answers_after_it(
    dns_server: DnsServer, make_watcher: MakeWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshlib.discovery")
    dns_server.set(NAME, ["127.0.0.1"], ttl=1)
    watcher, changes = make_watcher(refresh="300ms")
    watcher.start()
    assert dns_server.wait_for_queries(NAME, 1, qtype="AAAA")

    dns_server.servfail(NAME)
    deadline = time.monotonic() + 1.5
    while watcher.stats()["failures"] < 2 and time.monotonic() < deadline:  # retried at the floor
        time.sleep(0.01)
    assert watcher.stats()["failures"] >= 2
    assert watcher.endpoints == ("http://127.0.0.1:9080",)

    dns_server.set(NAME, ["127.0.0.1", "127.0.0.2"], ttl=1)
    deadline = time.monotonic() + 1.5
    while len(changes) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert changes == [
        ("ratings", ("http://127.0.0.1:9080",)),
        ("ratings", ("http://127.0.0.1:9080", "http://127.0.0.2:9080")),
    ]
    assert len(_warnings(caplog)) == 1
    assert len(_warnings(caplog, logging.INFO)) == 1


# on_change.


def test_on_change_is_called_only_when_the_set_changes(dns_server: DnsServer, make_watcher: MakeWatcher) -> None:
    watcher, changes = make_watcher()
    dns_server.set(NAME, ["127.0.0.1", "127.0.0.2"], ttl=30)
    watcher.resolve()
    dns_server.set(NAME, ["127.0.0.2", "127.0.0.1"], ttl=10)  # same set, another order and TTL
    watcher.resolve()
    dns_server.servfail(NAME)
    watcher.resolve()
    dns_server.set(NAME, ["127.0.0.1", "127.0.0.2"], ttl=30)  # back after a failure, unchanged
    watcher.resolve()
    assert changes == [("ratings", ("http://127.0.0.1:9080", "http://127.0.0.2:9080"))]

    dns_server.set(NAME, ["127.0.0.1"], ttl=30)
    watcher.resolve()
    assert changes[-1] == ("ratings", ("http://127.0.0.1:9080",))
    assert len(changes) == 2


def test_an_on_change_that_raises_is_logged_and_offered_the_set_again(
    dns_server: DnsServer, make_watcher: MakeWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[str, ...]] = []

    def on_change(cluster: str, urls: tuple[str, ...]) -> None:
        calls.append(urls)
        if len(calls) == 1:
            raise RuntimeError("boom")

    watcher, _ = make_watcher()
    watcher.on_change = on_change
    dns_server.set(NAME, ["127.0.0.1"])
    assert watcher.resolve() == ("http://127.0.0.1:9080",)  # no exception out of resolve()
    assert [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    watcher.resolve()
    watcher.resolve()
    assert calls == [("http://127.0.0.1:9080",)] * 2


# The thread's life.


def test_close_stops_the_thread_promptly_and_is_idempotent(dns_server: DnsServer, make_watcher: MakeWatcher) -> None:
    dns_server.set(NAME, ["127.0.0.1"], ttl=3600)
    watcher, _ = make_watcher(refresh="60s")
    watcher.start()
    watcher.start()  # once
    assert dns_server.wait_for_queries(NAME, 1, qtype="AAAA")
    [thread] = [t for t in threading.enumerate() if t.name == "meshlib-dns-ratings"]

    started = time.monotonic()
    watcher.close()  # the thread waits 60s for its next lookup: close() must wake it
    assert time.monotonic() - started < 1
    thread.join(1)
    assert not thread.is_alive()
    watcher.close()
    watcher.start()  # after close: nothing
    assert not any(t.name == "meshlib-dns-ratings" for t in threading.enumerate())
    assert watcher.stats()["next_refresh_in"] is None
    assert watcher.resolve() is None
    assert watcher.endpoints == ("http://127.0.0.1:9080",)


def test_start_after_a_resolve_waits_next_delay_before_asking_again(
    dns_server: DnsServer, make_watcher: MakeWatcher
) -> None:
    dns_server.set(NAME, ["127.0.0.1"], ttl=0)
    watcher, changes = make_watcher(refresh="300ms")
    assert watcher.resolve() == ("http://127.0.0.1:9080",)  # the caller starts with endpoints
    watcher.start()
    time.sleep(0.1)
    assert dns_server.queries(NAME) == 1
    assert 0 < watcher.stats()["next_refresh_in"] <= 0.3
    assert dns_server.wait_for_queries(NAME, 2, timeout=1)
    assert len(changes) == 1


def test_close_during_a_lookup_that_gets_no_answer_returns_within_the_timeout(
    dns_server: DnsServer, make_watcher: MakeWatcher
) -> None:
    dns_server.drop(NAME)
    watcher, changes = make_watcher(timeout=0.3)
    watcher.start()
    assert dns_server.wait_for_queries(NAME, 1)
    started = time.monotonic()
    watcher.close()
    assert time.monotonic() - started < 1
    assert not any(t.name == "meshlib-dns-ratings" for t in threading.enumerate())
    assert changes == []


def test_close_before_start_and_without_start(make_watcher: MakeWatcher) -> None:
    watcher, _ = make_watcher()
    watcher.close()
    watcher.close()
    assert watcher.stats()["next_refresh_in"] is None


# Which resolvers are asked.


def test_the_resolvers_override_is_asked(dns_server: DnsServer, make_watcher: MakeWatcher) -> None:
    # ratings.internal exists only on the test server: an answer proves it was the one asked.
    dns_server.set(NAME, ["192.0.2.7"])
    watcher, _ = make_watcher()
    assert watcher.resolve() == ("http://192.0.2.7:9080",)
    assert (dns_server.queries(NAME, "A"), dns_server.queries(NAME, "AAAA")) == (1, 1)


def test_a_resolver_that_does_not_answer_leaves_time_for_the_next(dns_server: DnsServer) -> None:
    dns_server.set(NAME, ["192.0.2.8"])
    with DnsServer() as silent:
        silent.drop(NAME)
        config = DnsDiscoveryConfig(name=NAME, port=80, resolvers=[silent.address, dns_server.address])
        # 0.4s over two servers: 0.2s for the silent one, then the next is asked.
        watcher = DnsWatcher("ratings", config, lambda cluster, urls: None, timeout=0.4)
        try:
            assert watcher.resolve() == ("http://192.0.2.8:80",)
        finally:
            watcher.close()
        assert silent.queries(NAME) >= 1


def test_an_ipv6_resolver_address_is_used() -> None:
    try:
        server = DnsServer("::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback (::1) on this machine: {exc}")
    with server:
        server.set(NAME, ["127.0.0.1", "::1"])
        assert server.address == f"[::1]:{server.port}"
        config = DnsDiscoveryConfig(name=NAME, port=9080, resolvers=[server.address])
        watcher = DnsWatcher("ratings", config, lambda cluster, urls: None, timeout=1.0)
        try:
            assert watcher.resolve() == ("http://127.0.0.1:9080", "http://[::1]:9080")
        finally:
            watcher.close()
        assert server.queries(NAME, "AAAA") == 1


# Reads from other threads.


def test_stats_and_endpoints_read_consistently_while_the_thread_resolves(
    dns_server: DnsServer, make_watcher: MakeWatcher
) -> None:
    sets = [["127.0.0.1"], ["127.0.0.1", "127.0.0.2"], ["127.0.0.3"]]
    dns_server.set(NAME, sets[0], ttl=0)
    watcher, _ = make_watcher(refresh="300ms")
    stats = watcher.stats()
    assert set(stats) == {
        "name",
        "port",
        "endpoints",
        "ttl",
        "resolutions",
        "failures",
        "last_error",
        "last_success",
        "next_refresh_in",
    }
    assert (stats["name"], stats["port"], stats["endpoints"]) == (NAME, 9080, [])
    watcher.start()
    allowed = {(), *(tuple(f"http://{ip}:9080" for ip in each) for each in sets)}
    deadline = time.monotonic() + 0.8
    i = 0
    while time.monotonic() < deadline:
        dns_server.set(NAME, sets[i % len(sets)], ttl=0)
        i += 1
        assert watcher.endpoints in allowed
        assert tuple(watcher.stats()["endpoints"]) in allowed
        time.sleep(0.005)
    assert watcher.stats()["resolutions"] >= 2
