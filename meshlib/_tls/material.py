"""Certificate, key and CA files: read, validated together, and re-read when they change, keeping the last good set.

What is checked, each problem with the field it belongs to: a file can be
read and is PEM (``cert_file`` and ``ca_file`` hold certificates, ``key_file``
an unencrypted private key), the key is the certificate's, the certificate is
meant for its side of the connection (extended key usage) and chains to a CA
in ``ca_file``. A certificate outside its validity period is not an error
(a rotation may be about to replace it) but a warning, as is one in the last
third of its lifetime: cert-manager renews at two thirds by default, so a
certificate past that point is one whose rotation is not happening.

:class:`CertificateSource` re-reads the files when a ``stat`` says they
changed, at most every :data:`CHECK_INTERVAL` seconds and only when the
material is used (no thread, no busy loop). New files that are unreadable,
half-written or do not fit together leave the last good material in force:
a key and certificate that do not match are what a reader sees between the
two renames of a rotation, so a bad read is only logged and counted once it
has lasted :data:`SETTLE` seconds.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Generic, Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshlib._control.watch import RACY_WINDOW, Stamp, stamp
from meshlib._engine.errors import openssl_words

__all__ = [
    "CHECK_INTERVAL",
    "SETTLE",
    "CertificateInfo",
    "CertificateSource",
    "Material",
    "MaterialError",
    "Purpose",
    "TlsFiles",
    "read_material",
]

logger = logging.getLogger("meshlib.tls")

# How often, at most, files in use are looked at (one stat each): rotations apply within about a second.
CHECK_INTERVAL: Final = 1.0
# How long a bad read may last before it is logged and counted (a rotation writes its files one at a time).
SETTLE: Final = 1.0
_MAX_CHAIN: Final = 8
_LOAD_TRIES: Final = 3

Purpose = Literal["client", "server"]
_EKU: Final = {"client": ExtendedKeyUsageOID.CLIENT_AUTH, "server": ExtendedKeyUsageOID.SERVER_AUTH}
_FIELDS: Final = ("cert_file", "key_file", "ca_file")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The paths of one side's TLS material (any may be None: e.g. no ca_file means the system's trust store)."""

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None

    def paths(self) -> list[tuple[str, Path]]:
        return [(name, Path(path)) for name in _FIELDS if (path := getattr(self, name)) is not None]


class MaterialError(Exception):
    """Files that cannot be used: ``errors`` lists ``(field, message)``, e.g. ``("key_file", "...")``."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors))


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """One loaded certificate, as ``mesh.stats()`` shows it."""

    file: str
    subject: str
    spiffe_id: str | None
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def of(cls, cert: x509.Certificate, file: str) -> CertificateInfo:
        return cls(
            file=file,
            subject=cert.subject.rfc4514_string(),
            spiffe_id=next(iter(_uri_sans(cert)), None),
            serial=f"{cert.serial_number:x}",
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )

    def as_dict(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "file": self.file,
            "subject": self.subject,
            "spiffe_id": self.spiffe_id,
            "serial": self.serial,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "expires_in_seconds": round((self.not_after - now).total_seconds(), 3),
        }

    def problem(self, now: dt.datetime) -> tuple[str, str] | None:
        """``(kind, message)`` when this certificate needs attention at ``now``, else None.

        ``kind`` is ``expired``, ``not-yet-valid`` or ``expiring`` (in the last third of its lifetime).
        """
        if now >= self.not_after:
            return "expired", f"the certificate expired at {self.not_after.isoformat()}"
        if now < self.not_before:
            return "not-yet-valid", f"the certificate is not valid before {self.not_before.isoformat()}"
        left = self.not_after - now
        if left < (self.not_after - self.not_before) / 3:
            return "expiring", (
                f"the certificate expires at {self.not_after.isoformat()}, in {_span(left)}: less than a third of"
                " its lifetime is left, so its rotation seems not to be happening"
            )
        return None


def _span(delta: dt.timedelta) -> str:
    """``2h13m``: a time span in its two largest units."""
    seconds = max(0, int(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass(frozen=True, slots=True)
class Material:
    """One validated set of files: their bytes as read, and the certificates they hold (leaf first, then CAs)."""

    files: TlsFiles
    data: tuple[bytes | None, bytes | None, bytes | None]  # cert_file, key_file, ca_file
    certificates: dict[str, list[CertificateInfo]] = field(default_factory=dict)  # field → certificates

    def problems(self, now: dt.datetime) -> list[tuple[str, str, str]]:
        """``(field, key, message)`` for each certificate past, before or near the end of its validity.

        ``key`` (the problem's kind and the certificate's serial) says when two checks found the same problem.
        """
        found = []
        for name, infos in self.certificates.items():
            for info in infos:
                problem = info.problem(now)
                if problem is not None:
                    kind, message = problem
                    where = f"{info.file}: {info.spiffe_id or info.subject}"
                    found.append((name, f"{kind}:{info.serial}", f"{message} ({where})"))
        return found


def _uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if not data.strip():
        raise ValueError(f"{str(path)!r} is empty")
    return data


def _certificates(data: bytes, path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{str(path)!r} is not a PEM certificate") from None


def _private_key(data: bytes, path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(f"{str(path)!r} is an encrypted key: meshlib reads unencrypted PEM keys") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{str(path)!r} is not a PEM private key") from None


def _public_der(key: Any) -> bytes:
    der: bytes = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _chains_to(chain: list[x509.Certificate], cas: list[x509.Certificate]) -> bool:
    """Whether ``chain[0]`` leads, through the intermediates after it, to a certificate of ``cas``."""
    current, intermediates = chain[0], chain[1:]
    for _ in range(_MAX_CHAIN):
        if any(_signed_by(current, ca) for ca in cas):
            return True
        following = next((c for c in intermediates if _signed_by(current, c)), None)
        if following is None:
            return False
        current = following
    return False


def _purpose_problem(cert: x509.Certificate, purpose: Purpose) -> str | None:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None  # no extended key usage: any purpose (RFC 5280 §4.2.1.12)
    if _EKU[purpose] in usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages:
        return None
    wanted = "clientAuth" if purpose == "client" else "serverAuth"
    return f"the certificate is not for TLS {purpose}s: its extended key usage lacks {wanted}"


def read_material(files: TlsFiles, purpose: Purpose) -> Material:
    """Read and check ``files`` for one ``purpose`` (our side of the connection); MaterialError lists every problem."""
    errors: list[tuple[str, str]] = []
    data: dict[str, bytes] = {}
    key: PrivateKeyTypes | None = None
    parsed: dict[str, list[x509.Certificate]] = {}
    for name, path in files.paths():
        try:
            data[name] = _read(path)
            if name == "key_file":
                key = _private_key(data[name], path)
            else:
                parsed[name] = _certificates(data[name], path)
        except ValueError as exc:
            errors.append((name, str(exc)))
    chain = parsed.get("cert_file", [])
    cas = parsed.get("ca_file", [])
    if chain and key is not None and _public_der(key.public_key()) != _public_der(chain[0].public_key()):
        errors.append(("key_file", f"the key does not match cert_file ({files.cert_file!r})"))
    if chain:
        problem = _purpose_problem(chain[0], purpose)
        if problem is not None:
            errors.append(("cert_file", problem))
        if cas and not _chains_to(chain, cas):
            issuer = chain[0].issuer.rfc4514_string()
            errors.append(("cert_file", f"not issued by a CA in ca_file ({files.ca_file!r}): its issuer is {issuer!r}"))
    if errors:
        raise MaterialError(errors)
    certificates: dict[str, list[CertificateInfo]] = {}
    if chain:
        certificates["cert_file"] = [CertificateInfo.of(chain[0], str(files.cert_file))]
    if cas:
        certificates["ca_file"] = [CertificateInfo.of(ca, str(files.ca_file)) for ca in cas]
    return Material(files, (data.get("cert_file"), data.get("key_file"), data.get("ca_file")), certificates)


def reread(material: Material) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The files' bytes now (None where unreadable), to tell whether they changed since ``material`` was read."""
    out: list[bytes | None] = []
    for name in _FIELDS:
        path = getattr(material.files, name)
        try:
            out.append(Path(path).read_bytes() if path is not None else None)
        except OSError:
            out.append(None)
    return out[0], out[1], out[2]


T = TypeVar("T")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertificateSource(Generic[T]):
    """One side's TLS material, built into a ``T`` (an SSL context), re-read when its files change.

    Construction reads and builds at once and raises :class:`MaterialError`
    (the config's error). :meth:`get` returns ``(version, built)``; the version
    goes up by one with each new material. ``where`` names the source in logs
    (``clusters.reviews.tls``); ``on_reload(accepted)`` is told of each new
    material taken (True) or refused (False).
    """

    def __init__(
        self,
        files: TlsFiles,
        purpose: Purpose,
        build: Callable[[Material], T],
        *,
        where: str,
        on_reload: Callable[[bool], None] | None = None,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        self.files = files
        self.purpose = purpose
        self.where = where
        self.interval = interval
        self._build = build
        self._on_reload = on_reload
        self._paths = [path for _, path in files.paths()]
        self._lock = threading.Lock()
        self._stamps = self._stat()
        material, built = self._load()
        self._current: tuple[int, Material, T] = (1, material, built)
        self._next_check = time.monotonic() + interval
        self._bad: tuple[str, float] | None = None  # why the files are bad, and since when (-1: reported)
        self.last_error: str | None = None
        self._warned: set[tuple[str, str]] = set()  # (field, key) of the problems logged for the material in force
        self._warn(material)

    @property
    def material(self) -> Material:
        return self._current[1]

    def get(self) -> tuple[int, T]:
        """The material in force, ``(version, built)``; first looks at the files if CHECK_INTERVAL has passed."""
        if time.monotonic() >= self._next_check and self._lock.acquire(blocking=False):
            try:
                self._next_check = time.monotonic() + self.interval
                self._check()
            except Exception:  # a bug must not fail the request: the material in force serves on
                logger.exception("%s: checking the certificate files failed", self.where)
            finally:
                self._lock.release()
        version, _, built = self._current
        return version, built

    def check(self) -> bool:
        """Look at the files now (in this thread); whether new material was taken."""
        with self._lock:
            return self._check()

    def _stat(self) -> list[Stamp | None]:
        return [stamp(path) for path in self._paths]

    def _load(self) -> tuple[Material, T]:
        # Loading reads the files twice (to check them, then into the SSL context): a rotation between the two
        # reads would load files other than those checked, so the bytes are compared and the load tried again.
        for _ in range(_LOAD_TRIES):
            material = read_material(self.files, self.purpose)
            try:
                built = self._build(material)
            except ssl.SSLError as exc:
                if reread(material) != material.data:
                    continue  # OpenSSL read a half-rotated pair (key values mismatch): again
                raise MaterialError([("cert_file", f"OpenSSL cannot load it: {openssl_words(exc)}")]) from None
            if reread(material) == material.data:
                return material, built
        raise MaterialError([("cert_file", "the files kept changing while they were being read")])

    def _check(self) -> bool:
        # A certificate that nears its end, or ends, while in force is warned about then too (once each).
        self._warn(self._current[1])
        stamps = self._stat()
        now_ns = time.time_ns()
        settled = all(s is None or now_ns - s[0] > RACY_WINDOW * 1e9 for s in stamps)
        if stamps == self._stamps and settled and self._bad is None:
            return False
        self._stamps = stamps
        version, current, _ = self._current
        if reread(current) == current.data:
            self._bad = None
            return False
        try:
            material, built = self._load()
        except MaterialError as exc:
            self._refuse(exc)
            return False
        self._bad = None
        self._current = (version + 1, material, built)
        self.last_error = None
        self._warned.clear()
        leaf = material.certificates.get("cert_file")
        what = f": {leaf[0].spiffe_id or leaf[0].subject}, serial {leaf[0].serial}" if leaf else ""
        logger.info("%s: loaded new certificates%s", self.where, what)
        if self._on_reload is not None:
            self._on_reload(True)
        self._warn(material)
        return True

    def _refuse(self, exc: MaterialError) -> None:
        """A bad read: logged and counted once it has lasted SETTLE seconds (a rotation may be half done)."""
        why = str(exc)
        now = time.monotonic()
        if self._bad is None or self._bad[0] != why:
            self._bad = (why, now)  # first seen: perhaps a rotation between its two renames
            return
        if self._bad[1] < 0 or now - self._bad[1] < SETTLE:
            return
        self._bad = (why, -1.0)  # reported: not again until the files change
        self.last_error = why
        logger.warning("%s: new certificate files refused, the last good ones stay in force: %s", self.where, why)
        if self._on_reload is not None:
            self._on_reload(False)

    def _warn(self, material: Material) -> None:
        """Log each problem of ``material``'s certificates once per load (WARNING)."""
        for name, key, message in material.problems(_utcnow()):
            if (name, key) not in self._warned:
                self._warned.add((name, key))
                logger.warning("%s.%s: %s", self.where, name, message)
