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

from tests.conftest import Caller, MakeMesh, start_server
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
    caller: Caller, serve_tls: ServeTls, workloads: dict[str, Workload], make_mesh: MakeMesh
) -> None:
    with serve_tls(workloads["ratings"]) as ratings:
        reviews_mesh = make_mesh(_hop("reviews", ratings.url, workloads["reviews"], "ratings"))
        with serve_tls(workloads["reviews"], calls_ratings(reviews_mesh.async_client)) as reviews:
            frontend_mesh = make_mesh(_hop("frontend", reviews.url, workloads["frontend"], "reviews"))
            async with caller(frontend_mesh) as client:
                answers = [(await client.get("http://reviews/")).json() for _ in range(3)]
    assert answers == [{"reviews_saw": spiffe("frontend"), "ratings_saw": spiffe("reviews")}] * 3
    assert sum(c.requests for c in ratings.connections) == 3


def test_each_hop_presents_its_own_identity_through_sidecars(
    serve_tls: ServeTls, workloads: dict[str, Workload], tmp_path: Path, make_mesh: MakeMesh
) -> None:
    with serve_tls(workloads["ratings"]) as ratings:
        reviews_config = _hop("reviews", ratings.url, workloads["reviews"], "ratings")
        with proxy_process.running(tmp_path / "reviews-sidecar", reviews_config) as reviews_sidecar:
            app_mesh = make_mesh({"allow_empty": True})

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


def _xfcc_uri(xfcc: str | None) -> str | None:
    """The URI of the last XFCC element (the one the nearest proxy added)."""
    if xfcc is None:
        return None
    last = xfcc.split(",")[-1]
    uri: str | None = next((part[4:] for part in last.split(";") if part.startswith("URI=")), None)
    return uri


def test_each_hop_is_sidecar_to_sidecar_mtls_with_plaintext_apps(
    workloads: dict[str, Workload], tmp_path: Path, make_mesh: MakeMesh
) -> None:
    """Istio's shape: each app speaks plaintext to its own sidecar; sidecars speak mTLS and check SPIFFE IDs both
    ways; each inbound sidecar lets in only the caller its policy names and tells its app who that was (XFCC)."""

    def sidecar_config(name: str, app: str, caller: str, upstream: tuple[str, str] | None) -> dict[str, Any]:
        me = workloads[name]
        config: dict[str, Any] = {
            "service": name,
            "allow_empty": True,
            "sidecar": {"inbound": {"listen": f"127.0.0.1:{proxy_process.free_port()}", "app": app}},
            "inbound": {
                "mtls": {"mode": "strict", "ca_file": str(me.ca), "cert_file": str(me.cert), "key_file": str(me.key)},
                "authorization": [{"action": "allow", "rules": [{"from": {"principals": [spiffe(caller)]}}]}],
            },
        }
        if upstream is not None:
            target, url = upstream
            config["clusters"] = {target: {"endpoints": [url], "tls": me.client_tls(target)}}
        return config

    def inbound_url(config: dict[str, Any]) -> str:
        return f"https://{config['sidecar']['inbound']['listen']}"

    seen: dict[str, list[str | None]] = {"ratings": [], "reviews": []}

    async def ratings_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])
        seen["ratings"].append(_xfcc_uri(headers.get(b"x-forwarded-client-cert", b"").decode() or None))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"5 stars"})

    reviews_outbound: list[str] = []
    app_mesh = make_mesh({"allow_empty": True})  # the apps' mesh: sidecar mode only, its config is unused

    async def reviews_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])
        seen["reviews"].append(_xfcc_uri(headers.get(b"x-forwarded-client-cert", b"").decode() or None))
        async with app_mesh.async_client(mode="sidecar", sidecar=reviews_outbound[0]) as client:
            stars = (await client.get("http://ratings/stars")).text
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": stars.encode()})

    ratings_server = start_server(ratings_app, "ratings-app")
    reviews_server = start_server(reviews_app, "reviews-app")
    try:
        ratings_config = sidecar_config("ratings", ratings_server.url, "reviews", None)
        with proxy_process.running(tmp_path / "ratings", ratings_config):
            reviews_config = sidecar_config(
                "reviews", reviews_server.url, "frontend", ("ratings", inbound_url(ratings_config))
            )
            with proxy_process.running(tmp_path / "reviews", reviews_config) as reviews_sidecar:
                reviews_outbound.append(reviews_sidecar.proxy_url)
                frontend_config = {
                    "service": "frontend",
                    "clusters": {
                        "reviews": {
                            "endpoints": [inbound_url(reviews_config)],
                            "tls": workloads["frontend"].client_tls("reviews"),
                        }
                    },
                }
                with (
                    proxy_process.running(tmp_path / "frontend", frontend_config) as frontend_sidecar,
                    app_mesh.client(mode="sidecar", sidecar=frontend_sidecar.proxy_url) as client,
                ):
                    answers = [client.get("http://reviews/api/reviews/1") for _ in range(3)]
                    # ratings' sidecar lets in reviews only: the frontend's own certificate is refused by policy.
                    ratings_direct = {
                        "endpoints": [inbound_url(ratings_config)],
                        "tls": workloads["frontend"].client_tls("ratings"),
                    }
                    with make_mesh({"clusters": {"ratings": ratings_direct}}).client() as direct:
                        refused = direct.get("http://ratings/stars")
    finally:
        ratings_server.stop()
        reviews_server.stop()
    assert [(a.status_code, a.text) for a in answers] == [(200, "5 stars")] * 3
    assert seen["reviews"] == [spiffe("frontend")] * 3
    assert seen["ratings"] == [spiffe("reviews")] * 3
    assert refused.status_code == 403
    assert refused.headers["x-meshlib-error"] == "forbidden"
