"""The sidecar's inbound door: TLS termination (strict, permissive), the inbound policy, XFCC, and the bypass table.

The app behind the sidecar is a plain echo app (no middleware): whatever the
policy lets through reaches it with the path and headers it shows back.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshlib
from meshlib._frontdoors.sidecar_listeners import InboundTls, inbound_handler
from meshlib._sidecar.server import HttpServer
from meshlib._transport import AsyncHTTP1Transport
from tests.conftest import start_server
from tests.envoy_process import HCM, ROUTER, running_envoy, stats
from tests.inbound.bypass_cases import CASES, POLICY, Case, raw_request
from tests.tls.pki import Pki, Workload, spiffe

pytestmark = pytest.mark.anyio


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """200 with the path and headers the app was handed."""
    assert scope["type"] == "http"
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    body = json.dumps({"path": scope["path"], "headers": headers}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def app_url() -> Any:
    server = start_server(echo_app, "app")
    yield server.url
    server.stop()


def mtls(workload: Workload, mode: str = "strict") -> dict[str, Any]:
    return {"mode": mode, "ca_file": str(workload.ca), "cert_file": str(workload.cert), "key_file": str(workload.key)}


@asynccontextmanager
async def sidecar(inbound: dict[str, Any], app: str) -> AsyncIterator[tuple[meshlib.Mesh, int]]:
    """The sidecar's inbound listener (in this loop) with ``inbound`` as the policy, forwarding to ``app``."""
    mesh = meshlib.Mesh.from_dict({"allow_empty": True, "inbound": inbound})
    sock = socket.create_server(("127.0.0.1", 0))
    async with AsyncHTTP1Transport() as sender:
        server = HttpServer(
            "inbound", inbound_handler(mesh, app, sender), mesh.config.sidecar.limits, tls=InboundTls(mesh)
        )
        await server.start(sock)
        try:
            yield mesh, server.address[1]
        finally:
            await server.close()
            mesh.close()


def client_context(workload: Workload) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(workload.ca))
    context.check_hostname = False  # SPIFFE certificates name a service, not 127.0.0.1
    context.load_cert_chain(workload.cert, workload.key)
    return context


async def _raw(port: int, data: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return int(head.split(b" ", 2)[1]), body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bypass_case_through_the_sidecar(app_url: str, case: Case) -> None:
    """The same table as the ASGI and WSGI doors: no refused request reaches the app, in any disguise."""
    async with sidecar(POLICY, app_url) as (_, port):
        status, body = await _raw(port, raw_request(case))
    if b"#" in case.target:
        # RFC 9112 §3.2: a request target has no fragment; the listener refuses it before any policy runs.
        assert status == 400, body
        return
    if case.status == 200:
        assert status == 200, body
        assert json.loads(body)["path"] == case.app_path
    else:
        # The listener's own checks may refuse a malformed request first: a 400 too, never the app.
        assert status in (case.status, 400), (case.source, body)
        assert b'"path"' not in body


async def test_strict_mtls_forwards_the_peer_in_xfcc_and_drops_a_forged_one(
    app_url: str, workloads: dict[str, Workload]
) -> None:
    reviews, frontend = workloads["reviews"], workloads["frontend"]
    async with (
        sidecar({"mtls": mtls(reviews)}, app_url) as (_, port),
        httpx.AsyncClient(verify=client_context(frontend)) as client,
    ):
        forged = "By=spiffe://example.org/ns/default/sa/reviews;URI=spiffe://example.org/ns/default/sa/admin"
        response = await client.get(f"https://127.0.0.1:{port}/api/x", headers={"x-forwarded-client-cert": forged})
    assert response.status_code == 200
    xfcc = response.json()["headers"]["x-forwarded-client-cert"]
    assert xfcc.startswith(f"By={spiffe('reviews')};Hash=")
    assert xfcc.endswith(f"URI={spiffe('frontend')};DNS=frontend")
    assert "admin" not in xfcc


async def test_a_resumed_session_and_every_request_of_a_connection_carry_the_peer(
    app_url: str, workloads: dict[str, Workload]
) -> None:
    """The listener resumes a caller's TLS session (its ticket); the app still learns who called, on every
    request of the connection, with the caller's forged XFCC dropped each time."""
    reviews, frontend = workloads["reviews"], workloads["frontend"]
    context = client_context(frontend)
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # the session is there at once (TLS 1.3: after a read)
    resumed: list[bool] = []
    seen: list[str] = []

    def request(port: int, session: ssl.SSLSession | None, path: str) -> ssl.SSLSession:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="reviews", session=session) as tls,
        ):
            resumed.append(bool(tls.session_reused))
            for n in range(2):
                forged = f"x-forwarded-client-cert: By=x;URI=spiffe://example.org/ns/default/sa/admin{n}\r\n"
                head = f"GET {path} HTTP/1.1\r\nhost: reviews\r\n{forged}content-length: 0\r\n\r\n"
                tls.sendall(head.encode())
                response = b""
                while not response.endswith(b"\r\n0\r\n\r\n"):  # the app's answer is chunked
                    response += tls.recv(65536)
                body = _dechunk(response.partition(b"\r\n\r\n")[2])
                seen.append(json.loads(body)["headers"]["x-forwarded-client-cert"])
            assert tls.session is not None
            return tls.session

    async with sidecar({"mtls": mtls(reviews)}, app_url) as (_, port):
        first = await asyncio.to_thread(request, port, None, "/one")
        await asyncio.to_thread(request, port, first, "/two")
    assert resumed == [False, True]
    assert len(seen) == 4
    for xfcc in seen:
        assert xfcc.startswith(f"By={spiffe('reviews')};Hash=")
        assert xfcc.endswith(f"URI={spiffe('frontend')};DNS=frontend")
        assert "admin" not in xfcc


async def test_strict_mtls_refuses_plaintext_and_other_cas(
    app_url: str, workloads: dict[str, Workload], other_pki: Pki
) -> None:
    stranger = Workload(
        "frontend",
        other_pki.root / "frontend" / "frontend.pem",
        other_pki.root / "frontend" / "frontend-key.pem",
        other_pki.ca_file,
    )
    async with sidecar({"mtls": mtls(workloads["reviews"])}, app_url) as (_, port):
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.TransportError):
                await plain.get(f"http://127.0.0.1:{port}/api/x")
        context = client_context(stranger)
        context.load_verify_locations(workloads["reviews"].ca)  # trusts the server; the server must not trust it
        async with httpx.AsyncClient(verify=context) as other:
            with pytest.raises(httpx.TransportError):
                await other.get(f"https://127.0.0.1:{port}/api/x")
        async with httpx.AsyncClient(verify=client_context(workloads["frontend"])) as good:
            assert (await good.get(f"https://127.0.0.1:{port}/api/x")).status_code == 200


async def test_permissive_serves_plaintext_as_unauthenticated(app_url: str, workloads: dict[str, Workload]) -> None:
    """An allow rule on principals: mTLS callers pass, plaintext callers on the same port get 403, never the app."""
    inbound = {
        "mtls": mtls(workloads["reviews"], "permissive"),
        "authorization": [{"action": "allow", "rules": [{"from": {"principals": [spiffe("frontend")]}}]}],
    }
    async with sidecar(inbound, app_url) as (_, port):
        async with httpx.AsyncClient() as plain:
            denied = await plain.get(f"http://127.0.0.1:{port}/api/x", headers={"x-forwarded-client-cert": "URI=x"})
        async with httpx.AsyncClient(verify=client_context(workloads["frontend"])) as mtls_client:
            allowed = await mtls_client.get(f"https://127.0.0.1:{port}/api/x")
    assert denied.status_code == 403
    assert denied.headers["x-meshlib-error"] == "forbidden"
    assert allowed.status_code == 200
    assert allowed.json()["headers"]["x-forwarded-client-cert"].endswith(f"URI={spiffe('frontend')};DNS=frontend")


async def test_authorization_by_principal_and_path_through_the_sidecar(
    app_url: str, workloads: dict[str, Workload]
) -> None:
    inbound = {
        "mtls": mtls(workloads["reviews"]),
        "authorization": [
            {"action": "deny", "rules": [{"to": {"paths": ["/admin/*"]}}]},
            {"action": "allow", "rules": [{"from": {"principals": [spiffe("frontend")]}, "to": {"methods": ["GET"]}}]},
        ],
    }
    async with sidecar(inbound, app_url) as (_, port):
        async with httpx.AsyncClient(verify=client_context(workloads["frontend"])) as frontend:
            assert (await frontend.get(f"https://127.0.0.1:{port}/api/x")).status_code == 200
            assert (await frontend.post(f"https://127.0.0.1:{port}/api/x")).status_code == 403
            assert (await frontend.get(f"https://127.0.0.1:{port}/admin/x")).status_code == 403
        async with httpx.AsyncClient(verify=client_context(workloads["details"])) as details:
            assert (await details.get(f"https://127.0.0.1:{port}/api/x")).status_code == 403


# --- interop: a real Envoy calls the sidecar's inbound listener over mTLS, each checking the other's SPIFFE ID ----


def _envoy_to_sidecar(port: int, client: Workload, expected_server: str) -> dict[str, Any]:
    """Envoy: a plaintext listener whose every request goes, over mTLS as ``client``, to the sidecar on ``port``."""
    upstream_tls = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "reviews",
        "common_tls_context": {
            "tls_certificates": [
                {"certificate_chain": {"filename": str(client.cert)}, "private_key": {"filename": str(client.key)}}
            ],
            "validation_context": {
                "trusted_ca": {"filename": str(client.ca)},
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": expected_server}}],
            },
        },
    }
    hcm = {
        "@type": HCM,
        "stat_prefix": "egress",
        "codec_type": "HTTP1",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "reviews"}}],
                }
            ]
        },
        "http_filters": [ROUTER],
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "egress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "reviews",
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "load_assignment": {
                        "cluster_name": "reviews",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                    "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": upstream_tls},
                }
            ],
        }
    }


def _only_frontend(workloads: dict[str, Workload]) -> dict[str, Any]:
    return {
        "mtls": mtls(workloads["reviews"]),
        "authorization": [{"action": "allow", "rules": [{"from": {"principals": [spiffe("frontend")]}}]}],
    }


async def test_envoy_calls_the_sidecar_over_mtls_and_the_app_sees_envoy_s_identity(
    app_url: str, workloads: dict[str, Workload], tmp_path: Path
) -> None:
    async with sidecar(_only_frontend(workloads), app_url) as (_, port):
        with running_envoy(_envoy_to_sidecar(port, workloads["frontend"], spiffe("reviews")), tmp_path) as envoy:
            async with httpx.AsyncClient() as client:
                answers = [await client.get(f"http://127.0.0.1:{envoy.ports['egress']}/api/x") for _ in range(3)]
            handshakes = stats(envoy, "cluster.reviews.ssl.handshake").get("cluster.reviews.ssl.handshake", 0)
    assert [a.status_code for a in answers] == [200] * 3
    xfcc = answers[0].json()["headers"]["x-forwarded-client-cert"]
    assert xfcc.startswith(f"By={spiffe('reviews')};")
    assert f"URI={spiffe('frontend')}" in xfcc
    assert handshakes == 1  # one mTLS connection from Envoy, kept alive


async def test_the_sidecar_s_policy_refuses_an_envoy_with_another_identity(
    app_url: str, workloads: dict[str, Workload], tmp_path: Path
) -> None:
    async with sidecar(_only_frontend(workloads), app_url) as (_, port):
        with running_envoy(_envoy_to_sidecar(port, workloads["details"], spiffe("reviews")), tmp_path) as envoy:
            async with httpx.AsyncClient() as client:
                answer = await client.get(f"http://127.0.0.1:{envoy.ports['egress']}/api/x")
    assert answer.status_code == 403
    assert answer.headers["x-meshlib-error"] == "forbidden"


async def test_envoy_refuses_a_sidecar_whose_identity_it_does_not_expect(
    app_url: str, workloads: dict[str, Workload], tmp_path: Path
) -> None:
    async with sidecar(_only_frontend(workloads), app_url) as (_, port):
        config = _envoy_to_sidecar(port, workloads["frontend"], spiffe("ratings"))
        with running_envoy(config, tmp_path) as envoy:
            async with httpx.AsyncClient() as client:
                answer = await client.get(f"http://127.0.0.1:{envoy.ports['egress']}/api/x")
            failures = stats(envoy, "cluster.reviews.ssl.fail_verify_san").get("cluster.reviews.ssl.fail_verify_san", 0)
    assert answer.status_code == 503  # Envoy's upstream connection failure: the sidecar's SAN is not ratings
    assert failures >= 1
