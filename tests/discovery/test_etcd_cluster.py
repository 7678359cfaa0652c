"""A three-member etcd cluster loses its leader while traffic flows and endpoints churn: the mesh doesn't notice.

No request fails, no cluster is ever blanked, and every mesh's view of the
registry converges on etcd's within 2 s of the new leader.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

import meshlib
from meshlib._discovery.etcd_client import EtcdClient, EtcdError
from tests.discovery.etcd_server import EtcdCluster
from tests.discovery.upstreams import upstreams

HOSTS = ("127.0.0.1", "127.0.0.2")
WATCHERS = 3


@pytest.fixture
def port() -> Iterator[int]:
    with upstreams(HOSTS) as shared:
        yield shared


def _view(mesh: meshlib.Mesh, cluster: str) -> set[str]:
    return set(mesh.stats()["clusters"][cluster]["endpoints"])


def test_losing_the_leader_under_traffic_and_churn(etcd3: EtcdCluster, port: int) -> None:
    prefix = "/leader/"
    client = EtcdClient(etcd3.endpoints, timeout=1.0)
    for host in HOSTS:  # the stable service the traffic goes to
        address = f"http://{host}:{port}"
        client.put(f"{prefix}services/stable/{host}:{port}", json.dumps({"address": address}))
    registry = {"etcd": {"endpoints": etcd3.endpoints, "prefix": prefix, "timeout": "1s"}}
    clusters = {
        "stable": {"discovery": {"etcd": {"service": "stable"}}},
        "churn": {"discovery": {"etcd": {"service": "churn"}}},
    }
    meshes = [meshlib.Mesh.from_dict({"registry": registry, "clusters": clusters}) for _ in range(WATCHERS)]
    stop = threading.Event()
    failures: list[str] = []
    blanked: list[int] = []
    sent = [0]

    def traffic(mesh: meshlib.Mesh) -> None:
        with mesh.client(timeout=5) as http:
            while not stop.is_set():
                try:
                    response = http.get("http://stable/")
                    if response.status_code != 200:
                        failures.append(str(response.status_code))
                except Exception as exc:
                    failures.append(repr(exc))
                sent[0] += 1
                if not _view(mesh, "stable"):
                    blanked.append(1)

    def churn() -> None:
        # Instances of another service come and go at ~40 changes/s, through whichever member answers.
        writer = EtcdClient(etcd3.endpoints, timeout=1.0)
        n = 0
        while not stop.is_set():
            key = f"{prefix}services/churn/10.0.{n % 4}.{n % 200}:8080"
            try:
                if n % 3 == 2:
                    writer.delete(key)
                else:
                    writer.put(key, json.dumps({"address": f"http://10.0.{n % 4}.{n % 200}:8080"}))
            except EtcdError:
                pass  # the writer meets the election too; the meshes must not
            n += 1
            time.sleep(0.025)
        writer.close()

    threads = [threading.Thread(target=traffic, args=(m,)) for m in meshes] + [threading.Thread(target=churn)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        old = etcd3.leader()
        etcd3.kill(old)
        new = etcd3.leader(timeout=10)
        elected = time.monotonic()
        assert new != old
        time.sleep(0.5)  # churn and traffic go on under the new leader
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        # Every mesh shows etcd's truth within 2 s of the new leader (the churn went on for half of that).
        survivors = [e for i, e in enumerate(etcd3.endpoints) if i != old]
        truth_client = EtcdClient(survivors, timeout=2.0)
        _, kvs = truth_client.range(f"{prefix}services/churn/", prefix=True)
        truth = {json.loads(kv.value)["address"] for kv in kvs}
        truth_client.close()
        deadline = elected + 2.0
        while time.monotonic() < deadline and any(_view(m, "churn") != truth for m in meshes):
            time.sleep(0.02)
        views = [_view(m, "churn") for m in meshes]
        assert all(view == truth for view in views), (sorted(truth), [sorted(v ^ truth) for v in views])
        assert time.monotonic() - elected < 2.5  # the check itself ran inside the bound
        assert failures == []
        assert blanked == []
        assert sent[0] > 50
        for mesh in meshes:
            assert mesh.stats()["discovery"]["etcd"]["connected"] is True
    finally:
        stop.set()
        for mesh in meshes:
            mesh.close()
        client.close()
