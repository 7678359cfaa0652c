"""Real etcd members on free loopback ports, for the registry and config source tests: 1 or 3, plain or TLS."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import shutil
import ssl
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.ports import free_ports

ETCD = "/usr/bin/etcd"
MISSING = (
    f"etcd is not installed ({ETCD}): the etcd discovery tests need a real one. Install Debian's etcd-server"
    " (`apt-get install etcd-server`); .ci/run installs it."
)
# Raft timings for tests: a heartbeat every 50 ms and elections after 500-1000 ms, so that a new leader follows
# a SIGKILLed one within about a second, yet no spurious election happens on a busy 2-core machine.
HEARTBEAT_MS = 50
ELECTION_MS = 500


class MissingEtcdError(RuntimeError):
    """No etcd binary at /usr/bin/etcd."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files made by :func:`make_tls`: a CA, a serving certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        # etcd's own gateway dials its gRPC server with the serving certificate, so that one is a client too.
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls(directory: Path) -> TlsFiles:
    """A fresh CA in ``directory`` and, signed by it, etcd's certificate (127.0.0.1, localhost) and a client's."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(f"etcd test CA {uuid.uuid4().hex[:8]}", ca_key, None, ca_key, ca=True)
    files = TlsFiles(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server-key.pem",
        directory / "client.pem",
        directory / "client-key.pem",
    )
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    loopback: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    for cert_path, key_path, subject, sans in [
        (files.server_cert, files.server_key, "etcd", loopback),
        (files.client_cert, files.client_key, "meshlib", None),
    ]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert_path.write_bytes(
            _cert(subject, key, ca.subject, ca_key, sans=sans).public_bytes(serialization.Encoding.PEM)
        )
        _write_key(key_path, key)
    return files


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


@dataclass
class _Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None


class EtcdCluster:
    """1 or 3 etcd members on 127.0.0.1 with data dirs under ``directory`` (a temp dir of its own by default).

    ``with EtcdCluster(tmp_path, members=3) as cluster:`` starts them and waits for a leader;
    ``cluster.endpoints`` are the client URLs (https:// with ``tls=True``, whose files are ``cluster.tls``).
    Each member logs to ``NAME.log`` in the directory, not to the test output; ``stop()`` removes the data
    dirs. ``auth_token_ttl`` (seconds) is etcd's ``--auth-token-ttl``; ``progress_notify`` (seconds) its watch
    progress notification interval.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        members: int = 1,
        tls: bool = False,
        auth_token_ttl: int | None = None,
        progress_notify: float | None = None,
    ) -> None:
        if not Path(ETCD).is_file():
            raise MissingEtcdError(MISSING)
        self._size = members
        self._owned = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="meshlib-etcd-")) if directory is None else directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tls = make_tls(self.directory / "tls") if tls else None
        self._extra: list[str] = []
        if auth_token_ttl is not None:
            self._extra += ["--auth-token-ttl", str(auth_token_ttl)]
        if progress_notify is not None:
            self._extra += ["--experimental-watch-progress-notify-interval", f"{int(progress_notify * 1000)}ms"]
        self._members: list[_Member] = []
        self._http = httpx.Client(timeout=1.0, verify=self.ssl_context(), trust_env=False)

    # -- what tests use

    @property
    def endpoints(self) -> list[str]:
        """The members' client URLs, in member order."""
        scheme = "https" if self.tls else "http"
        return [f"{scheme}://127.0.0.1:{m.client_port}" for m in self._members]

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the cluster's CA and presents the client certificate (default with no TLS)."""
        context = ssl.create_default_context()
        if self.tls:
            context.load_verify_locations(self.tls.ca)
            context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        return context

    def status(self, index: int) -> dict[str, Any] | None:
        """Member ``index``'s /v3/maintenance/status, or None when it does not answer."""
        try:
            response = self._http.post(f"{self.endpoints[index]}/v3/maintenance/status", json={})
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        status: dict[str, Any] = response.json()
        return status

    def wait_ready(self, timeout: float = 10.0, members: list[int] | None = None) -> None:
        """Wait until every running member (or ``members``) answers and knows a leader; RuntimeError past timeout."""
        indices = members if members is not None else [i for i, m in enumerate(self._members) if self._running(m)]
        deadline = time.monotonic() + timeout
        waiting = set(indices)
        while waiting:
            for i in sorted(waiting):
                member = self._members[i]
                if member.process is not None and member.process.poll() is not None:
                    raise _ExitedError(
                        f"etcd member {member.name} exited with {member.process.returncode}: {self._tail(i)}"
                    )
                status = self.status(i)
                if status is not None and int(status.get("leader", "0")) != 0:
                    waiting.discard(i)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(self._members[i].name for i in sorted(waiting))
                raise RuntimeError(f"etcd member(s) {names} not ready within {timeout} s; see {self.directory}")
            if waiting:
                time.sleep(0.05)

    def leader(self, timeout: float = 10.0) -> int:
        """The index of the member that is leader now, waiting up to ``timeout`` for one to be elected."""
        deadline = time.monotonic() + timeout
        while True:
            for i, member in enumerate(self._members):
                if not self._running(member):
                    continue
                status = self.status(i)
                if status is not None and status.get("leader") == status["header"]["member_id"]:
                    return i
            if time.monotonic() > deadline:
                raise RuntimeError(f"no etcd leader within {timeout} s")
            time.sleep(0.02)

    def enable_auth(self, username: str, password: str, prefix: str) -> None:
        """Turn on etcd's auth: a root user, and ``username`` allowed to read and write keys under ``prefix``."""
        end = bytearray(prefix.encode())
        end[-1] += 1
        readwrite = {"permType": "READWRITE", "key": _b64(prefix), "range_end": _b64(bytes(end))}
        steps: list[tuple[str, dict[str, Any]]] = [
            ("user/add", {"name": "root", "password": f"root-{uuid.uuid4().hex}"}),
            ("role/add", {"name": "root"}),
            ("user/grant", {"user": "root", "role": "root"}),
            ("user/add", {"name": username, "password": password}),
            ("role/add", {"name": username}),
            ("role/grant", {"name": username, "perm": readwrite}),
            ("user/grant", {"user": username, "role": username}),
            ("enable", {}),
        ]
        for path, body in steps:
            response = self._http.post(f"{self.endpoints[0]}/v3/auth/{path}", json=body)
            if response.status_code != 200:
                raise RuntimeError(f"etcd auth/{path}: HTTP {response.status_code} {response.text}")

    def kill(self, index: int) -> None:
        """SIGKILL member ``index``: its sockets close at once and its peers notice only by missed heartbeats."""
        process = self._members[index].process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=5)

    def restart(self, index: int, timeout: float = 10.0) -> None:
        """Start member ``index`` again on the same ports and data dir, and wait until it is back in the cluster."""
        self.kill(index)
        self._spawn(index, "existing")
        self.wait_ready(timeout, members=[index])

    def start(self) -> Self:
        """Start every member and wait for a leader; new ports and a retry when a member exits (port taken)."""
        for attempt in range(3):
            self._create(attempt)
            try:
                for i in range(self._size):
                    self._spawn(i, "new")
                self.wait_ready()
                return self
            except _ExitedError:
                self._stop_members()
                if attempt == 2:
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop every member and remove its data dirs (etcd preallocates 64 MB of WAL), or all if the dir is ours."""
        self._stop_members()
        self._http.close()
        for run in self.directory.glob("run*"):
            shutil.rmtree(run, ignore_errors=True)
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # -- processes

    def _create(self, attempt: int) -> None:
        ports = free_ports(2 * self._size)
        base = self.directory / f"run{attempt}"
        self._members = [
            _Member(f"m{i}", ports[2 * i], ports[2 * i + 1], base / f"m{i}.data", self.directory / f"m{i}.log")
            for i in range(self._size)
        ]
        # Unique per cluster: a member never joins another test's cluster even when a port is reused.
        self._token = f"meshlib-{uuid.uuid4().hex}"

    def _spawn(self, index: int, state: str) -> None:
        member = self._members[index]
        client_url = self.endpoints[index]
        initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self._members)
        args = [
            ETCD,
            *("--name", member.name, "--data-dir", str(member.data_dir)),
            *("--listen-client-urls", client_url, "--advertise-client-urls", client_url),
            *("--listen-peer-urls", f"http://127.0.0.1:{member.peer_port}"),
            *("--initial-advertise-peer-urls", f"http://127.0.0.1:{member.peer_port}"),
            *("--initial-cluster", initial, "--initial-cluster-state", state),
            *("--initial-cluster-token", self._token),
            *("--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS)),
            # Cheap password hashing: authenticating is part of the tests' time.
            *("--bcrypt-cost", "4", "--logger", "zap", "--log-outputs", "stderr"),
            *self._extra,
        ]
        if self.tls:
            args += [
                *("--cert-file", str(self.tls.server_cert), "--key-file", str(self.tls.server_key)),
                *("--trusted-ca-file", str(self.tls.ca), "--client-cert-auth"),
            ]
        with member.log.open("ab") as log:
            log.write(f"\n=== {' '.join(args)}\n".encode())
            log.flush()
            member.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    @staticmethod
    def _running(member: _Member) -> bool:
        return member.process is not None and member.process.poll() is None

    def _tail(self, index: int) -> str:
        try:
            return self._members[index].log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def _stop_members(self) -> None:
        # SIGKILL: the data is thrown away, and a graceful stop of a member that lost its quorum takes seconds.
        for member in self._members:
            if member.process is not None and member.process.poll() is None:
                member.process.kill()
        for member in self._members:
            if member.process is not None:
                member.process.wait(timeout=5)


class _ExitedError(RuntimeError):
    """A member exited while starting (usually: a port was taken between choosing and binding it)."""
