"""Endpoints and config from a real etcd, end to end: registration, subsets, leases, config push, failures.

Each test works under a prefix of its own on the session's single-member etcd
(fixtures in conftest.py); the three-member cluster's leader loss is in
test_etcd_cluster.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshlib
from meshlib._discovery.etcd_client import EtcdClient
from meshlib._discovery.etcd_watch import EtcdWatch
from tests.discovery.etcd_server import EtcdCluster
from tests.discovery.upstreams import upstreams
from tests.sidecar import proxy_process

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


@pytest.fixture
def port() -> Iterator[int]:
    with upstreams(HOSTS) as shared:
        yield shared


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout}s")
        time.sleep(0.02)


def registry(etcd: EtcdCluster, prefix: str, **etcd_extra: Any) -> dict[str, Any]:
    return {"etcd": {"endpoints": etcd.endpoints, "prefix": prefix, **etcd_extra}}


def registered(etcd: EtcdCluster, prefix: str, service: str, address: str, **labels: str) -> meshlib.Mesh:
    """A mesh in process that registers ``address`` for ``service`` (ttl 2s, so a crash shows quickly)."""
    register = {"service": service, "address": address, "labels": labels, "ttl": "2s"}
    return meshlib.Mesh.from_dict({"registry": {**registry(etcd, prefix), "register": register}})


def caller(etcd: EtcdCluster, prefix: str, clusters: dict[str, Any], **extra: Any) -> meshlib.Mesh:
    config = {"registry": registry(etcd, prefix), "clusters": clusters, **extra}
    return meshlib.Mesh.from_dict(config)


def endpoints(mesh: meshlib.Mesh, cluster: str) -> set[str]:
    return set(mesh.stats()["clusters"][cluster]["endpoints"])


def test_registered_instances_become_endpoints_and_labels_select_subsets(
    etcd: EtcdCluster, etcd_prefix: str, port: int
) -> None:
    v1 = registered(etcd, etcd_prefix, "reviews", f"http://{HOSTS[0]}:{port}", version="v1")
    v2 = registered(etcd, etcd_prefix, "reviews", f"http://{HOSTS[1]}:{port}", version="v2")
    clusters = {
        "reviews": {"discovery": {"etcd": {"service": "reviews"}}},
        "reviews-v1": {"discovery": {"etcd": {"service": "reviews", "labels": {"version": "v1"}}}},
        "reviews-v2": {"discovery": {"etcd": {"service": "reviews", "labels": {"version": "v2"}}}},
        "ratings": {"discovery": {"etcd": {"service": "ratings"}}},
    }
    with v1, v2, caller(etcd, etcd_prefix, clusters) as mesh, mesh.client() as client:
        assert endpoints(mesh, "reviews") == {f"http://{h}:{port}" for h in HOSTS[:2]}
        assert endpoints(mesh, "reviews-v1") == {f"http://{HOSTS[0]}:{port}"}
        assert endpoints(mesh, "reviews-v2") == {f"http://{HOSTS[1]}:{port}"}
        assert endpoints(mesh, "ratings") == set()
        assert client.get("http://reviews-v2/").text == HOSTS[1]
        with pytest.raises(meshlib.NoHealthyUpstreamError):
            client.get("http://ratings/")
        # A third instance joins while the mesh runs.
        with registered(etcd, etcd_prefix, "reviews", f"http://{HOSTS[2]}:{port}", version="v1"):
            wait_for(lambda: len(endpoints(mesh, "reviews-v1")) == 2, what="the new v1 instance")
            assert {client.get("http://reviews-v1/").text for _ in range(10)} == {HOSTS[0], HOSTS[2]}
        # Its graceful close deleted its key at once.
        wait_for(lambda: len(endpoints(mesh, "reviews-v1")) == 1, timeout=2, what="deregistration")
        assert mesh.stats()["discovery"]["etcd"]["connected"] is True


def test_a_canary_split_between_two_subsets_of_one_service(etcd: EtcdCluster, etcd_prefix: str, port: int) -> None:
    v1 = registered(etcd, etcd_prefix, "reviews", f"http://{HOSTS[0]}:{port}", version="v1")
    v2 = registered(etcd, etcd_prefix, "reviews", f"http://{HOSTS[1]}:{port}", version="v2")
    clusters = {
        "reviews-v1": {"discovery": {"etcd": {"service": "reviews", "labels": {"version": "v1"}}}},
        "reviews-v2": {"discovery": {"etcd": {"service": "reviews", "labels": {"version": "v2"}}}},
    }
    routes = [
        {
            "match": {"host": "reviews"},
            "split": [{"cluster": "reviews-v1", "weight": 90}, {"cluster": "reviews-v2", "weight": 10}],
        }
    ]
    config = {"registry": registry(etcd, etcd_prefix), "clusters": clusters, "routes": routes}
    with v1, v2, meshlib.Mesh.from_dict(config, rng=random.Random(7)) as mesh, mesh.client() as client:
        counts = Counter(client.get("http://reviews/").text for _ in range(400))
    assert 320 <= counts[HOSTS[0]] <= 390, counts
    assert counts[HOSTS[0]] + counts[HOSTS[1]] == 400


def test_a_crashed_workloads_lease_expires_and_it_leaves(etcd: EtcdCluster, etcd_prefix: str, port: int) -> None:
    address = f"http://{HOSTS[0]}:{port}"
    script = textwrap.dedent(f"""
        import sys, time, meshlib
        mesh = meshlib.Mesh.from_dict({{"registry": {{"etcd": {{"endpoints": {etcd.endpoints!r},
            "prefix": {etcd_prefix!r}}}, "register": {{"service": "reviews", "address": {address!r}, "ttl": "2s"}}}}}})
        print("registered", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "registered"
        clusters = {"reviews": {"discovery": {"etcd": {"service": "reviews"}}}}
        with caller(etcd, etcd_prefix, clusters) as mesh:
            assert endpoints(mesh, "reviews") == {address}
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=5)
            killed = time.monotonic()
            wait_for(lambda: not endpoints(mesh, "reviews"), timeout=6, what="lease expiry")
            # Not before the lease could expire (ttl 2s), and soon after.
            assert 1.0 <= time.monotonic() - killed <= 5.0
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_the_registration_key_names_host_and_port_under_the_prefix(etcd: EtcdCluster, etcd_prefix: str) -> None:
    with registered(etcd, etcd_prefix, "reviews", "http://127.0.0.1:9081", version="v2") as mesh:
        client = EtcdClient(etcd.endpoints)
        kv = client.get(f"{etcd_prefix}services/reviews/127.0.0.1:9081")
        assert kv is not None
        assert json.loads(kv.value) == {"address": "http://127.0.0.1:9081", "labels": {"version": "v2"}}
        assert kv.lease != 0
        stats = mesh.stats()["discovery"]["registration"]
        assert stats["registered"] is True
        assert stats["key"] == f"{etcd_prefix}services/reviews/127.0.0.1:9081"
    assert client.get(f"{etcd_prefix}services/reviews/127.0.0.1:9081") is None
    client.close()


def test_in_process_registration_needs_an_address(etcd: EtcdCluster, etcd_prefix: str) -> None:
    config = {"registry": {**registry(etcd, etcd_prefix), "register": {"service": "reviews"}}}
    with pytest.raises(meshlib.ConfigError) as info:
        meshlib.Mesh.from_dict(config)
    assert info.value.errors == [
        ("registry.register.address", "set the address this app serves on (only the sidecar has a default)")
    ]


# --- config from etcd ------------------------------------------------------------------------------------------------


def _push(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``meshlib config push PATH ARGS...``, as a user runs it."""
    command = [sys.executable, "-m", "meshlib", "config", "push", str(path), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def _push_to(etcd: EtcdCluster, path: Path, key: str) -> subprocess.CompletedProcess[str]:
    return _push(path, "--etcd", ",".join(etcd.endpoints), "--key", key)


def test_config_push_and_refusal(etcd: EtcdCluster, etcd_prefix: str, port: int, tmp_path: Path) -> None:
    key = f"{etcd_prefix}config/frontend"
    local = {"registry": registry(etcd, etcd_prefix), "config_source": {"etcd": {"key": key}}}
    good = tmp_path / "good.yaml"
    good.write_text(f"clusters:\n  ratings:\n    endpoints: ['http://{HOSTS[0]}:{port}']\n")
    pushed = _push_to(etcd, good, key)
    assert pushed.returncode == 0, pushed.stderr
    assert "revision" in pushed.stdout

    client = EtcdClient(etcd.endpoints)
    with meshlib.Mesh.from_dict(local) as mesh, mesh.client() as http:
        assert http.get("http://ratings/").text == HOSTS[0]
        status_key = f"{etcd_prefix}config-status/config/frontend/"
        wait_for(lambda: client.range(status_key, prefix=True)[1], what="the accepted status")
        [status] = client.range(status_key, prefix=True)[1]
        assert json.loads(status.value)["state"] == "accepted"

        # A document that changes the endpoint: applied as a reload.
        good.write_text(f"clusters:\n  ratings:\n    endpoints: ['http://{HOSTS[1]}:{port}']\n")
        assert _push_to(etcd, good, key).returncode == 0
        wait_for(lambda: http.get("http://ratings/").text == HOSTS[1], what="the pushed config")
        assert mesh.stats()["reloads"]["accepted"] >= 1

        # The CLI refuses an invalid file and writes nothing.
        bad = tmp_path / "bad.yaml"
        bad.write_text("clusters:\n  ratings:\n    endpoints: []\n")
        refused = _push_to(etcd, bad, key)
        assert refused.returncode == 2
        assert "clusters.ratings.endpoints: must not be empty" in refused.stderr
        assert b"127.0.0.2" in client.get(key).value  # type: ignore[union-attr]

        # Written past the CLI, an invalid document is refused by the mesh: the old config serves on.
        client.put(key, "clusters: {ratings: {endpoints: [], lb: fastest}}")
        wait_for(lambda: mesh.stats()["reloads"]["refused"] >= 1, what="the refusal")
        assert http.get("http://ratings/").text == HOSTS[1]
        wait_for(lambda: json.loads(client.range(status_key, prefix=True)[1][0].value)["state"] == "refused")
        refused_status = json.loads(client.range(status_key, prefix=True)[1][0].value)
        assert "clusters.ratings.endpoints: must not be empty" in refused_status["error"]
        assert mesh.stats()["discovery"]["config_source"]["error"] == refused_status["error"]
    client.close()


def test_config_push_to_an_unreachable_etcd_fails_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text("clusters:\n  ratings:\n    endpoints: ['http://127.0.0.1:9090']\n")
    dead = proxy_process.free_port()
    result = _push(path, "--etcd", f"http://127.0.0.1:{dead}", "--key", "/meshlib/config/x", "--timeout", "1")
    assert result.returncode == 4
    assert "etcd" in result.stderr
    assert f"127.0.0.1:{dead}" in result.stderr


def test_a_document_may_not_move_the_mesh_off_etcd(etcd: EtcdCluster, etcd_prefix: str, tmp_path: Path) -> None:
    path = tmp_path / "doc.yaml"
    path.write_text("registry: {}\nclusters:\n  a:\n    endpoints: ['http://127.0.0.1:1']\n")
    result = _push_to(etcd, path, f"{etcd_prefix}config/x")
    assert result.returncode == 2
    assert "registry: is set in the local config file only" in result.stderr


# --- failure is normal ---------------------------------------------------------------------------------------------


def test_unreachable_at_start_without_a_snapshot_fails_naming_etcd(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{proxy_process.free_port()}"
    config = {
        "registry": {"etcd": {"endpoints": [dead], "start_timeout": "1s", "timeout": "200ms"}},
        "clusters": {"reviews": {"discovery": {"etcd": {"service": "reviews"}}}},
    }
    started = time.monotonic()
    with pytest.raises(meshlib.DiscoveryError) as info:
        meshlib.Mesh.from_dict(config)
    assert time.monotonic() - started < 5
    assert "etcd unreachable for 1s at start and no snapshot is configured" in str(info.value)
    assert dead in str(info.value)


def test_a_snapshot_starts_the_mesh_while_etcd_is_down(
    etcd: EtcdCluster, etcd_prefix: str, port: int, tmp_path: Path
) -> None:
    snapshot = tmp_path / "state" / "frontend.json"
    clusters = {"reviews": {"discovery": {"etcd": {"service": "reviews"}}}}
    with (
        registered(etcd, etcd_prefix, "reviews", f"http://{HOSTS[0]}:{port}"),
        caller(etcd, etcd_prefix, clusters, registry=registry(etcd, etcd_prefix, snapshot=str(snapshot))),
    ):
        pass  # closing saves the snapshot
    assert snapshot.exists()
    # etcd "down": the mesh is pointed at a dead member, with the same snapshot.
    dead = f"http://127.0.0.1:{proxy_process.free_port()}"
    config = {
        "registry": {
            "etcd": {"endpoints": [dead], "prefix": etcd_prefix, "snapshot": str(snapshot), "timeout": "200ms"}
        },
        "clusters": clusters,
    }
    with meshlib.Mesh.from_dict(config) as mesh, mesh.client() as client:
        assert client.get("http://reviews/").text == HOSTS[0]
        state = mesh.stats()["discovery"]["etcd"]
        assert state["started_from_snapshot"] is True
        assert state["connected"] is False
        assert state["stale_since"] is not None


def test_snapshot_without_etcd_and_a_corrupt_snapshot_is_ignored(tmp_path: Path) -> None:
    snapshot = tmp_path / "frontend.json"
    snapshot.write_text("{not json")
    dead = f"http://127.0.0.1:{proxy_process.free_port()}"
    config = {
        "registry": {
            "etcd": {"endpoints": [dead], "snapshot": str(snapshot), "start_timeout": "500ms", "timeout": "200ms"}
        },
        "clusters": {"reviews": {"discovery": {"etcd": {"service": "reviews"}}}},
    }
    with pytest.raises(meshlib.DiscoveryError, match=f"no snapshot at {snapshot}"):
        meshlib.Mesh.from_dict(config)


def test_etcd_lost_and_back_keeps_serving_and_resumes(tmp_path: Path, port: int) -> None:
    with EtcdCluster(tmp_path / "etcd", members=1) as etcd:
        prefix = "/lost/"
        clusters = {"reviews": {"discovery": {"etcd": {"service": "reviews"}}}}
        with (
            registered(etcd, prefix, "reviews", f"http://{HOSTS[0]}:{port}"),
            caller(etcd, prefix, clusters) as mesh,
            mesh.client() as client,
        ):
            etcd.kill(0)
            wait_for(lambda: mesh.stats()["discovery"]["etcd"]["connected"] is False, what="noticing etcd is gone")
            assert mesh.stats()["discovery"]["etcd"]["stale_since"] is not None
            for _ in range(20):  # never blanked
                assert client.get("http://reviews/").text == HOSTS[0]
            etcd.restart(0)
            back = time.monotonic()
            wait_for(lambda: mesh.stats()["discovery"]["etcd"]["connected"], timeout=10, what="reconnecting")
            assert time.monotonic() - back < 5  # capped backoff: back in use within seconds
            # The watch resumed: a change made now arrives.
            with registered(etcd, prefix, "reviews", f"http://{HOSTS[1]}:{port}"):
                wait_for(lambda: len(endpoints(mesh, "reviews")) == 2, what="a change after the restart")


def test_a_compacted_revision_lists_again(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """A view from an old revision (a snapshot file, a long outage) that etcd has compacted: list again, whole."""
    client = EtcdClient(etcd.endpoints)
    old = client.put(f"{etcd_prefix}services/reviews/a:1", json.dumps({"address": "http://a:1"}))
    client.delete(f"{etcd_prefix}services/reviews/a:1")
    current = client.put(f"{etcd_prefix}services/reviews/b:1", json.dumps({"address": "http://b:1"}))
    client.compact(current)
    changes: list[int] = []
    watch = EtcdWatch(client, etcd_prefix, changes.append)
    watch.seed({f"{etcd_prefix}services/reviews/a:1": b'{"address": "http://a:1"}'}, old)
    watch.start(listed=True)  # watches from old + 1, which etcd no longer has
    try:
        wait_for(lambda: watch.stats()["relists"] == 1, what="a fresh list")
        view, revision = watch.view_at()
        assert list(view) == [f"{etcd_prefix}services/reviews/b:1"]  # the deletion is not missed
        assert revision >= current
        wait_for(lambda: watch.stats()["connected"], what="watching again")
    finally:
        watch.close()
        client.close()


# --- through the sidecar ---------------------------------------------------------------------------------------------


def test_the_sidecar_registers_its_inbound_listener_and_deregisters_before_draining(
    etcd: EtcdCluster, etcd_prefix: str, port: int, tmp_path: Path
) -> None:
    inbound = proxy_process.free_port()
    config = {
        "registry": {**registry(etcd, etcd_prefix), "register": {"service": "reviews", "labels": {"version": "v2"}}},
        "clusters": {"reviews-v2": {"discovery": {"etcd": {"service": "reviews", "labels": {"version": "v2"}}}}},
        "sidecar": {"inbound": {"listen": f"127.0.0.1:{inbound}", "app": f"http://127.0.0.1:{port}"}},
    }
    client = EtcdClient(etcd.endpoints)
    key = f"{etcd_prefix}services/reviews/127.0.0.1:{inbound}"
    proxy = proxy_process.start_ready(tmp_path, config)
    try:
        wait_for(lambda: client.get(key) is not None, what="the sidecar's registration")
        # Its own outbound side discovers it: outbound -> its inbound listener -> the app.
        with proxy.client(timeout=5) as http:
            wait_for(lambda: http.get("http://reviews-v2/").status_code == 200, what="its own registration")
            assert http.get("http://reviews-v2/").text == "127.0.0.1"
        stats = httpx.get(proxy.admin_url + "/stats", trust_env=False).json()["discovery"]
        assert stats["registration"]["address"] == f"http://127.0.0.1:{inbound}"
        proxy.signal(signal.SIGTERM)
        proxy.wait_for_line("draining")
        assert client.get(key) is None  # deleted before the drain began
        assert proxy.wait() == 0
        log = proxy.log
        assert log.index("deregistered") < log.index("draining")
    finally:
        proxy.stop()
        client.close()


def test_the_sidecar_exits_naming_etcd_when_it_cannot_start(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{proxy_process.free_port()}"
    config = {
        "registry": {"etcd": {"endpoints": [dead], "start_timeout": "500ms", "timeout": "200ms"}},
        "clusters": {"reviews": {"discovery": {"etcd": {"service": "reviews"}}}},
    }
    proxy = proxy_process.start(tmp_path, config)
    assert proxy.wait(timeout=20) == 4
    proxy.stop()
    assert "etcd unreachable" in proxy.log
    assert dead in proxy.log


def test_the_sidecar_takes_its_config_from_etcd(etcd: EtcdCluster, etcd_prefix: str, port: int, tmp_path: Path) -> None:
    key = f"{etcd_prefix}config/sidecar"
    client = EtcdClient(etcd.endpoints)
    client.put(key, json.dumps({"clusters": {"ratings": {"endpoints": [f"http://{HOSTS[2]}:{port}"]}}}))
    config = {"registry": registry(etcd, etcd_prefix), "config_source": {"etcd": {"key": key}}}
    with proxy_process.running(tmp_path, config) as proxy, proxy.client(timeout=5) as http:
        assert http.get("http://ratings/").text == HOSTS[2]
        client.put(key, json.dumps({"clusters": {"ratings": {"endpoints": [f"http://{HOSTS[0]}:{port}"]}}}))
        wait_for(lambda: http.get("http://ratings/").text == HOSTS[0], what="the new document")
    client.close()


def test_stats_show_etcd_state(etcd: EtcdCluster, etcd_prefix: str) -> None:
    clusters = {"reviews": {"discovery": {"etcd": {"service": "reviews"}}}}
    with caller(etcd, etcd_prefix, clusters) as mesh:
        state = mesh.stats()["discovery"]["etcd"]
    assert state["connected"] is True
    assert state["stale_since"] is None
    assert state["revision"] > 0
    assert state["member"] in etcd.endpoints
    assert state["prefix"] == etcd_prefix


def test_no_thread_is_left_after_close(etcd: EtcdCluster, etcd_prefix: str) -> None:
    import threading

    clusters = {"reviews": {"discovery": {"etcd": {"service": "reviews"}}}}
    with registered(etcd, etcd_prefix, "x", "http://127.0.0.1:1"), caller(etcd, etcd_prefix, clusters):
        pass
    wait_for(
        lambda: not [t for t in threading.enumerate() if t.name.startswith(("meshlib-etcd", "meshlib-discovery"))],
        what="discovery threads to stop",
    )
    assert os.getpid()


def test_a_killed_sidecars_registration_expires(etcd: EtcdCluster, etcd_prefix: str, port: int, tmp_path: Path) -> None:
    inbound = proxy_process.free_port()
    config = {
        "registry": {**registry(etcd, etcd_prefix), "register": {"service": "reviews", "ttl": "2s"}},
        "sidecar": {"inbound": {"listen": f"127.0.0.1:{inbound}", "app": f"http://127.0.0.1:{port}"}},
    }
    client = EtcdClient(etcd.endpoints)
    key = f"{etcd_prefix}services/reviews/127.0.0.1:{inbound}"
    proxy = proxy_process.start_ready(tmp_path, config)
    try:
        wait_for(lambda: client.get(key) is not None, what="the sidecar's registration")
        proxy.proc.kill()  # a crash: no deregistration
        proxy.wait()
        killed = time.monotonic()
        wait_for(lambda: client.get(key) is None, timeout=6, what="the lease to expire")
        assert time.monotonic() - killed >= 0.5
    finally:
        proxy.stop()
        client.close()


def test_the_sidecar_refuses_a_bad_document_and_reports_it(
    etcd: EtcdCluster, etcd_prefix: str, port: int, tmp_path: Path
) -> None:
    key = f"{etcd_prefix}config/sidecar"
    client = EtcdClient(etcd.endpoints)
    client.put(key, f"clusters: {{ratings: {{endpoints: ['http://{HOSTS[1]}:{port}']}}}}")
    config = {"registry": registry(etcd, etcd_prefix), "config_source": {"etcd": {"key": key}}}
    with proxy_process.running(tmp_path, config) as proxy, proxy.client(timeout=5) as http:
        client.put(key, "clusters: {ratings: {endpoints: ['not a url']}}")

        def refused() -> bool:
            stats = httpx.get(proxy.admin_url + "/stats", trust_env=False).json()
            return bool(stats["reloads"]["refused"])

        wait_for(refused, what="the refusal")
        assert http.get("http://ratings/").text == HOSTS[1]  # the old config serves on
        source = httpx.get(proxy.admin_url + "/stats", trust_env=False).json()["discovery"]["config_source"]
        assert "clusters.ratings.endpoints[0].url" in source["error"]
        statuses = client.range(f"{etcd_prefix}config-status/", prefix=True)[1]
        wait_for(
            lambda: any(
                json.loads(s.value)["state"] == "refused"
                for s in client.range(f"{etcd_prefix}config-status/", prefix=True)[1]
            )
        )
        assert statuses
    client.close()


@pytest.mark.anyio
async def test_an_async_client_uses_discovered_endpoints(etcd: EtcdCluster, etcd_prefix: str, port: int) -> None:
    clusters = {"reviews": {"discovery": {"etcd": {"service": "reviews", "labels": {"version": "v2"}}}}}
    with registered(etcd, etcd_prefix, "reviews", f"http://{HOSTS[2]}:{port}", version="v2"):
        mesh = caller(etcd, etcd_prefix, clusters)
        async with mesh, mesh.async_client(transport=meshlib.AsyncHTTP1Transport()) as client:
            assert (await client.get("http://reviews/")).text == HOSTS[2]


REVIEWS = {"reviews": {"discovery": {"etcd": {"service": "reviews"}}}}


def _registers_and_discovers(etcd_config: dict[str, Any], port: int) -> None:
    """One mesh registers through ``etcd_config``, another discovers it through the same and sends to it."""
    register = {"service": "reviews", "address": f"http://{HOSTS[0]}:{port}"}
    with (
        meshlib.Mesh.from_dict({"registry": {"etcd": etcd_config, "register": register}}),
        meshlib.Mesh.from_dict({"registry": {"etcd": etcd_config}, "clusters": REVIEWS}) as mesh,
        mesh.client() as client,
    ):
        assert client.get("http://reviews/").text == HOSTS[0]


def test_etcd_over_tls_with_a_client_certificate(tmp_path: Path, port: int) -> None:
    with EtcdCluster(tmp_path / "etcd", members=1, tls=True) as etcd:
        assert etcd.tls is not None
        tls = {
            "ca_file": str(etcd.tls.ca),
            "cert_file": str(etcd.tls.client_cert),
            "key_file": str(etcd.tls.client_key),
        }
        etcd_config = {"endpoints": etcd.endpoints, "prefix": "/secure/", "tls": tls}
        _registers_and_discovers(etcd_config, port)
        # Without the CA, etcd's certificate is not trusted: the start fails, naming etcd.
        untrusted = {**etcd_config, "tls": {k: v for k, v in tls.items() if k != "ca_file"}, "start_timeout": "1s"}
        with pytest.raises(meshlib.DiscoveryError, match="etcd"):
            meshlib.Mesh.from_dict({"registry": {"etcd": untrusted}, "clusters": REVIEWS})


def test_etcd_with_a_user_and_password(tmp_path: Path, port: int) -> None:
    with EtcdCluster(tmp_path / "etcd", members=1) as etcd:
        etcd.enable_auth("mesh", "s3cret", "/secure/")
        etcd_config = {"endpoints": etcd.endpoints, "prefix": "/secure/", "username": "mesh", "password": "s3cret"}
        _registers_and_discovers(etcd_config, port)
        # A wrong password fails the start at once (not after start_timeout), naming etcd and not the password.
        wrong = {**etcd_config, "password": "nope"}
        started = time.monotonic()
        with pytest.raises(meshlib.DiscoveryError) as info:
            meshlib.Mesh.from_dict({"registry": {"etcd": wrong}, "clusters": REVIEWS})
        assert time.monotonic() - started < 10
        assert "etcd" in str(info.value)
        assert "mesh" in str(info.value)
        assert "nope" not in str(info.value)


def test_an_invalid_document_at_start_leaves_the_local_file_serving(
    etcd: EtcdCluster, etcd_prefix: str, port: int
) -> None:
    key = f"{etcd_prefix}config/frontend"
    client = EtcdClient(etcd.endpoints)
    client.put(key, "clusters: {ratings: {endpoints: []}}")
    local = {
        "registry": registry(etcd, etcd_prefix),
        "config_source": {"etcd": {"key": key}},
        "clusters": {"ratings": {"endpoints": [f"http://{HOSTS[0]}:{port}"]}},
    }
    with meshlib.Mesh.from_dict(local) as mesh, mesh.client() as http:
        assert http.get("http://ratings/").text == HOSTS[0]
        assert mesh.stats()["reloads"]["refused"] == 1
        assert "clusters.ratings.endpoints: must not be empty" in mesh.stats()["discovery"]["config_source"]["error"]
        wait_for(lambda: client.range(f"{etcd_prefix}config-status/", prefix=True)[1], what="the refused status")
        [status] = client.range(f"{etcd_prefix}config-status/", prefix=True)[1]
        assert json.loads(status.value)["state"] == "refused"
        # A good document then takes over.
        client.put(key, f"clusters: {{ratings: {{endpoints: ['http://{HOSTS[1]}:{port}']}}}}")
        wait_for(lambda: http.get("http://ratings/").text == HOSTS[1], what="the good document")
    client.close()
