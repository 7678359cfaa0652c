"""Reloading certificate files: new ones are taken, half-written or bad ones leave the last good set in force."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path

import pytest
import time_machine

from meshlib._tls import ca, material
from meshlib._tls.material import CertificateSource, Material, TlsFiles
from tests.tls.pki import Pki


def _serial(m: Material) -> str:
    return m.certificates["cert_file"][0].serial


@pytest.fixture
def files(pki: Pki, tmp_path: Path) -> TlsFiles:
    pki.issue("frontend", out=tmp_path)
    return TlsFiles(str(tmp_path / "frontend.pem"), str(tmp_path / "frontend-key.pem"), str(pki.ca_file))


def _source(files: TlsFiles, events: list[bool], interval: float = 0.0) -> CertificateSource[str]:
    return CertificateSource(
        files, "client", _serial, where="clusters.t.tls", on_reload=events.append, interval=interval
    )


def test_new_files_are_taken_logged_and_counted(
    files: TlsFiles, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[bool] = []
    source = _source(files, events)
    assert source.get()[0] == 1
    issued = ca.issue(pki.ca_dir, tmp_path, "frontend")
    with caplog.at_level(logging.INFO, logger="meshlib.tls"):
        assert source.get() == (2, f"{issued.serial:x}")
        assert source.get() == (2, f"{issued.serial:x}")  # nothing changed since
    assert events == [True]
    frontend = "spiffe://example.org/ns/default/sa/frontend"
    assert [r.getMessage() for r in caplog.records] == [
        f"clusters.t.tls: loaded new certificates: {frontend}, serial {issued.serial:x}"
    ]


def test_a_rotation_seen_half_done_is_read_again_without_a_word(
    files: TlsFiles, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[bool] = []
    source = _source(files, events)
    _, first = source.get()
    newer = tmp_path / "newer"
    issued = ca.issue(pki.ca_dir, newer, "frontend")
    with caplog.at_level(logging.INFO, logger="meshlib.tls"):
        shutil.copy(newer / "frontend-key.pem", tmp_path / "frontend-key.pem")  # the key is renamed first...
        assert source.get() == (1, first)  # ...so the new key and the old certificate do not match yet
        shutil.copy(newer / "frontend.pem", tmp_path / "frontend.pem")
        assert source.get() == (2, f"{issued.serial:x}")
    assert events == [True]
    assert [r.levelno for r in caplog.records] == [logging.INFO]


def test_bad_files_that_stay_bad_are_refused_once_and_the_last_good_serve_on(
    files: TlsFiles, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(material, "SETTLE", 0.0)
    events: list[bool] = []
    source = _source(files, events)
    good = source.get()
    cert = tmp_path / "frontend.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\ngarbled")
    with caplog.at_level(logging.WARNING, logger="meshlib.tls"):
        for _ in range(4):
            assert source.get() == good
    assert events == [False]  # counted once, however often it was looked at
    message = f"cert_file: {str(cert)!r} is not a PEM certificate"
    assert [r.getMessage() for r in caplog.records] == [
        f"clusters.t.tls: new certificate files refused, the last good ones stay in force: {message}"
    ]
    assert source.last_error == message
    issued = ca.issue(pki.ca_dir, tmp_path, "frontend")
    assert source.get() == (2, f"{issued.serial:x}")
    assert source.last_error is None


def test_a_file_that_disappears_leaves_the_last_good_in_force(files: TlsFiles, tmp_path: Path) -> None:
    source = _source(files, [])
    good = source.get()
    (tmp_path / "frontend-key.pem").unlink()
    assert source.get() == good


def test_files_are_looked_at_no_more_than_once_an_interval(files: TlsFiles, pki: Pki, tmp_path: Path) -> None:
    source = _source(files, [], interval=3600.0)
    good = source.get()
    ca.issue(pki.ca_dir, tmp_path, "frontend")
    assert source.get() == good
    assert source.check() is True  # looked at on demand
    assert source.get()[0] == 2


def test_a_certificate_in_force_is_warned_about_as_it_nears_its_end_and_ends(
    files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    source = _source(files, [])  # the fixture's certificate: valid for an hour from now
    start = dt.datetime.now(dt.UTC)
    with caplog.at_level(logging.WARNING, logger="meshlib.tls"):
        source.get()
        assert caplog.records == []
        for minutes in (45, 50, 90, 95):
            with time_machine.travel(start + dt.timedelta(minutes=minutes), tick=False):
                source.get()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # each problem once, however often the files are looked at
    assert "less than a third of its lifetime is left" in messages[0]
    assert "the certificate expired at" in messages[1]
    assert all(m.startswith("clusters.t.tls.cert_file: ") for m in messages)
