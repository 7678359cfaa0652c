"""Every bad certificate file is refused when the mesh loads it, with its field path and its own message.

The same checks run when a Mesh is built, when it reloads, when ``meshlib
proxy`` starts and in ``meshlib validate``. A certificate outside its
validity period loads, with a warning: a rotation may be about to replace it.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

import meshlib
from meshlib._cli import main
from meshlib._sidecar.launch import EXIT_CONFIG
from tests.conftest import MakeMesh
from tests.sidecar import proxy_process
from tests.tls.pki import Pki, Workload, custom, expired, not_yet_valid

ENDPOINT = "https://127.0.0.1:9443"
ISSUER = "CN=meshlib CA example.org,O=meshlib"

Breaker = Callable[[Workload, Pki, Pki, Path], tuple[dict[str, Any], str, str]]
"""Makes a bad ``tls`` from a good workload: (tls, the field at fault, the exact message)."""


def _copy(workload: Workload, out: Path) -> Workload:
    out.mkdir(parents=True, exist_ok=True)
    cert, key = out / workload.cert.name, out / workload.key.name
    shutil.copy(workload.cert, cert)
    shutil.copy(workload.key, key)
    return Workload(workload.service, cert, key, workload.ca)


def missing_cert(w: Workload, pki: Pki, other: Pki, out: Path) -> tuple[dict[str, Any], str, str]:
    path = out / "nowhere.pem"
    return w.client_tls(cert_file=str(path)), "cert_file", f"cannot read {str(path)!r}: No such file or directory"


def missing_ca(w: Workload, pki: Pki, other: Pki, out: Path) -> tuple[dict[str, Any], str, str]:
    path = out / "no-ca.pem"
    return w.client_tls(ca_file=str(path)), "ca_file", f"cannot read {str(path)!r}: No such file or directory"


def garbled_cert(w: Workload, pki: Pki, other: Pki, out: Path) -> tuple[dict[str, Any], str, str]:
    w = _copy(w, out)
    text = w.cert.read_text()
    w.cert.write_text(text[:60] + "!!not base64!!" + text[80:])
    return w.client_tls(), "cert_file", f"{str(w.cert)!r} is not a PEM certificate"


def key_as_cert(w: Workload, pki: Pki, other: Pki, out: Path) -> tuple[dict[str, Any], str, str]:
    return w.client_tls(cert_file=str(w.key)), "cert_file", f"{str(w.key)!r} is not a PEM certificate"


def empty_cert(w: Workload, pki: Pki, other: Pki, out: Path) -> tuple[dict[str, Any], str, str]:
    w = _copy(w, out)
    w.cert.write_text("")
    return w.client_tls(), "cert_file", f"{str(w.cert)!r} is empty"


def garbled_key(w: Workload, pki: Pki, other: Pki, out: Path) -> tuple[dict[str, Any], str, str]:
    w = _copy(w, out)
    w.key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    return w.client_tls(), "key_file", f"{str(w.key)!r} is not a PEM private key"


def encrypted_key(w: Workload, pki: Pki, other: Pki, out: Path) -> tuple[dict[str, Any], str, str]:
    w = _copy(w, out)
    key = serialization.load_pem_private_key(w.key.read_bytes(), password=None)
    w.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return w.client_tls(), "key_file", f"{str(w.key)!r} is an encrypted key: meshlib reads unencrypted PEM keys"


def key_of_another(w: Workload, pki: Pki, other: Pki, out: Path) -> tuple[dict[str, Any], str, str]:
    w = _copy(w, out)
    key = ec.generate_private_key(ec.SECP256R1())
    w.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return w.client_tls(), "key_file", f"the key does not match cert_file ({str(w.cert)!r})"


def wrong_ca(w: Workload, pki: Pki, other: Pki, out: Path) -> tuple[dict[str, Any], str, str]:
    message = f"not issued by a CA in ca_file ({str(other.ca_file)!r}): its issuer is {ISSUER!r}"
    return w.client_tls(ca_file=str(other.ca_file)), "cert_file", message


def garbled_ca(w: Workload, pki: Pki, other: Pki, out: Path) -> tuple[dict[str, Any], str, str]:
    path = out / "ca.pem"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    return w.client_tls(ca_file=str(path)), "ca_file", f"{str(path)!r} is not a PEM certificate"


def server_only(w: Workload, pki: Pki, other: Pki, out: Path) -> tuple[dict[str, Any], str, str]:
    made = custom(pki.ca_dir, "frontend", out, usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    message = "the certificate is not for TLS clients: its extended key usage lacks clientAuth"
    return made.client_tls(), "cert_file", message


BREAKERS: list[Breaker] = [
    missing_cert,
    missing_ca,
    garbled_cert,
    key_as_cert,
    empty_cert,
    garbled_key,
    encrypted_key,
    key_of_another,
    wrong_ca,
    garbled_ca,
    server_only,
]


def _config(tls: dict[str, Any]) -> dict[str, Any]:
    return {"clusters": {"reviews": {"endpoints": [ENDPOINT], "tls": tls}}}


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda b: b.__name__)
def test_a_bad_file_fails_the_mesh_build_with_its_field_path(
    breaker: Breaker, workloads: dict[str, Workload], pki: Pki, other_pki: Pki, tmp_path: Path
) -> None:
    tls, field, message = breaker(workloads["frontend"], pki, other_pki, tmp_path)
    with pytest.raises(meshlib.ConfigError) as raised:
        meshlib.Mesh.from_dict(_config(tls))
    assert raised.value.errors == [(f"clusters.reviews.tls.{field}", message)]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda b: b.__name__)
def test_meshlib_validate_reads_the_files_too(
    breaker: Breaker,
    workloads: dict[str, Workload],
    pki: Pki,
    other_pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tls, field, message = breaker(workloads["frontend"], pki, other_pki, tmp_path)
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(_config(tls)))
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err == f"invalid mesh config in {path}:\n  clusters.reviews.tls.{field}: {message}\n"


def test_every_bad_file_is_reported_at_once(
    workloads: dict[str, Workload], pki: Pki, other_pki: Pki, tmp_path: Path
) -> None:
    first, field1, message1 = key_of_another(workloads["frontend"], pki, other_pki, tmp_path / "a")
    second, field2, message2 = missing_ca(workloads["frontend"], pki, other_pki, tmp_path / "b")
    config = {
        "clusters": {
            "reviews": {"endpoints": [ENDPOINT], "tls": first},
            "ratings": {"endpoints": ["https://127.0.0.1:9444"], "tls": second},
        }
    }
    with pytest.raises(meshlib.ConfigError) as raised:
        meshlib.Mesh.from_dict(config)
    assert raised.value.errors == [
        (f"clusters.reviews.tls.{field1}", message1),
        (f"clusters.ratings.tls.{field2}", message2),
    ]


def test_inbound_mtls_files_are_checked_as_a_server_s(
    workloads: dict[str, Workload],
    pki: Pki,
    other_pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_mesh: MakeMesh,
) -> None:
    reviews = workloads["reviews"]
    bad_key = key_of_another(reviews, pki, other_pki, tmp_path)[0]["key_file"]
    inbound = {"mtls": {"mode": "strict", "ca_file": str(reviews.ca), "cert_file": str(reviews.cert)}}
    config = {"allow_empty": True, "inbound": {**inbound, "mtls": {**inbound["mtls"], "key_file": bad_key}}}
    with pytest.raises(meshlib.ConfigError) as raised:
        meshlib.Mesh.from_dict(config)
    message = f"the key does not match cert_file ({str(reviews.cert)!r})"
    assert raised.value.errors == [("inbound.mtls.key_file", message)]
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["validate", str(path)]) == 2
    assert f"inbound.mtls.key_file: {message}" in capsys.readouterr().err
    good = {"allow_empty": True, "inbound": {"mtls": {**inbound["mtls"], "key_file": str(reviews.key)}}}
    mesh = make_mesh(good)
    assert mesh.stats()["certificates"]["inbound.mtls.cert_file"]["spiffe_id"] == reviews.spiffe_id


def test_a_reload_with_bad_files_is_refused_and_the_old_config_serves(
    workloads: dict[str, Workload], pki: Pki, other_pki: Pki, tmp_path: Path, make_mesh: MakeMesh
) -> None:
    frontend = workloads["frontend"]
    mesh = make_mesh(_config(frontend.client_tls("reviews")))
    bad, field, message = key_of_another(frontend, pki, other_pki, tmp_path)
    with pytest.raises(meshlib.ConfigError) as raised:
        mesh.reload(_config(bad))
    assert raised.value.errors == [(f"clusters.reviews.tls.{field}", message)]
    assert mesh.config.clusters["reviews"].tls is not None
    assert mesh.config.clusters["reviews"].tls.key_file == str(frontend.key)
    assert mesh.stats()["reloads"]["refused"] == 1


def test_the_sidecar_refuses_to_start_with_bad_files(
    workloads: dict[str, Workload], pki: Pki, other_pki: Pki, tmp_path: Path
) -> None:
    bad, field, message = wrong_ca(workloads["frontend"], pki, other_pki, tmp_path)
    proxy = proxy_process.start(tmp_path / "sidecar", _config(bad))
    assert proxy.wait() == EXIT_CONFIG
    proxy.stop()
    assert f"clusters.reviews.tls.{field}: {message}" in proxy.log


@pytest.mark.parametrize(
    ("make", "problem"),
    [(expired, "the certificate expired at "), (not_yet_valid, "the certificate is not valid before ")],
    ids=["expired", "not-yet-valid"],
)
def test_an_own_certificate_out_of_its_validity_loads_with_a_warning(
    make: Callable[[Pki, str, Path], Workload],
    problem: str,
    pki: Pki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    own = make(pki, "frontend", tmp_path / "own")
    config = _config(own.client_tls("reviews"))
    with caplog.at_level(logging.WARNING, logger="meshlib.tls"), meshlib.Mesh.from_dict(config):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.name == "meshlib.tls"]
    assert len(warnings) == 1  # once per load
    assert warnings[0].startswith(f"clusters.reviews.tls.cert_file: {problem}")
    assert own.spiffe_id in warnings[0]
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out == "ok\n"
    assert out.err.startswith(f"warning: clusters.reviews.tls.cert_file: {problem}")


def test_a_certificate_in_the_last_third_of_its_life_is_warned_about(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Valid for 3h, issued 2.5h ago: half an hour left, less than a third of its lifetime.
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2, minutes=30)
    own = pki.issue("frontend", ttl=3 * 3600, now=start, out=tmp_path / "own")
    with caplog.at_level(logging.WARNING, logger="meshlib.tls"), meshlib.Mesh.from_dict(_config(own.client_tls())):
        pass
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "meshlib.tls"]
    assert "less than a third of its lifetime is left, so its rotation seems not to be happening" in warning
    assert re.search(r", in (29|30)m\d+s: less than a third", warning), warning
