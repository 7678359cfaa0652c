"""``meshlib ca init`` and ``meshlib ca issue``: what they write, and how they refuse bad input (exit 2)."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshlib._cli import main
from tests.tls.pki import custom


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_a_ca_for_the_trust_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    assert main(["ca", "init", "--trust-domain", "example.org", "--out", str(out), "--ttl", "48h"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ca-key.pem", "ca.pem"]
    cert = _cert(out / "ca.pem")
    assert cert.subject == cert.issuer  # self-signed
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (usage.key_cert_sign, usage.crl_sign) == (True, True)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=47, minutes=59) < lifetime <= dt.timedelta(hours=48)
    key = serialization.load_pem_private_key((out / "ca-key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert _mode(out / "ca-key.pem") == 0o600
    assert "CA for trust domain example.org" in capsys.readouterr().out


def test_init_never_replaces_a_ca_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "init", "--trust-domain", "example.org", "--out", str(tmp_path)]) == 0
    before = (tmp_path / "ca.pem").read_bytes()
    capsys.readouterr()
    assert main(["ca", "init", "--trust-domain", "example.org", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("meshlib ca init: ")
    assert "refusing to replace a CA" in err
    assert "--force" in err
    assert (tmp_path / "ca.pem").read_bytes() == before
    assert main(["ca", "init", "--trust-domain", "example.org", "--out", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "ca.pem").read_bytes() != before


def test_issue_writes_a_spiffe_workload_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    assert main(["ca", "init", "--trust-domain", "example.org", "--out", str(ca)]) == 0
    argv = ["ca", "issue", "--service", "reviews", "--namespace", "shop", "--ttl", "2h", "--ca", str(ca)]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "spiffe://example.org/ns/shop/sa/reviews" in out
    cert = _cert(tmp_path / "out" / "reviews.pem")
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/ns/shop/sa/reviews"]
    assert sans.get_values_for_type(x509.DNSName) == ["reviews"]
    assert cert.issuer == _cert(ca / "ca.pem").subject
    cert.verify_directly_issued_by(_cert(ca / "ca.pem"))
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=1, minutes=59) < lifetime <= dt.timedelta(hours=2)
    assert cert.not_valid_before_utc < dt.datetime.now(dt.UTC)  # backdated a little, for clock skew
    key = serialization.load_pem_private_key((tmp_path / "out" / "reviews-key.pem").read_bytes(), password=None)
    assert key.public_key() == cert.public_key()
    assert _mode(tmp_path / "out" / "reviews-key.pem") == 0o600
    assert _mode(tmp_path / "out" / "reviews.pem") == 0o644


def test_issue_replaces_the_files_atomically(tmp_path: Path) -> None:
    assert main(["ca", "init", "--trust-domain", "example.org", "--out", str(tmp_path)]) == 0
    issue = ["ca", "issue", "--service", "reviews", "--ca", str(tmp_path), "--out", str(tmp_path)]
    assert main(issue) == 0
    first = (tmp_path / "reviews.pem").stat().st_ino, _cert(tmp_path / "reviews.pem").serial_number
    assert main(issue) == 0
    second = (tmp_path / "reviews.pem").stat().st_ino, _cert(tmp_path / "reviews.pem").serial_number
    # A new file renamed over the old one (a reader holds the old inode whole), and no temporary file left behind.
    assert first[0] != second[0]
    assert first[1] != second[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca-key.pem", "ca.pem", "reviews-key.pem", "reviews.pem"]


def test_a_certificate_never_outlives_its_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "init", "--trust-domain", "example.org", "--out", str(tmp_path), "--ttl", "1h"]) == 0
    assert main(["ca", "issue", "--service", "a", "--ttl", "24h", "--ca", str(tmp_path), "--out", str(tmp_path)]) == 0
    assert "the certificate ends with its CA" in capsys.readouterr().err
    assert _cert(tmp_path / "a.pem").not_valid_after_utc == _cert(tmp_path / "ca.pem").not_valid_after_utc


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["init", "--trust-domain", "Example.org"], "invalid trust domain 'Example.org'"),
        (["init", "--trust-domain", "exa mple"], "invalid trust domain 'exa mple'"),
        (["init", "--trust-domain", "example.org", "--ttl", "5"], "invalid duration '5'"),
        (["init", "--trust-domain", "example.org", "--ttl", "0s"], "invalid ttl '0s': above 0 and at most 8760h"),
        (["issue", "--service", "reviews", "--ca", "{tmp}/none"], "no CA directory '{tmp}/none'"),
        (["issue", "--service", "Reviews!", "--ca", "{ca}"], "invalid service 'Reviews!'"),
        (["issue", "--service", "reviews", "--namespace", "a/b", "--ca", "{ca}"], "invalid namespace 'a/b'"),
        (["issue", "--service", "reviews", "--ttl", "1d", "--ca", "{ca}"], "invalid duration '1d'"),
    ],
    ids=["uppercase-domain", "space-in-domain", "bare-ttl", "zero-ttl", "no-ca", "bad-service", "bad-ns", "bad-ttl"],
)
def test_bad_input_exits_2_with_a_clear_message(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "ca"
    assert main(["ca", "init", "--trust-domain", "example.org", "--out", str(ca)]) == 0
    capsys.readouterr()
    argv = [a.format(tmp=tmp_path, ca=ca) for a in argv]
    assert main(["ca", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"meshlib ca {argv[0]}: ")
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("key-is-a-directory", "cannot read '{ca}/ca-key.pem': Is a directory"),
        ("garbled-key", "'{ca}/ca-key.pem' is not a PEM private key"),
        ("other-key", "'{ca}/ca-key.pem' is not the key of '{ca}/ca.pem'"),
        ("garbled-cert", "'{ca}/ca.pem' is not a PEM certificate"),
        ("no-trust-domain", "names no trust domain"),
    ],
)
def test_an_unusable_ca_exits_2(damage: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    assert main(["ca", "init", "--trust-domain", "example.org", "--out", str(ca)]) == 0
    key = ca / "ca-key.pem"
    if damage == "key-is-a-directory":
        key.unlink()
        key.mkdir()
    elif damage == "garbled-key":
        key.write_text("garbage")
    elif damage == "other-key":
        other = ec.generate_private_key(ec.SECP256R1())
        key.write_bytes(
            other.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    elif damage == "garbled-cert":
        (ca / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    else:
        made = custom(ca, "plain", tmp_path / "plain")  # a CA file that is a plain certificate, no SPIFFE ID
        (ca / "ca.pem").write_bytes(made.cert.read_bytes())
        key.write_bytes(made.key.read_bytes())
    capsys.readouterr()
    assert main(["ca", "issue", "--service", "reviews", "--ca", str(ca), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("meshlib ca issue: ")
    assert message.format(ca=ca) in err
