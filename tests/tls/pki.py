"""Certificates the TLS tests make: a CA per trust domain and SPIFFE workload certificates, good and bad on purpose."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshlib._tls import ca

TRUST_DOMAIN = "example.org"


def spiffe(service: str, namespace: str = "default", trust_domain: str = TRUST_DOMAIN) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service}"


@dataclass(frozen=True)
class Workload:
    """A workload's certificate and key files, and the CA file that vouches for it."""

    service: str
    cert: Path
    key: Path
    ca: Path

    @property
    def spiffe_id(self) -> str:
        return spiffe(self.service)

    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert.read_bytes()).serial_number

    def client_tls(self, expected: str | None = None, **more: object) -> dict[str, object]:
        """A cluster's ``tls`` that presents this workload's certificate (mutual), expecting ``expected``'s identity."""
        tls: dict[str, object] = {
            "mode": "mutual",
            "ca_file": str(self.ca),
            "cert_file": str(self.cert),
            "key_file": str(self.key),
        }
        if expected is not None:
            tls["expected_identities"] = [spiffe(expected)]
        return {**tls, **more}


class Pki:
    """A CA in ``root/ca`` and the workloads it issued, in ``root/NAME/``."""

    def __init__(self, root: Path, trust_domain: str = TRUST_DOMAIN) -> None:
        self.root = root
        self.ca_dir = root / "ca"
        self.trust_domain = trust_domain
        ca.init_ca(self.ca_dir, trust_domain)

    @property
    def ca_file(self) -> Path:
        return self.ca_dir / ca.CA_CERT

    def issue(
        self, service: str, *, ttl: float = 3600.0, now: dt.datetime | None = None, out: Path | None = None
    ) -> Workload:
        directory = out if out is not None else self.root / service
        issued = ca.issue(self.ca_dir, directory, service, ttl=ttl, now=now)
        return Workload(service, issued.cert, issued.key, self.ca_file)


def expired(pki: Pki, service: str, out: Path) -> Workload:
    """A certificate that expired an hour ago."""
    return pki.issue(service, ttl=600.0, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2), out=out)


def not_yet_valid(pki: Pki, service: str, out: Path) -> Workload:
    """A certificate valid from tomorrow."""
    return pki.issue(service, ttl=3600.0, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=1), out=out)


def custom(
    ca_dir: Path,
    service: str,
    out: Path,
    *,
    sans: list[x509.GeneralName] | None = None,
    usages: list[x509.ObjectIdentifier] | None = None,
) -> Workload:
    """A certificate of the CA in ``ca_dir`` with these SANs (default: a DNS SAN only) and extended key usages."""
    ca_cert = x509.load_pem_x509_certificate((ca_dir / ca.CA_CERT).read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / ca.CA_KEY).read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(sans or [x509.DNSName(service)]), critical=False)
    )
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{service}.pem", out / f"{service}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Workload(service, cert_path, key_path, ca_dir / ca.CA_CERT)


def without_spiffe_id(pki: Pki, service: str, out: Path) -> Workload:
    """A certificate of the CA with a DNS SAN only (no SPIFFE ID), as a plain web server has."""
    return custom(pki.ca_dir, service, out)
