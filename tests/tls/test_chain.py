"""A three-service chain, frontend → reviews → ratings, each hop mTLS with SPIFFE checks, in process and via sidecars.

Each upstream is a TLS server that requires a client certificate of the CA.
reviews answers by calling ratings through its own mesh (its own mesh
client in process, its own ``meshlib proxy`` in the sidecar case), so every
hop presents its own workload certificate and checks the next one's ID.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshlib
from tests.conftest import Caller
from tests.sidecar import proxy_process
from tests.tls.conftest import ServeTls
from tests.tls.pki import Workload, spiffe
from tests.tls.tls_server import Handler, Request

pytestmark = pytest.mark.anyio


def _hop(service: str, upstream: str, workload: Workload, expected: str) -> dict[str, Any]:
    return {"service": service, "clusters": {expected: {"endpoints": [upstream], "tls": workload.client_tls(expected)}}}


def calls_ratings(client: Callable[[], httpx.AsyncClient]) -> Handler:
    """reviews' handler: ask ratings (through ``client()``), and answer with who called each of the two."""

    async def handle(request: Request) -> tuple[int, bytes]:
        async with client() as ratings:
            answer = (await ratings.get("http://ratings/stars")).json()
        body = {"reviews_saw": request.connection.peer_id, "ratings_saw": answer["peer"]}
        return 200, json.dumps(body).encode()

    return handle


async def test_each_hop_presents_its_own_identity_in_process(
    caller: Caller, serve_tls: ServeTls, workloads: dict[str, Workload]
) -> None:
    with (
        serve_tls(workloads["ratings"]) as ratings,
        meshlib.Mesh.from_dict(_hop("reviews", ratings.url, workloads["reviews"], "ratings")) as reviews_mesh,
        serve_tls(workloads["reviews"], calls_ratings(reviews_mesh.async_client)) as reviews,
        meshlib.Mesh.from_dict(_hop("frontend", reviews.url, workloads["frontend"], "reviews")) as frontend_mesh,
    ):
        async with caller(frontend_mesh) as client:
            answers = [(await client.get("http://reviews/")).json() for _ in range(3)]
    assert answers == [{"reviews_saw": spiffe("frontend"), "ratings_saw": spiffe("reviews")}] * 3
    assert sum(c.requests for c in ratings.connections) == 3


def test_each_hop_presents_its_own_identity_through_sidecars(
    serve_tls: ServeTls, workloads: dict[str, Workload], tmp_path: Path
) -> None:
    with serve_tls(workloads["ratings"]) as ratings:
        reviews_config = _hop("reviews", ratings.url, workloads["reviews"], "ratings")
        with proxy_process.running(tmp_path / "reviews-sidecar", reviews_config) as reviews_sidecar:
            app_mesh = meshlib.Mesh()

            def via_reviews_sidecar() -> httpx.AsyncClient:
                return app_mesh.async_client(mode="sidecar", sidecar=reviews_sidecar.proxy_url)

            with serve_tls(workloads["reviews"], calls_ratings(via_reviews_sidecar)) as reviews:
                frontend_config = _hop("frontend", reviews.url, workloads["frontend"], "reviews")
                with (
                    proxy_process.running(tmp_path / "frontend-sidecar", frontend_config) as frontend_sidecar,
                    app_mesh.client(mode="sidecar", sidecar=frontend_sidecar.proxy_url) as client,
                ):
                    answers = [client.get("http://reviews/").json() for _ in range(3)]
                    stats = httpx.get(frontend_sidecar.admin_url + "/stats").json()
    assert answers == [{"reviews_saw": spiffe("frontend"), "ratings_saw": spiffe("reviews")}] * 3
    # The frontend sidecar kept its connection to reviews alive: one handshake for three requests.
    assert [c.requests for c in reviews.connections] == [3]
    assert stats["certificates"]["clusters.reviews.tls.cert_file"]["spiffe_id"] == spiffe("frontend")
