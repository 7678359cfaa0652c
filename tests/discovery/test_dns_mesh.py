"""A cluster from DNS, end to end: a real DNS server on loopback whose answers change while requests flow.

In process and through ``meshlib proxy``: the mesh balances over every A
record, follows changes at the records' TTL, keeps the last good set through
SERVFAIL and NXDOMAIN, and lets a request in flight on a leaving endpoint
finish.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshlib
from tests.discovery.dns_server import DnsServer
from tests.discovery.upstreams import upstreams
from tests.sidecar import proxy_process

NAME = "ratings.internal"
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture
def port() -> Iterator[int]:
    with upstreams(HOSTS) as shared:
        yield shared


def _config(dns: DnsServer, port: int, **cluster: Any) -> dict[str, Any]:
    discovery = {"name": NAME, "port": port, "refresh": "300ms", "resolvers": [dns.address]}
    return {"clusters": {"ratings": {"discovery": {"dns": discovery}, **cluster}}}


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def _spread(get: Callable[[], httpx.Response], n: int = 30) -> Counter[str]:
    answers: Counter[str] = Counter()
    for _ in range(n):
        response = get()
        assert response.status_code == 200
        answers[response.text] += 1
    return answers


def test_every_a_record_serves_and_changes_are_followed(dns: DnsServer, port: int) -> None:
    dns.set(NAME, HOSTS[:2], ttl=1)
    with meshlib.Mesh.from_dict(_config(dns, port)) as mesh, mesh.client() as client:
        assert set(_spread(lambda: client.get("http://ratings/"))) == set(HOSTS[:2])
        dns.set(NAME, HOSTS[1:], ttl=1)
        _wait_for(
            lambda: set(mesh.stats()["clusters"]["ratings"]["endpoints"]) == {f"http://{h}:{port}" for h in HOSTS[1:]}
        )
        assert set(_spread(lambda: client.get("http://ratings/"))) == set(HOSTS[1:])
        dns_stats = mesh.stats()["discovery"]["dns"]["ratings"]
        assert dns_stats["endpoints"] == [f"http://{h}:{port}" for h in HOSTS[1:]]
        assert dns_stats["failures"] == 0


@pytest.mark.parametrize("failure", ["servfail", "nxdomain", "empty"])
def test_a_failed_or_empty_answer_keeps_the_last_good_set(dns: DnsServer, port: int, failure: str) -> None:
    dns.set(NAME, HOSTS[:2], ttl=1)
    with meshlib.Mesh.from_dict(_config(dns, port)) as mesh, mesh.client() as client:
        getattr(dns, failure)(NAME)
        _wait_for(lambda: mesh.stats()["discovery"]["dns"]["ratings"]["failures"] >= 2)
        # Never blanked: both endpoints still serve every request.
        assert set(_spread(lambda: client.get("http://ratings/"))) == set(HOSTS[:2])
        assert len(mesh.stats()["clusters"]["ratings"]["endpoints"]) == 2


def test_an_endpoint_that_leaves_is_drained_not_cut(dns: DnsServer, port: int) -> None:
    dns.set(NAME, HOSTS[:1], ttl=1)
    with meshlib.Mesh.from_dict(_config(dns, port, timeout="5s")) as mesh, mesh.client() as client:
        result: dict[str, httpx.Response] = {}
        slow = threading.Thread(target=lambda: result.update(r=client.get("http://ratings/slow?s=1")))
        slow.start()
        _wait_for(lambda: mesh.stats()["clusters"]["ratings"]["endpoints"][f"http://{HOSTS[0]}:{port}"]["in_flight"])
        dns.set(NAME, HOSTS[1:2], ttl=1)
        _wait_for(lambda: list(mesh.stats()["clusters"]["ratings"]["endpoints"]) == [f"http://{HOSTS[1]}:{port}"])
        assert client.get("http://ratings/").text == HOSTS[1]  # new requests go to the new set at once
        slow.join(timeout=5)
        assert result["r"].status_code == 200
        assert result["r"].text == HOSTS[0]  # the request in flight finished where it started


def test_a_new_endpoint_joins_with_the_clusters_outlier_state(dns: DnsServer, port: int) -> None:
    """Endpoints that stay keep their state; one that joins starts fresh and is judged by the same policy."""
    dns.set(NAME, HOSTS[:1], ttl=1)
    config = _config(dns, port, outlier_detection={"consecutive_5xx": 1, "base_ejection_time": "30s"})
    with meshlib.Mesh.from_dict(config) as mesh, mesh.client() as client:
        client.get("http://ratings/")
        before = mesh.stats()["clusters"]["ratings"]["endpoints"][f"http://{HOSTS[0]}:{port}"]["requests"]
        dns.set(NAME, HOSTS[:2], ttl=1)
        _wait_for(lambda: len(mesh.stats()["clusters"]["ratings"]["endpoints"]) == 2)
        endpoints = mesh.stats()["clusters"]["ratings"]["endpoints"]
        assert endpoints[f"http://{HOSTS[0]}:{port}"]["requests"] == before  # kept across the change
        assert endpoints[f"http://{HOSTS[1]}:{port}"]["requests"] == 0
        assert mesh.snapshot.clusters["ratings"].checks_health


def test_no_record_yet_refuses_with_a_clear_error(dns: DnsServer, port: int) -> None:
    dns.nxdomain(NAME)
    with meshlib.Mesh.from_dict(_config(dns, port)) as mesh, mesh.client() as client:
        with pytest.raises(meshlib.NoHealthyUpstreamError, match="discovery has found none"):
            client.get("http://ratings/")
        dns.set(NAME, HOSTS[:1], ttl=1)
        _wait_for(lambda: bool(mesh.stats()["clusters"]["ratings"]["endpoints"]))
        assert client.get("http://ratings/").text == HOSTS[0]


def test_close_stops_the_dns_watchers(dns: DnsServer, port: int) -> None:
    dns.set(NAME, HOSTS[:1], ttl=1)
    mesh = meshlib.Mesh.from_dict(_config(dns, port))
    mesh.close()
    asked = dns.queries(NAME)
    time.sleep(0.7)  # two refresh periods
    assert dns.queries(NAME) == asked
    assert not [t for t in threading.enumerate() if t.name.startswith("meshlib-dns")]


def test_the_sidecar_follows_dns_too(dns: DnsServer, port: int, tmp_path: Path) -> None:
    dns.set(NAME, HOSTS[:2], ttl=1)
    with proxy_process.running(tmp_path, _config(dns, port)) as proxy, proxy.client(timeout=5) as client:
        assert set(_spread(lambda: client.get("http://ratings/"))) == set(HOSTS[:2])
        dns.set(NAME, HOSTS[2:], ttl=1)

        def moved() -> bool:
            stats = httpx.get(proxy.admin_url + "/stats", trust_env=False).json()
            return list(stats["clusters"]["ratings"]["endpoints"]) == [f"http://{HOSTS[2]}:{port}"]

        _wait_for(moved)
        assert set(_spread(lambda: client.get("http://ratings/"))) == {HOSTS[2]}
        dns.servfail(NAME)
        _wait_for(
            lambda: (
                httpx.get(proxy.admin_url + "/stats", trust_env=False).json()["discovery"]["dns"]["ratings"]["failures"]
                >= 1
            )
        )
        assert set(_spread(lambda: client.get("http://ratings/"), n=10)) == {HOSTS[2]}


def test_a_reload_brings_dns_in_and_takes_it_out(dns: DnsServer, port: int) -> None:
    """A mesh that started with static endpoints gets DNS discovery from a reload, and drops it again."""
    dns.set(NAME, HOSTS[:2], ttl=1)
    static = {"clusters": {"ratings": {"endpoints": [f"http://{HOSTS[2]}:{port}"]}}}
    with meshlib.Mesh.from_dict(static) as mesh, mesh.client() as client:
        assert client.get("http://ratings/").text == HOSTS[2]
        assert "discovery" not in mesh.stats()
        mesh.reload(_config(dns, port))
        # Resolved before the reload returned: no window without endpoints.
        assert set(mesh.stats()["clusters"]["ratings"]["endpoints"]) == {f"http://{h}:{port}" for h in HOSTS[:2]}
        assert set(_spread(lambda: client.get("http://ratings/"))) == set(HOSTS[:2])
        mesh.reload(static)
        assert client.get("http://ratings/").text == HOSTS[2]
        assert "dns" not in mesh.stats()["discovery"]
        _wait_for(lambda: not [t for t in threading.enumerate() if t.name == "meshlib-dns-ratings"])
