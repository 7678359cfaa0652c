"""Heavy libraries load only for a mesh that uses them: the sidecar's idle memory and start-up stay small."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import answer_ok, raw_server
from tests.sidecar.proxy_process import ProxyProcess, free_port, write_config

PROBE = """
import json, sys
import meshlib
from meshlib._sidecar import process  # the sidecar's whole import graph
mesh = meshlib.Mesh.from_dict(json.loads(sys.argv[1]))
with mesh.client() as client:
    pass
heavy = ("jwt", "cryptography", "limits", "pybreaker", "redis", "opentelemetry", "requests", "grpc", "google.protobuf")
print(json.dumps(sorted(name for name in heavy if name in sys.modules)))
"""

# The P-256 public key of RFC 7515 Appendix A.3.
JWKS = json.dumps(
    {
        "keys": [
            {
                "kty": "EC",
                "crv": "P-256",
                "kid": "a3",
                "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
            }
        ]
    }
)
PLAIN: dict[str, object] = {
    "clusters": {"reviews": {"endpoints": ["http://127.0.0.1:9081"], "timeout": "1s", "retry": {"attempts": 2}}}
}


def _python(code: str, *args: str) -> str:
    """What ``python -c code args...`` prints, in a process of its own (a fresh import graph)."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, timeout=60)
    return done.stdout


def _loaded(config: dict[str, object]) -> list[str]:
    loaded: list[str] = json.loads(_python(PROBE, json.dumps(config)))
    return loaded


def test_a_plaintext_mesh_with_timeouts_and_retries_loads_none_of_them() -> None:
    assert _loaded(PLAIN) == []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"inbound": {"authorization": [{"action": "deny", "rules": [{"to": {"paths": ["/admin/*"]}}]}]}}, []),
        ({"inbound": {"jwt": [{"issuer": "i", "jwks": JWKS}]}}, ["cryptography", "jwt"]),
    ],
)
def test_the_inbound_policy_loads_pyjwt_only_for_tokens(extra: dict[str, object], expected: list[str]) -> None:
    assert _loaded({**PLAIN, **extra}) == expected


@pytest.mark.parametrize(
    ("tracing", "expected"),
    [
        ({"sampling": 0.5}, ["opentelemetry"]),
        ({"zipkin": {"endpoint": "http://127.0.0.1:9411/api/v2/spans"}}, ["opentelemetry", "requests"]),
    ],
    ids=["spans-only", "zipkin"],
)
def test_opentelemetry_loads_only_for_a_mesh_with_tracing(tracing: object, expected: list[str]) -> None:
    """The SDK for ``tracing:``, and the Zipkin exporter's HTTP client (requests) only when there is a collector."""
    assert _loaded({**PLAIN, "tracing": tracing}) == expected


# httpx imports httpcore only when an HTTPTransport / AsyncHTTPTransport is built, and httpcore imports trio
# when it is installed (~5 MB and ~70 ms more for an idle sidecar): neither the sidecar nor a mesh on the
# fast transport builds one, so neither loads them.
HTTPCORE = ("httpcore", "trio")

FAST_PROBE = """
import asyncio, json, sys
import meshlib
from meshlib._sidecar import process  # the sidecar's whole import graph
mesh = meshlib.Mesh.from_dict(json.loads(sys.argv[1]))

async def main():
    async with mesh.async_client(transport=meshlib.AsyncHTTP1Transport()) as client:
        assert (await client.get("http://reviews/")).text == "ok"

asyncio.run(main())
print(json.dumps(sorted(name for name in sys.argv[2:] if name in sys.modules)))
"""

# ``meshlib proxy`` as ``python -m meshlib`` runs it; each line on stdin asks which of argv[2:] are loaded.
PROXY_PROBE = """
import json, runpy, sys, threading
asked = sys.argv[2:]

def report():
    for _ in sys.stdin:
        # Loaded: a module there (None there means "refused": see meshlib/_cli.py).
        print(json.dumps(sorted(name for name in asked if sys.modules.get(name) is not None)), flush=True)

threading.Thread(target=report, daemon=True).start()
sys.argv = ["meshlib", "proxy", *json.loads(sys.argv[1])]  # the command's arguments, as a JSON list
runpy.run_module("meshlib", run_name="__main__", alter_sys=True)
"""


def _reviews_on(url: str, **extra: object) -> dict[str, object]:
    """PLAIN's cluster on ``url``, with a hedge too (what gives a sync try the interrupting backend), and ``extra``."""
    reviews = {"endpoints": [url], "timeout": "1s", "retry": {"attempts": 2}, "hedge": {"after": "1s"}, **extra}
    return {"clusters": {"reviews": reviews}}


def test_a_mesh_on_the_fast_transport_never_loads_httpcore() -> None:
    with raw_server(answer_ok) as upstream:
        loaded = json.loads(_python(FAST_PROBE, json.dumps(_reviews_on(upstream.url)), *HTTPCORE))
    assert loaded == []


# httpx's command line (``httpx._main``) loads click (a dependency of uvicorn, so installed here), and rich and
# pygments where they are installed: about 1-2 MB of an idle sidecar, which never runs it.
HTTPX_CLI = ("httpx._main", "click", "rich", "pygments")


def test_a_plaintext_sidecar_never_loads_httpcore_nor_httpx_cli(tmp_path: Path) -> None:
    """Idle, and after forwarding a request: its upstream client is its own (``AsyncHTTP1Transport``)."""
    with _probed_proxy(tmp_path, [], [*HTTPCORE, *HTTPX_CLI]) as proxy:
        assert _ask(proxy) == []
        with proxy.client(timeout=10) as client:
            assert client.get("http://reviews/").text == "ok"
        assert _ask(proxy) == []


# anyio (0.7 MB) serves another event loop than asyncio (trio), a shared breaker's worker thread and a retry's
# backoff sleep; difflib the "did you mean" of a config error. A sidecar needs neither to forward a request.
ON_DEMAND = ("anyio", "difflib")


def test_a_sidecar_forwarding_through_its_policies_loads_neither_anyio_nor_difflib(tmp_path: Path) -> None:
    """Idle, and after a request through its timeout, retry, hedge and an in-memory circuit breaker."""
    breaker: dict[str, object] = {"circuit_breaker": {"failure_threshold": 5, "recovery_timeout": "30s"}}
    with _probed_proxy(tmp_path, [], ON_DEMAND, cluster=breaker) as proxy:
        assert _ask(proxy) == []
        with proxy.client(timeout=10) as client:
            assert client.get("http://reviews/").text == "ok"
        assert _ask(proxy) == []


# pydantic, its core and its models' validators (about 13 MB of an idle sidecar, YAML included): the serving process's
# configs are validated by a child process and arrive as records (meshlib/_config/records.py).
VALIDATION = ("pydantic", "pydantic_core", "yaml", "meshlib._config.load")


def test_a_sidecar_serving_and_reloading_loads_neither_pydantic_nor_yaml(tmp_path: Path) -> None:
    with _probed_proxy(tmp_path, [], VALIDATION) as proxy:
        assert _ask(proxy) == []
        with proxy.client(timeout=10) as client:
            assert client.get("http://reviews/").text == "ok"
            write_config(proxy.config_path, _reviews_on("http://127.0.0.1:1"), proxy.outbound, proxy.admin)
            reply = client.post(f"http://127.0.0.1:{proxy.admin}/reload")
            assert reply.status_code == 200, reply.text
        assert _ask(proxy) == []


# What only a process that serves loads: the engine, the listeners, the event loop and the HTTP parser.
SERVING = (
    "meshlib._sidecar.process",
    "meshlib._sidecar.server",
    "meshlib._mesh",
    "meshlib._engine.outbound",
    "uvloop",
    "httptools",
)


def test_the_workers_supervisor_never_loads_the_serving_side(tmp_path: Path) -> None:
    """``meshlib proxy --workers 2``: the parent only starts, signals and waits for its workers (about 39 MB idle
    against a worker's 51), and they serve as ever."""
    assert all(importlib.util.find_spec(name) is not None for name in SERVING)  # each name is a real module
    with _probed_proxy(tmp_path, ["--workers", "2"], SERVING) as proxy:
        with proxy.client(timeout=10) as client:
            assert client.get("http://reviews/").text == "ok"
        assert _ask(proxy) == []
    assert proxy.proc.returncode == 0


@contextmanager
def _probed_proxy(
    tmp_path: Path, arguments: list[str], asked: Sequence[str], cluster: dict[str, object] | None = None
) -> Iterator[ProxyProcess]:
    """``meshlib proxy ARGUMENTS`` run by PROXY_PROBE in front of an upstream answering ok, ready; stopped after.

    ``cluster``: settings added to the cluster's (_reviews_on)."""
    config = tmp_path / "mesh.yaml"
    outbound, admin = free_port(), free_port()
    with raw_server(answer_ok) as upstream:
        write_config(config, _reviews_on(upstream.url, **(cluster or {})), outbound, admin)
        proxy = ProxyProcess(
            subprocess.Popen(
                [sys.executable, "-c", PROXY_PROBE, json.dumps(["--config", str(config), *arguments]), *asked],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                # Proxy variables of the environment must not reroute the proxy's own upstream traffic.
                env={k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")},
            ),
            config,
            outbound,
            admin,
        )
        try:
            proxy.wait_ready()
            yield proxy
        finally:
            proxy.stop()
            for pipe in (proxy.proc.stdin, proxy.proc.stdout):
                if pipe is not None:
                    pipe.close()


def _ask(proxy: ProxyProcess) -> list[str]:
    assert proxy.proc.stdin is not None
    assert proxy.proc.stdout is not None
    proxy.proc.stdin.write("\n")
    proxy.proc.stdin.flush()
    loaded: list[str] = json.loads(proxy.proc.stdout.readline())
    return loaded


def test_the_package_loads_its_names_on_first_use() -> None:
    """``import meshlib`` loads no httpx (the command decides first what it leaves out); every public name is
    there on first use, and an app's httpx loads what it always does (its command line's click among it)."""
    probe = """
import json, sys
import meshlib
before = "httpx" in sys.modules
names = {name: getattr(meshlib, name).__module__ for name in meshlib.__all__ if name != "__version__"}
print(json.dumps([before, sorted(set(names.values())), "click" in sys.modules]))
"""
    before, modules, click = json.loads(_python(probe))
    assert before is False
    assert all(module.startswith("meshlib.") for module in modules)
    assert click is True  # installed with uvicorn, and loaded by httpx's own import
    assert _python("import sys, httpx; print('click' in sys.modules)").strip() == "True"


def test_a_name_the_package_does_not_have_is_an_attribute_error() -> None:
    import meshlib

    with pytest.raises(AttributeError, match="no attribute 'Meshh'"):
        _ = meshlib.Meshh
    assert "Mesh" in dir(meshlib)
