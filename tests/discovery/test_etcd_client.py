"""The etcd client against a real etcd: keys, leases, watches, failover between members, TLS and auth."""

from __future__ import annotations

import base64
import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meshlib._config.discovery import EtcdConfig
from meshlib._discovery.etcd_client import (
    Compacted,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    Event,
    LeaseNotFound,
    Watch,
    WatchBatch,
    _prefix_end,
)
from tests.discovery.conftest import start_etcd
from tests.discovery.etcd_server import EtcdCluster, make_tls

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def client(etcd: EtcdCluster) -> Iterator[EtcdClient]:
    with EtcdClient(etcd.endpoints, timeout=2.0) as client:
        yield client


class Reader:
    """Iterates a watch on a daemon thread, so that a test waits for batches with a bound instead of in next()."""

    def __init__(self, watch: Watch) -> None:
        self.items: queue.Queue[WatchBatch | BaseException | None] = queue.Queue()
        threading.Thread(target=self._run, args=(watch,), daemon=True).start()

    def _run(self, watch: Watch) -> None:
        try:
            for batch in watch:
                self.items.put(batch)
            self.items.put(None)  # StopIteration
        except BaseException as exc:
            self.items.put(exc)

    def next(self, timeout: float = 5.0) -> WatchBatch | BaseException | None:
        return self.items.get(timeout=timeout)

    def events(self, count: int, timeout: float = 5.0) -> list[tuple[int, Event]]:
        """The next ``count`` events, each with the revision of the batch it came in."""
        events: list[tuple[int, Event]] = []
        deadline = time.monotonic() + timeout
        while len(events) < count:
            item = self.next(max(0.0, deadline - time.monotonic()))
            assert isinstance(item, WatchBatch), item
            events += [(item.revision, event) for event in item.events]
        return events


def test_put_get_range_delete(etcd: EtcdCluster, client: EtcdClient, etcd_prefix: str) -> None:
    p = etcd_prefix
    r1 = client.put(p + "a", "1")
    r2 = client.put(p + "b", b"2")
    r3 = client.put(p + "b/c", "3")
    outside = p[:-1] + "0"  # the first key past the prefix: etcd's range_end, excluded
    client.put(outside, "x")
    assert r1 < r2 < r3
    assert client.get(p + "a") == client.range(p + "a")[1][0]
    kv = client.get(p + "a")
    assert kv is not None
    assert (kv.key, kv.value, kv.version, kv.lease) == (p + "a", b"1", 1, 0)
    assert (kv.create_revision, kv.mod_revision) == (r1, r1)
    r4 = client.put(p + "a", "1b")
    kv = client.get(p + "a")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"1b", r1, r4, 2)
    revision, kvs = client.range(p, prefix=True)
    assert revision >= r4
    assert [kv.key for kv in kvs] == [p + "a", p + "b", p + "b/c"]
    assert client.get(p + "missing") is None
    assert client.range(p + "missing", prefix=True)[1] == []

    assert client.delete(p + "a") == 1
    assert client.get(p + "a") is None
    assert client.delete(p + "a") == 0
    assert client.delete(p, prefix=True) == 2
    assert client.range(p, prefix=True)[1] == []
    assert client.get(outside) is not None
    assert client.delete(outside) == 1

    assert client.member == etcd.endpoints[0]
    status = client.status()
    assert status["leader"] == status["header"]["member_id"]  # one member: it leads


def test_values_round_trip_binary_and_unicode(client: EtcdClient, etcd_prefix: str) -> None:
    every_byte = bytes(range(256))
    client.put(etcd_prefix + "bin", every_byte)
    client.put(etcd_prefix + "ключ/🙂", "значение ✓")
    client.put(etcd_prefix + "empty", b"")
    assert client.get(etcd_prefix + "bin") is not None
    values = {kv.key: kv.value for kv in client.range(etcd_prefix, prefix=True)[1]}
    assert values == {
        etcd_prefix + "bin": every_byte,
        etcd_prefix + "empty": b"",
        etcd_prefix + "ключ/🙂": "значение ✓".encode(),
    }


@pytest.mark.parametrize(
    ("prefix", "end"),
    [("/a/", b"/a0"), ("a", b"b"), ("a\udcff", b"b"), ("a\udcff\udcff", b"b"), ("\udcff", b"\0"), ("é", b"\xc3\xaa")],
)
def test_prefix_range_end_is_etcds(prefix: str, end: bytes) -> None:
    # etcd's GetPrefixRangeEnd: the last byte below 0xff incremented, the 0xff bytes after it dropped.
    assert base64.b64decode(_prefix_end(prefix)) == end


def test_lease_keepalive_extends_and_expiry_deletes(client: EtcdClient, etcd_prefix: str) -> None:
    key = etcd_prefix + "leased"
    granted = time.monotonic()
    lease = client.lease_grant(2)
    # etcd grants at least 1.5 election timeouts (1 s with the test cluster's 500 ms): 2 s is granted as asked.
    assert client.lease_keepalive(lease) == 2
    client.put(key, "here", lease=lease)
    kv = client.get(key)
    assert kv is not None
    assert kv.lease == lease

    time.sleep(max(0.0, granted + 1.5 - time.monotonic()))
    assert client.lease_keepalive(lease) == 2  # renewed at 1.5 s: now lives until about 3.5 s
    time.sleep(max(0.0, granted + 3.0 - time.monotonic()))
    assert client.get(key) is not None  # without the keepalive it would be gone since about 2-2.5 s

    deadline = time.monotonic() + 3.0  # expiry at 3.5 s; etcd looks for expired leases every 500 ms
    while client.get(key) is not None:
        assert time.monotonic() < deadline, "the lease's key outlived the lease"
        time.sleep(0.05)
    with pytest.raises(LeaseNotFound, match=f"etcd .* lease {lease:x} not found"):
        client.lease_keepalive(lease)


def test_lease_revoke_deletes_at_once(client: EtcdClient, etcd_prefix: str) -> None:
    lease = client.lease_grant(30)
    client.put(etcd_prefix + "a", "1", lease=lease)
    client.put(etcd_prefix + "b", "2", lease=lease)
    client.lease_revoke(lease)
    assert client.range(etcd_prefix, prefix=True)[1] == []
    with pytest.raises(LeaseNotFound, match=r"etcd http://127\.0\.0\.1:\d+ lease/revoke: .*lease not found"):
        client.lease_revoke(lease)
    with pytest.raises(LeaseNotFound):
        client.lease_keepalive(lease)
    with pytest.raises(LeaseNotFound):
        client.put(etcd_prefix + "c", "3", lease=lease)


def test_watch_from_a_revision_sees_puts_and_deletes_in_order(client: EtcdClient, etcd_prefix: str) -> None:
    p = etcd_prefix
    first = client.put(p + "a", "1")  # before the watch: seen because the watch starts at its revision
    with client.watch(p, prefix=True, start_revision=first) as watch:
        reader = Reader(watch)
        client.put(p + "b", "2")
        client.delete(p + "a")
        client.put(p[:-1] + "0", "outside")
        last = client.put(p + "a", "3")
        events = reader.events(4)
    seen = [(event.type, event.kv.key, event.kv.value) for _, event in events]
    assert seen == [("put", p + "a", b"1"), ("put", p + "b", b"2"), ("delete", p + "a", b""), ("put", p + "a", b"3")]
    revisions = [event.kv.mod_revision for _, event in events]
    assert revisions[0] == first
    assert revisions[-1] == last
    assert revisions == sorted(set(revisions))
    assert all(batch_revision >= event.kv.mod_revision for batch_revision, event in events)
    assert events[1][1].kv.version == 1
    assert events[3][1].kv.create_revision == last  # a put after a delete creates the key anew
    assert reader.next() is None  # closed by the with block: iteration stopped
    client.delete(p[:-1] + "0")


def test_quiet_watch_outlives_the_call_timeout(etcd: EtcdCluster, etcd_prefix: str) -> None:
    with EtcdClient(etcd.endpoints, timeout=0.3) as client:
        revision, _ = client.range(etcd_prefix)
        with client.watch(etcd_prefix, prefix=True, start_revision=revision + 1) as watch:
            reader = Reader(watch)
            time.sleep(1.0)  # quiet for more than 3 timeouts: a watch has no read timeout
            client.put(etcd_prefix + "late", "x")
            [(_, event)] = reader.events(1)
    assert event.kv.key == etcd_prefix + "late"


def test_progress_notification_is_an_empty_batch(tmp_path: Path) -> None:
    cluster = start_etcd(1, tmp_path, progress_notify=0.3)
    try:
        with EtcdClient(cluster.endpoints) as client:
            revision = client.put("/k", "v")
            with client.watch("/k", start_revision=revision + 1) as watch:
                assert next(watch) == WatchBatch(revision, ())
    finally:
        cluster.stop()


def test_watch_after_compaction_raises_compacted(client: EtcdClient, etcd_prefix: str) -> None:
    old = client.put(etcd_prefix + "a", "1")
    compacted = client.put(etcd_prefix + "a", "2")
    client.compact(compacted)
    with (
        pytest.raises(Compacted, match=r"etcd .* watch: revision compacted") as info,
        client.watch(etcd_prefix, prefix=True, start_revision=old) as watch,
    ):
        next(watch)
    assert info.value.compact_revision >= compacted
    with pytest.raises(EtcdError, match="compacted"):
        client.compact(old)


def test_close_from_another_thread_unblocks_a_watch(client: EtcdClient, etcd_prefix: str) -> None:
    revision, _ = client.range(etcd_prefix)
    watch = client.watch(etcd_prefix, prefix=True, start_revision=revision + 1)
    threading.Timer(0.2, watch.close).start()
    started = time.monotonic()
    with pytest.raises(StopIteration):
        next(watch)
    assert time.monotonic() - started < 1.0
    with pytest.raises(StopIteration):
        next(watch)
    watch.close()

    closed_first = client.watch(etcd_prefix, start_revision=revision + 1)
    closed_first.close()
    assert list(closed_first) == []

    # Closing the client closes its watches too.
    reader = Reader(client.watch(etcd_prefix, start_revision=revision + 1))
    time.sleep(0.1)
    client.close()
    assert reader.next(timeout=1.0) is None


@pytest.mark.parametrize("in_use", ["follower", "leader"])
def test_failover_when_the_member_in_use_is_killed(etcd3: EtcdCluster, in_use: str) -> None:
    leader = etcd3.leader()
    victim = leader if in_use == "leader" else (leader + 1) % 3
    endpoints = etcd3.endpoints[victim:] + etcd3.endpoints[:victim]
    with EtcdClient(endpoints, timeout=1.0) as client:
        revision = client.put("/f", "before")
        assert client.member == etcd3.endpoints[victim]
        reader = Reader(client.watch("/f", start_revision=revision + 1))
        time.sleep(0.1)

        killed = time.monotonic()
        etcd3.kill(victim)
        broken = reader.next(timeout=1.0)
        assert isinstance(broken, EtcdUnavailable)
        assert f"etcd watch on {etcd3.endpoints[victim]} broke" in str(broken)
        assert time.monotonic() - killed < 0.5

        started = time.monotonic()
        revision = client.put("/f", "after")
        # A follower answers at once. A write on a follower while the leader is dying is forwarded to the dead
        # leader and lost; the call waits out its timeout and the next member answers.
        assert time.monotonic() - started < (0.5 if in_use == "follower" else 1.0 + 1.5)
        assert client.member != etcd3.endpoints[victim]
        kv = client.get("/f")
        assert kv is not None
        assert kv.value == b"after"
        with client.watch("/f", start_revision=revision) as watch:
            assert watch.member == client.member
            assert [event.kv.value for event in next(watch).events] == [b"after"]


def test_a_member_that_loses_its_leader_cancels_its_watches(etcd3: EtcdCluster) -> None:
    # The hasleader header: without it the member would keep the watch open and silent.
    with EtcdClient([etcd3.endpoints[0]], timeout=1.0) as client:
        reader = Reader(client.watch("/x", start_revision=1))
        time.sleep(0.1)
        lost = time.monotonic()
        etcd3.kill(1)
        etcd3.kill(2)
        broken = reader.next(timeout=6.0)
        took = time.monotonic() - lost
        assert isinstance(broken, EtcdUnavailable)
        assert "no leader" in str(broken)
        assert took < 4.0  # about 3 election timeouts: ~2 s
        started = time.monotonic()
        with pytest.raises(EtcdUnavailable, match="no leader"):
            client.watch("/x", start_revision=1)
        assert time.monotonic() - started < 0.5


def test_all_members_down_is_unavailable_naming_every_member(etcd3: EtcdCluster) -> None:
    with EtcdClient(etcd3.endpoints, timeout=1.0) as client:
        client.put("/k", "v")
        for i in range(3):
            etcd3.kill(i)
        started = time.monotonic()
        with pytest.raises(EtcdUnavailable) as info:
            client.get("/k")
        assert time.monotonic() - started < 3 * 1.0
        message = str(info.value)
        assert message.startswith("etcd unreachable (tried ")
        assert all(endpoint in message for endpoint in etcd3.endpoints)
        assert "ConnectError" in message
        with pytest.raises(EtcdUnavailable, match="etcd unreachable"):
            client.watch("/k", start_revision=1)


def test_members_that_never_answer_time_out() -> None:
    # Listening sockets that never accept: connecting works (the backlog), answers never come.
    listeners = [socket.create_server(("127.0.0.1", 0), backlog=8) for _ in range(2)]
    endpoints = [f"http://127.0.0.1:{sock.getsockname()[1]}" for sock in listeners]
    try:
        with EtcdClient(endpoints, timeout=0.3) as client:
            started = time.monotonic()
            with pytest.raises(EtcdUnavailable, match="ReadTimeout") as info:
                client.put("/k", "v")
            assert 0.5 < time.monotonic() - started < 1.5
            assert all(endpoint in str(info.value) for endpoint in endpoints)
            started = time.monotonic()
            with pytest.raises(EtcdUnavailable, match="ReadTimeout"):
                client.watch("/k", start_revision=1)
            assert time.monotonic() - started < 1.5
    finally:
        for sock in listeners:
            sock.close()


def test_tls_with_the_ca_and_a_client_certificate(tmp_path: Path) -> None:
    cluster = start_etcd(1, tmp_path / "etcd", tls=True)
    try:
        tls = cluster.tls
        assert tls is not None
        assert cluster.endpoints[0].startswith("https://")
        config = EtcdConfig.model_validate(
            {
                "endpoints": cluster.endpoints,
                "tls": {"ca_file": str(tls.ca), "cert_file": str(tls.client_cert), "key_file": str(tls.client_key)},
            }
        )
        with EtcdClient.from_config(config) as client:
            revision = client.put("/secure", "yes")
            kv = client.get("/secure")
            assert kv is not None
            assert kv.value == b"yes"
            with client.watch("/secure", start_revision=revision) as watch:
                assert [event.kv.value for event in next(watch).events] == [b"yes"]
                threading.Timer(0.2, watch.close).start()  # shutdown() under TLS wakes the reader too
                started = time.monotonic()
                with pytest.raises(StopIteration):
                    next(watch)
                assert time.monotonic() - started < 1.0

        other_ca = make_tls(tmp_path / "other").ca
        for kwargs in [
            {},  # the system's CAs
            {"ca_file": str(other_ca), "cert_file": str(tls.client_cert), "key_file": str(tls.client_key)},
        ]:
            with (
                EtcdClient(cluster.endpoints, timeout=2.0, **kwargs) as stranger,
                pytest.raises(EtcdUnavailable, match=r"etcd unreachable \(tried https://.*CERTIFICATE_VERIFY"),
            ):
                stranger.get("/secure")
        # The right CA but no client certificate: etcd (--client-cert-auth) ends the handshake.
        with (
            EtcdClient(cluster.endpoints, timeout=2.0, ca_file=str(tls.ca)) as anonymous,
            pytest.raises(EtcdUnavailable, match=r"etcd unreachable \(tried https://"),
        ):
            anonymous.get("/secure")
    finally:
        cluster.stop()


def test_username_and_password(tmp_path: Path) -> None:
    # Tokens live 1 s without use here, so the client's re-authentication is tested too.
    cluster = start_etcd(1, tmp_path / "etcd", auth_token_ttl=1)
    try:
        cluster.enable_auth("app", "s3cret", "/app/")
        with EtcdClient(cluster.endpoints, timeout=2.0, username="app", password="s3cret") as client:
            revision = client.put("/app/a", "1")
            kv = client.get("/app/a")
            assert kv is not None
            assert kv.value == b"1"
            with client.watch("/app/", prefix=True, start_revision=revision) as watch:
                assert [event.kv.value for event in next(watch).events] == [b"1"]
            with pytest.raises(EtcdError, match=r"etcd http://127\.0\.0\.1:\d+ kv/put: .*permission denied") as info:
                client.put("/elsewhere", "x")
            assert not isinstance(info.value, EtcdUnavailable)
            with pytest.raises(EtcdError, match=r"etcd .* watch: .*permission denied"):
                client.watch("/elsewhere", start_revision=1)

            token = httpx.post(
                f"{cluster.endpoints[0]}/v3/auth/authenticate", json={"name": "app", "password": "s3cret"}
            ).json()["token"]
            time.sleep(2.5)
            expired = httpx.post(
                f"{cluster.endpoints[0]}/v3/kv/range", json={"key": "L2FwcC9h"}, headers={"Authorization": token}
            )
            assert "invalid auth token" in expired.text  # so the client's own token expired too...
            assert client.put("/app/a", "2") > revision  # ...and it got a fresh one
            with client.watch("/app/", prefix=True, start_revision=revision + 1) as watch:
                assert [event.kv.value for event in next(watch).events] == [b"2"]

        with EtcdClient(cluster.endpoints, timeout=2.0, username="app", password="wrong") as client:
            with pytest.raises(EtcdError, match=r"etcd .* auth/authenticate: .*authentication failed.*'app'") as info:
                client.get("/app/a")
            assert not isinstance(info.value, EtcdUnavailable)
            assert "wrong" not in str(info.value)
        with EtcdClient(cluster.endpoints, timeout=2.0) as client, pytest.raises(EtcdError, match="user name is empty"):
            client.get("/app/a")
    finally:
        cluster.stop()
