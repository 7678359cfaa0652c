"""``meshlib ca init`` and ``meshlib ca issue``: a local CA and SPIFFE workload certificates (X.509-SVIDs).

The CA directory holds ``ca.pem`` (the self-signed root) and ``ca-key.pem``
(its key, mode 0600). The root carries its trust domain as the URI SAN
``spiffe://TRUST-DOMAIN``, as SPIRE's CAs do, so ``issue`` needs no flag for
it. A workload certificate (``SERVICE.pem``, key ``SERVICE-key.pem``) carries
exactly one URI SAN, its SPIFFE ID ``spiffe://TD/ns/NAMESPACE/sa/SERVICE``
(X.509-SVID §2), plus the DNS SAN ``SERVICE`` so that plain hostname checks
against ``server_name: SERVICE`` work too. Keys are EC P-256. Every file is
written to a temporary file in its directory and renamed over the old one,
so a watcher reads a whole old file or a whole new one, never half of one.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshlib._config.security import parse_spiffe_id

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "DEFAULT_CA_TTL",
    "DEFAULT_TTL",
    "CaError",
    "Issued",
    "init_ca",
    "issue",
    "spiffe_id",
    "trust_domain_of",
    "write_atomic",
]

CA_CERT: Final = "ca.pem"
CA_KEY: Final = "ca-key.pem"
DEFAULT_CA_TTL: Final = 8760 * 3600.0  # a year
DEFAULT_TTL: Final = 24 * 3600.0  # a day: short-lived, rotated by a cron job or a controller
# Backdated, so that a peer whose clock is a little behind accepts a certificate issued a moment ago.
_BACKDATE: Final = dt.timedelta(seconds=60)
# Kubernetes' names: a namespace is a DNS label, a service account a DNS subdomain (both also SPIFFE path segments).
_NAMESPACE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_SERVICE = re.compile(r"^[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?$")


class CaError(Exception):
    """Bad input to ``meshlib ca``: the message says what, for the user."""


@dataclass(frozen=True, slots=True)
class Issued:
    """Files written by :func:`init_ca` or :func:`issue`, and what the certificate says."""

    cert: Path
    key: Path
    spiffe_id: str
    serial: int
    not_after: dt.datetime
    clamped: bool = False  # the TTL asked for ran past the CA's own expiry, so it ends with the CA


def spiffe_id(trust_domain: str, namespace: str, service: str) -> str:
    """``spiffe://TD/ns/NAMESPACE/sa/SERVICE``, Istio's form; CaError when a part is not a valid name."""
    if not _NAMESPACE.match(namespace):
        raise CaError(f"invalid namespace {namespace!r}: lowercase letters, digits and '-', at most 63")
    if not _SERVICE.match(service):
        raise CaError(f"invalid service {service!r}: lowercase letters, digits, '-' and '.', at most 253")
    value = f"spiffe://{trust_domain}/ns/{namespace}/sa/{service}"
    try:
        parse_spiffe_id(value)
    except ValueError as exc:
        raise CaError(str(exc)) from None
    return value


def _check_trust_domain(trust_domain: str) -> None:
    # SPIFFE ID spec §2.1; parse_spiffe_id checks the same characters for a whole ID.
    try:
        parse_spiffe_id(f"spiffe://{trust_domain}/x")
    except ValueError:
        raise CaError(
            f"invalid trust domain {trust_domain!r}: lowercase letters, digits, '.', '-' and '_' (e.g. example.org)"
        ) from None


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` through a temporary file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # before any byte: a key is never readable by others, not even for a moment
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CaError(f"cannot create {str(path)!r}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise CaError(f"{str(path)!r} is not a directory")


def init_ca(
    out: Path,
    trust_domain: str,
    *,
    ttl: float = DEFAULT_CA_TTL,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Issued:
    """Create a CA for ``trust_domain`` in ``out``: ``ca.pem`` and ``ca-key.pem``.

    Refuses to replace an existing CA unless ``force``: every certificate it
    issued would stop verifying. ``now`` (tests) sets the start of validity.
    """
    _check_trust_domain(trust_domain)
    if ttl <= 0:
        raise CaError("the CA's ttl must be above 0")
    cert_path, key_path = out / CA_CERT, out / CA_KEY
    existing = [str(p) for p in (cert_path, key_path) if p.exists()]
    if existing and not force:
        raise CaError(
            f"{' and '.join(repr(p) for p in existing)} already exist: refusing to replace a CA, since every"
            " certificate it issued would stop verifying (use --force to replace it)"
        )
    _mkdir(out)
    start = _now(now)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshlib"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshlib CA {trust_domain}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    serial = x509.random_serial_number()
    not_after = start + dt.timedelta(seconds=ttl)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(not_after)
        # Issues workload certificates only (X.509-SVID §4.1: a signing certificate sets cA and keyCertSign).
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        # The trust domain's own ID, as SPIRE puts on its CAs: `meshlib ca issue` reads it back from here.
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    write_atomic(key_path, _key_pem(key), 0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return Issued(cert_path, key_path, f"spiffe://{trust_domain}", serial, not_after)


def trust_domain_of(ca: x509.Certificate) -> str | None:
    """The trust domain a CA certificate names in its ``spiffe://TD`` URI SAN, or None."""
    try:
        sans = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri[len("spiffe://") :].split("/", 1)[0] or None
    return None


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not ca_dir.is_dir():
        raise CaError(f"no CA directory {str(ca_dir)!r}: create one with meshlib ca init")
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    try:
        cert_data = cert_path.read_bytes()
        key_data = key_path.read_bytes()
    except OSError as exc:
        raise CaError(f"cannot read {exc.filename!r}: {exc.strerror or exc}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_data)
    except ValueError:
        raise CaError(f"{str(cert_path)!r} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise CaError(f"{str(key_path)!r} is encrypted: meshlib ca reads unencrypted keys") from None
    except ValueError:
        raise CaError(f"{str(key_path)!r} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CaError(f"{str(key_path)!r} is not the key of {str(cert_path)!r}")
    return cert, key


def issue(
    ca_dir: Path,
    out: Path,
    service: str,
    *,
    namespace: str = "default",
    ttl: float = DEFAULT_TTL,
    now: dt.datetime | None = None,
) -> Issued:
    """Issue ``SERVICE.pem`` and ``SERVICE-key.pem`` in ``out``, signed by the CA in ``ca_dir``.

    Existing files are replaced (that is rotation), each by an atomic rename,
    the key first. A ``ttl`` past the CA's own expiry ends with the CA
    (``clamped``). ``now`` (tests) sets the start of validity.
    """
    if ttl <= 0:
        raise CaError("the certificate's ttl must be above 0")
    ca_cert, ca_key = _load_ca(ca_dir)
    trust_domain = trust_domain_of(ca_cert)
    if trust_domain is None:
        raise CaError(
            f"{str(ca_dir / CA_CERT)!r} names no trust domain (a URI SAN spiffe://TRUST-DOMAIN): make the CA with"
            " meshlib ca init"
        )
    identity = spiffe_id(trust_domain, namespace, service)
    _mkdir(out)
    start = _now(now)
    not_after = start + dt.timedelta(seconds=ttl)
    ca_end = ca_cert.not_valid_after_utc
    clamped = not_after > ca_end
    if clamped:
        not_after = ca_end  # as SPIRE does: a certificate cannot outlive the CA that vouches for it
    key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshlib"),
                    x509.NameAttribute(NameOID.COMMON_NAME, service),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(not_after)
        # X.509-SVID §4.2-4.4: a leaf is not a CA, signs (digitalSignature), and may serve and be a client.
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity), x509.DNSName(service)]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = out / f"{service}.pem", out / f"{service}-key.pem"
    # The key first, then the certificate: a reader that looks in between sees a pair that does not match,
    # which the mesh takes for a rotation in progress and reads again (material.py).
    write_atomic(key_path, _key_pem(key), 0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return Issued(cert_path, key_path, identity, serial, not_after, clamped)
