"""Requests through the sidecar get finite timeouts even when nothing is configured (a passthrough)."""

from __future__ import annotations

import time

import httpx
import pytest

from meshlib._frontdoors import sidecar_listeners
from meshlib._frontdoors.sidecar_listeners import outbound_handler
from meshlib._transport import AsyncHTTP1Transport
from tests.conftest import MakeMesh
from tests.failing_upstreams import unaccepting_endpoint
from tests.sidecar.conftest import proxy_url, serving

pytestmark = pytest.mark.anyio


async def test_a_passthrough_to_an_endpoint_that_never_accepts_fails_at_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch, make_mesh: MakeMesh
) -> None:
    monkeypatch.setattr(sidecar_listeners, "DEFAULT_TIMEOUTS", {"connect": 0.2, "read": 5, "write": 5, "pool": 5})
    mesh = make_mesh({"allow_empty": True})  # nothing configured: passes every host through
    with unaccepting_endpoint() as url:
        async with (
            AsyncHTTP1Transport() as sender,
            serving(outbound_handler(mesh, sender)) as proxy,
            httpx.AsyncClient(proxy=proxy_url(proxy), timeout=10) as client,
        ):
            started = time.monotonic()
            response = await client.get(f"{url}/x")
            took = time.monotonic() - started
    assert response.status_code == 503
    assert response.headers["x-meshlib-error"] == "upstream_connect_failure"
    assert 0.15 < took < 2.0


def test_the_defaults_are_those_of_istio_and_envoy() -> None:
    assert sidecar_listeners.DEFAULT_TIMEOUTS == {"connect": 10.0, "read": 300.0, "write": 300.0, "pool": 10.0}
