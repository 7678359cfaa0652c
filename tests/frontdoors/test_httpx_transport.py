"""MeshTransport's network backend: httpx's own until the config needs interrupts (a hedge or a timeout), then one
that lets a winning hedge interrupt a try blocked in a read and ends a read at the try's deadline."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import meshlib
from meshlib._engine.interrupt import InterruptibleBackend, interruptible, interrupts_needed
from tests.conftest import MakeMesh, RunningServer, StallRecorder, echo_app, raw_server, start_server

URL = "http://reviews/x"


@pytest.fixture
def fast() -> Iterator[RunningServer]:
    server = start_server(echo_app("fast"), "fast")
    yield server
    server.stop()


def _cluster(*endpoints: str, **policies: Any) -> dict[str, Any]:
    return {"clusters": {"reviews": {"endpoints": list(endpoints), **policies}}}


def _backend(client: httpx.Client) -> Any:
    """The network backend of the pool of the client's HTTPTransport (the mesh's inner one once wrapped)."""
    transport: Any = client._transport
    return getattr(transport, "inner", transport)._pool._network_backend


@pytest.mark.parametrize("how", ["wrap", "mesh.client"])
def test_without_hedges_or_timeouts_httpx_keeps_its_own_network_backend(
    make_mesh: MakeMesh, fast: RunningServer, how: str
) -> None:
    """A retry, a breaker, outlier detection: nothing to interrupt a read for, so httpcore's pool is not touched."""
    mesh = make_mesh(
        _cluster(
            fast.url,
            retry={"attempts": 2},
            circuit_breaker={"failure_threshold": 5},
            outlier_detection={"consecutive_5xx": 5},
        )
    )
    if how == "wrap":
        client = httpx.Client()
        backend = _backend(client)
        assert meshlib.wrap(client, mesh) is client
    else:
        client = mesh.client()
        backend = _backend(client)
    with client:
        assert _backend(client) is backend
        assert not isinstance(backend, InterruptibleBackend)
        assert client.get(URL).json()["name"] == "fast"
        assert _backend(client) is backend
        assert not interruptible(client._transport.inner)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("where", "policies"),
    [
        ("cluster", {"hedge": {"after": "50ms"}}),
        ("cluster", {"timeout": "1s"}),
        ("cluster", {"retry": {"per_try_timeout": "1s"}}),
        ("route", {"hedge": {"after": "50ms"}}),
        ("route", {"timeout": "1s"}),
        ("route", {"retry": {"attempts": 2, "per_try_timeout": "1s"}}),
    ],
)
def test_a_hedge_or_a_timeout_gets_the_interrupting_backend_at_once(
    make_mesh: MakeMesh, where: str, policies: dict[str, Any]
) -> None:
    config = _cluster("http://127.0.0.1:9081", **(policies if where == "cluster" else {}))
    if where == "route":
        config["routes"] = [{"match": {"path_prefix": "/"}, "cluster": "reviews", **policies}]
    mesh = make_mesh(config)
    assert interrupts_needed(mesh.config)
    client = httpx.Client()
    original = _backend(client)
    with meshlib.wrap(client, mesh):
        assert isinstance(_backend(client), InterruptibleBackend)
        assert _backend(client)._inner is original
        assert interruptible(client._transport.inner)  # type: ignore[attr-defined]


def test_a_reload_that_brings_a_hedge_gives_the_client_the_backend_and_the_hedge_interrupts(
    make_mesh: MakeMesh, fast: RunningServer
) -> None:
    """Installed at the first request after the reload; the hedge that wins then interrupts the stalled inline try."""
    stalled = StallRecorder()
    with raw_server(stalled) as slow:
        mesh = make_mesh(_cluster(fast.url))
        with mesh.client() as client:
            original = _backend(client)
            # Connection: close, so that no connection opened through httpx's own backend stays in the pool.
            assert client.get(URL, headers={"connection": "close"}).json()["name"] == "fast"
            assert _backend(client) is original
            mesh.reload(_cluster(slow.url, fast.url, hedge={"after": "50ms"}))
            assert _backend(client) is original  # not before a request needs it
            started = time.monotonic()
            response = client.get(URL)
            elapsed = time.monotonic() - started
            assert response.json()["name"] == "fast"
            assert elapsed < 1.0  # the stalled server never answers: the hedge's answer came at once
            assert stalled.hung_up.wait(2.0), "the interrupted try's connection was not closed"
            assert isinstance(_backend(client), InterruptibleBackend)
            assert interruptible(client._transport.inner)  # type: ignore[attr-defined]
        counters = mesh.stats()["clusters"]["reviews"]["counters"]
        assert counters == {"hedges": 1, "hedge_wins": 1}


def test_connections_opened_before_the_backend_keep_the_transport_uninterruptible_until_gone(
    make_mesh: MakeMesh, fast: RunningServer
) -> None:
    """Their streams do not honour an Interrupt: while one is in the pool, hedges run every try on a worker thread."""
    mesh = make_mesh(_cluster(fast.url))
    with mesh.client(limits=httpx.Limits(keepalive_expiry=0.2)) as client:
        inner = client._transport.inner  # type: ignore[attr-defined]
        assert client.get(URL).status_code == 200  # its connection stays in the pool
        mesh.reload(_cluster(fast.url, timeout="5s"))
        assert client.get(URL).status_code == 200  # installs the backend; the old connection answers it
        assert isinstance(_backend(client), InterruptibleBackend)
        assert not interruptible(inner)
        time.sleep(0.3)  # the old connection's keep-alive runs out: the next request replaces it
        assert client.get(URL).status_code == 200
        assert interruptible(inner)


def test_a_reload_that_drops_the_hedge_keeps_the_backend(make_mesh: MakeMesh, fast: RunningServer) -> None:
    """Installed once for good: a later reload may bring a hedge back, and the backend costs little when idle."""
    mesh = make_mesh(_cluster(fast.url, hedge={"after": "1s"}))
    with mesh.client() as client:
        backend = _backend(client)
        assert isinstance(backend, InterruptibleBackend)
        mesh.reload(_cluster(fast.url))
        assert not interrupts_needed(mesh.config)
        assert client.get(URL).json()["name"] == "fast"
        assert _backend(client) is backend
