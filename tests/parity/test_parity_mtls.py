"""Outbound mTLS, the same in four modes: in process and through ``meshlib proxy``, sync and async.

The upstreams are TLS servers that require a client certificate of the
test's CA; the mesh presents the workload's certificate and accepts an
upstream only if its chain leads to the CA and its SPIFFE ID is expected.
Every failure raises the same class with the same message in every mode.
"""

# ruff: noqa: F811 - the TLS fixtures imported from tests/tls are taken as the tests' parameters, as pytest does

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshlib
from tests.parity.conftest import OpenClient
from tests.tls.conftest import ServeTls, other_pki, pki, serve_tls, workloads  # noqa: F401 - fixtures, used by name
from tests.tls.pki import Pki, Workload, expired, not_yet_valid, spiffe, without_spiffe_id
from tests.tls.tls_server import Request, echo

pytestmark = pytest.mark.anyio


async def test_mutual_tls_with_a_spiffe_check_reuses_its_connection(
    open_client: OpenClient, serve_tls: ServeTls, workloads: dict[str, Workload]
) -> None:
    frontend = workloads["frontend"]
    with serve_tls(workloads["reviews"]) as reviews:
        tls = frontend.client_tls("reviews", server_name="reviews")
        config: dict[str, Any] = {"clusters": {"reviews": {"endpoints": [reviews.url], "tls": tls}}}
        async with open_client(config) as client:
            answers = [(await client.get(f"http://reviews/r/{i}")).json() for i in range(3)]
    assert [a["path"] for a in answers] == ["/r/0", "/r/1", "/r/2"]
    assert reviews.sni == ["reviews"]  # server_name is the SNI (the endpoint is an address)
    # The upstream saw the workload's own certificate, over one kept-alive connection.
    assert {a["peer"] for a in answers} == {frontend.spiffe_id}
    assert {a["serial"] for a in answers} == {frontend.serial()}
    assert [c.requests for c in reviews.connections] == [3]


async def test_an_unexpected_identity_is_refused_before_a_byte_is_sent(
    open_client: OpenClient, serve_tls: ServeTls, workloads: dict[str, Workload]
) -> None:
    with serve_tls(workloads["details"]) as impostor:
        config: dict[str, Any] = {
            "clusters": {"reviews": {"endpoints": [impostor.url], "tls": workloads["frontend"].client_tls("reviews")}}
        }
        async with open_client(config) as client:
            with pytest.raises(meshlib.PeerIdentityError) as raised:
                await client.get("http://reviews/secret", headers={"authorization": "Bearer token"})
    error = raised.value
    assert isinstance(error, meshlib.UpstreamConnectError)
    assert isinstance(error, httpx.TransportError)
    assert (error.code, error.cluster, error.route) == ("peer_identity_mismatch", "reviews", "cluster:reviews")
    assert (error.peer, error.expected) == (spiffe("details"), (spiffe("reviews"),))
    assert str(error) == (
        f"peer identity mismatch: the upstream presented {spiffe('details')}, expected {spiffe('reviews')}"
        f" during try 1 of route 'cluster:reviews', cluster 'reviews' (endpoint {impostor.url})"
    )
    assert sum(c.received for c in impostor.connections) == 0  # not one byte of the request


async def test_each_bad_upstream_certificate_fails_with_its_own_error(
    open_client: OpenClient,
    serve_tls: ServeTls,
    pki: Pki,
    other_pki: Pki,
    workloads: dict[str, Workload],
    tmp_path: Path,
) -> None:
    frontend = workloads["frontend"]
    bad = {
        "expired": (expired(pki, "reviews", tmp_path / "expired"), "certificate has expired"),
        "early": (not_yet_valid(pki, "reviews", tmp_path / "early"), "certificate is not yet valid"),
        "foreign": (other_pki.issue("reviews"), "unable to get local issuer certificate"),
    }
    with (
        serve_tls(bad["expired"][0]) as expired_server,
        serve_tls(bad["early"][0]) as early_server,
        serve_tls(bad["foreign"][0]) as foreign_server,
        serve_tls(without_spiffe_id(pki, "reviews", tmp_path / "plain")) as plain_server,
        serve_tls(workloads["reviews"]) as reviews,
    ):
        servers = {"expired": expired_server, "early": early_server, "foreign": foreign_server}
        clusters: dict[str, Any] = {
            name: {"endpoints": [server.url], "tls": frontend.client_tls("reviews")} for name, server in servers.items()
        }
        clusters["plain"] = {"endpoints": [plain_server.url], "tls": frontend.client_tls("reviews")}
        # Without expected_identities the host name is checked, against server_name.
        clusters["misnamed"] = {"endpoints": [reviews.url], "tls": frontend.client_tls(server_name="ratings")}
        clusters["named"] = {"endpoints": [reviews.url], "tls": frontend.client_tls(server_name="reviews")}
        async with open_client({"clusters": clusters}) as client:
            for name, server in servers.items():
                with pytest.raises(meshlib.UpstreamConnectError) as raised:
                    await client.get(f"http://{name}/x")
                assert type(raised.value) is meshlib.UpstreamConnectError, name
                why = bad[name][1]
                assert str(raised.value) == (
                    f"TLS handshake failed: certificate verify failed: {why} during try 1 of route"
                    f" 'cluster:{name}', cluster '{name}' (endpoint {server.url})"
                ), name
            with pytest.raises(meshlib.PeerIdentityError) as no_id:
                await client.get("http://plain/x")
            assert no_id.value.peer is None
            assert "the upstream presented no SPIFFE ID (no spiffe:// URI SAN)" in str(no_id.value)
            with pytest.raises(meshlib.UpstreamConnectError) as misnamed:
                await client.get("http://misnamed/x")
            assert str(misnamed.value).startswith(
                "TLS handshake failed: certificate verify failed: hostname mismatch, certificate is not valid for"
                " 'ratings'"
            )
            assert (await client.get("http://named/x")).json()["peer"] == frontend.spiffe_id
        for server in (*servers.values(), plain_server):
            assert sum(c.requests for c in server.connections) == 0


async def test_a_refused_identity_is_a_connect_failure_that_retries_elsewhere(
    open_client: OpenClient, serve_tls: ServeTls, workloads: dict[str, Workload]
) -> None:
    with serve_tls(workloads["details"]) as impostor, serve_tls(workloads["reviews"]) as reviews:
        config: dict[str, Any] = {
            "clusters": {
                "reviews": {
                    "endpoints": [impostor.url, reviews.url],
                    "tls": workloads["frontend"].client_tls("reviews"),
                    "retry": {"attempts": 2, "retry_on": ["connect-failure"], "backoff": {"base": "1ms", "max": "2ms"}},
                }
            }
        }
        async with open_client(config) as client:
            for _ in range(4):
                assert (await client.get("http://reviews/x")).status_code == 200
    assert sum(c.requests for c in reviews.connections) == 4
    assert sum(c.received for c in impostor.connections) == 0


async def test_rotated_certificates_are_used_at_once_and_no_request_is_lost(
    open_client: OpenClient, serve_tls: ServeTls, pki: Pki, workloads: dict[str, Workload], tmp_path: Path
) -> None:
    """``meshlib ca issue`` rewrites the client's files under load: new connections use them, none fails."""
    own = pki.issue("frontend", out=tmp_path / "certs")
    old = own.serial()

    async def slow(request: Request) -> tuple[int, bytes]:
        await asyncio.sleep(0.01)  # so that requests are in flight when the files change
        return await echo(request)

    with serve_tls(workloads["reviews"], slow) as reviews:
        config = {"clusters": {"reviews": {"endpoints": [reviews.url], "tls": own.client_tls("reviews")}}}
        async with open_client(config) as client:
            seen: list[int] = []
            codes: list[int] = []
            new: int | None = None
            going = asyncio.Event()  # set once some requests went through with the old certificate
            deadline = time.monotonic() + 20

            def done() -> bool:
                return new is not None and seen[-5:] == [new] * 5

            async def one() -> None:
                seen.append((await client.get("http://reviews/x")).json()["serial"])
                if len(seen) >= 10:
                    going.set()
                assert time.monotonic() < deadline, f"no request with the new certificate within 20 s: {seen}"

            async def load() -> None:
                while not done():
                    await one()

            async def rotate() -> None:
                nonlocal new
                await going.wait()
                issue = ("ca", "issue", "--service", "frontend", "--ca", str(pki.ca_dir), "--out", str(own.cert.parent))
                proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "meshlib", *issue)
                codes.append(await proc.wait())
                new = own.serial()

            rotation = asyncio.create_task(rotate())
            if client.mode == "sync":  # a sync call blocks the loop: the rotation moves on between two of them
                while not done():
                    await one()
                    await asyncio.sleep(0.001)
            else:
                await asyncio.gather(*(load() for _ in range(4)))
            await rotation
    assert codes == [0]
    assert new is not None
    assert new != old
    assert seen[0] == old
    assert seen[-1] == new
    assert set(seen) == {old, new}
    # The old connections served their last requests: the last connection made presents the new certificate.
    assert reviews.connections[-1].serial == new
    assert {c.serial for c in reviews.connections} == {old, new}


async def test_an_upstream_that_refuses_the_workload_s_certificate_fails_with_a_mesh_error(
    open_client: OpenClient, serve_tls: ServeTls, other_pki: Pki, workloads: dict[str, Workload]
) -> None:
    """TLS 1.3: the upstream refuses the client's certificate after the handshake, with an alert the client reads."""
    with serve_tls(workloads["reviews"], ca=other_pki.ca_file) as picky:  # trusts another CA's clients only
        config = {"clusters": {"reviews": {"endpoints": [picky.url], "tls": workloads["frontend"].client_tls()}}}
        async with open_client(config) as client:
            for _ in range(3):
                # The alert, or the close after it, reaches the client when it reads or as it writes.
                with pytest.raises((meshlib.UpstreamResetError, meshlib.UpstreamConnectError)) as raised:
                    await client.get("http://reviews/x", headers={"connection": "close"})
                assert raised.value.cluster == "reviews"
    assert sum(c.requests for c in picky.connections) == 0
