"""A listener that terminates TLS: strict (TLS only) and permissive (TLS or plaintext on one port), with the peer."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshlib._config.sidecar import SidecarLimitsConfig
from meshlib._sidecar.server import DOWNSTREAM, Downstream, FixedTls, HttpServer

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[pytest.param(False, id="asyncio"), pytest.param(True, id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": request.param})


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path  # from another CA
    other_client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], spiffe: str, dns: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe), x509.DNSName(dns)]), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca[1], hashes.SHA256())
    )
    return cert, key


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    if key is None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca = _ca("mesh root")
    other = _ca("other root")
    server = _leaf(ca, "spiffe://example.org/ns/default/sa/reviews", "localhost")
    client = _leaf(ca, "spiffe://example.org/ns/default/sa/frontend", "frontend")
    stranger = _leaf(other, "spiffe://example.org/ns/default/sa/frontend", "frontend")
    return Pki(
        ca=_write(tmp / "ca.pem", ca[0]),
        server_cert=_write(tmp / "server.pem", server[0]),
        server_key=_write(tmp / "server-key.pem", server[0], server[1]),
        client_cert=_write(tmp / "client.pem", client[0]),
        client_key=_write(tmp / "client-key.pem", client[0], client[1]),
        other_client_cert=_write(tmp / "other.pem", stranger[0]),
        other_client_key=_write(tmp / "other-key.pem", stranger[0], stranger[1]),
    )


def _server_context(pki: Pki, *, require: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED if require else ssl.CERT_OPTIONAL
    return context


def _client_context(pki: Pki, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


@pytest.fixture
def seen() -> list[Downstream | None]:
    return []


async def _start(pki: Pki, mode: str, seen: list[Downstream | None]) -> HttpServer:
    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions.get(DOWNSTREAM))
        return httpx.Response(200, text="ok")

    context = _server_context(pki, require=True)
    server = HttpServer("inbound", handler, SidecarLimitsConfig(), tls=FixedTls(mode, lambda: context))  # type: ignore[arg-type]
    sock = socket.create_server(("127.0.0.1", 0))
    await server.start(sock)
    return server


@pytest.fixture
def certificate_of_client(pki: Pki) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pki.client_cert.read_text())


async def test_strict_serves_mtls_and_hands_the_peer_to_the_handler(
    pki: Pki, seen: list[Downstream | None], certificate_of_client: bytes
) -> None:
    server = await _start(pki, "strict", seen)
    _, port = server.address
    try:
        context = _client_context(pki, pki.client_cert, pki.client_key)
        async with httpx.AsyncClient(verify=context) as client:
            response = await client.get(f"https://localhost:{port}/x")
        assert response.status_code == 200
    finally:
        await server.close()
    [peer] = seen
    assert peer is not None
    assert peer.tls
    assert peer.certificate == certificate_of_client
    assert peer.address is not None
    assert peer.address[0] == "127.0.0.1"


@pytest.mark.parametrize(
    ("case", "cert"),
    [("plaintext", None), ("no client certificate", "none"), ("another CA's certificate", "other")],
)
async def test_strict_refuses_plaintext_and_strangers(
    pki: Pki, seen: list[Downstream | None], case: str, cert: str
) -> None:
    server = await _start(pki, "strict", seen)
    _, port = server.address
    try:
        if cert is None:
            url, verify = f"http://127.0.0.1:{port}/x", True
        else:
            chosen = (pki.other_client_cert, pki.other_client_key) if cert == "other" else (None, None)
            url, verify = f"https://localhost:{port}/x", _client_context(pki, *chosen)
        async with httpx.AsyncClient(verify=verify, timeout=5) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(url)
        # The listener is still up for the next, good client.
        good = _client_context(pki, pki.client_cert, pki.client_key)
        async with httpx.AsyncClient(verify=good) as client:
            assert (await client.get(f"https://localhost:{port}/x")).status_code == 200
    finally:
        await server.close()
    assert len(seen) == 1, case


async def test_permissive_serves_tls_and_plaintext_on_one_port(pki: Pki, seen: list[Downstream | None]) -> None:
    server = await _start(pki, "permissive", seen)
    _, port = server.address
    try:
        async with httpx.AsyncClient() as plain:
            assert (await plain.get(f"http://127.0.0.1:{port}/x")).status_code == 200
        context = _client_context(pki, pki.client_cert, pki.client_key)
        async with httpx.AsyncClient(verify=context) as mtls:
            assert (await mtls.get(f"https://localhost:{port}/x")).status_code == 200
    finally:
        await server.close()
    assert [(p.tls, p.certificate is not None) for p in seen if p is not None] == [(False, False), (True, True)]


async def test_a_rotated_context_applies_to_the_next_connection(pki: Pki, seen: list[Downstream | None]) -> None:
    contexts = [_server_context(pki, require=True)]

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    server = HttpServer("inbound", handler, SidecarLimitsConfig(), tls=FixedTls("strict", lambda: contexts[-1]))
    await server.start(socket.create_server(("127.0.0.1", 0)))
    _, port = server.address
    try:
        context = _client_context(pki, pki.client_cert, pki.client_key)
        async with httpx.AsyncClient(verify=context) as client:
            assert (await client.get(f"https://localhost:{port}/x")).status_code == 200
        # Now the listener trusts another CA only: the same client is refused on a new connection.
        other = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        other.load_cert_chain(pki.server_cert, pki.server_key)
        other.load_verify_locations(pki.other_client_cert)
        other.verify_mode = ssl.CERT_REQUIRED
        contexts.append(other)
        async with httpx.AsyncClient(verify=context) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(f"https://localhost:{port}/x")
    finally:
        await server.close()


async def test_a_silent_client_on_a_permissive_port_is_dropped_at_the_header_timeout(pki: Pki) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    context = _server_context(pki, require=True)
    limits = SidecarLimitsConfig(header_timeout="200ms")
    server = HttpServer("inbound", handler, limits, tls=FixedTls("permissive", lambda: context))
    await server.start(socket.create_server(("127.0.0.1", 0)))
    _, port = server.address
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await asyncio.wait_for(reader.read(1), 3) == b""  # closed by the listener, not left open
        finally:
            writer.close()
    finally:
        await server.close()
