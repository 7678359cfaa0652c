"""etcd fixtures: one member for the whole session with a key prefix per test, and 3-member clusters to break."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.discovery.etcd_server import EtcdCluster, MissingEtcdError


def start_etcd(size: int, directory: Path, **options: Any) -> EtcdCluster:
    """A started :class:`EtcdCluster`; the test fails (no skip: CI installs etcd) when etcd is not installed."""
    try:
        return EtcdCluster(directory, members=size, **options).start()
    except MissingEtcdError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A single etcd member shared by the session: use ``etcd_prefix`` for keys, so tests don't see each other."""
    cluster = start_etcd(1, tmp_path_factory.mktemp("etcd"))
    yield cluster
    cluster.stop()


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix of this test's own, ``/t/<uuid>/``."""
    return f"/t/{uuid.uuid4().hex}/"


@pytest.fixture
def etcd3(tmp_path: Path) -> Iterator[EtcdCluster]:
    """Three etcd members of the test's own, to kill and restart."""
    cluster = start_etcd(3, tmp_path / "etcd")
    yield cluster
    cluster.stop()
