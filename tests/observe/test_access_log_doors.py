"""``access_log:`` at every door: the sidecar's outbound and inbound listeners (a real ``meshlib proxy``), and the
ASGI and WSGI middleware; each request is one line, with the door, direction and what the door knows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import flask
import httpx
import pytest

import meshlib
from meshlib.asgi import MeshMiddleware as AsgiMiddleware
from meshlib.wsgi import MeshMiddleware as WsgiMiddleware
from tests.conftest import MakeMesh, echo_app
from tests.sidecar import proxy_process
from tests.sidecar.proxy_process import free_port

pytestmark = pytest.mark.anyio

DENY_ADMIN = {"name": "no-admin", "action": "deny", "rules": [{"to": [{"paths": ["/admin*"]}]}]}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def sidecar_config(upstreams: dict[str, str], inbound: int, log: str) -> dict[str, Any]:
    return {
        "service": "reviews",
        "clusters": {
            "ratings": {"endpoints": [upstreams["ratings"]]},
            "gone": {"endpoints": [f"http://127.0.0.1:{free_port()}"]},  # nothing listens: connections refused
        },
        "inbound": {"authorization": [DENY_ADMIN]},
        "sidecar": {"inbound": {"listen": f"127.0.0.1:{inbound}", "app": upstreams["reviews-v2"]}},
        "access_log": {"path": log},
    }


def test_the_sidecar_logs_outbound_and_inbound_requests(tmp_path: Path, upstreams: dict[str, str]) -> None:
    log = tmp_path / "access.log"
    inbound = free_port()
    proxy = proxy_process.start_ready(tmp_path, sidecar_config(upstreams, inbound, str(log)))
    try:
        with proxy.client(timeout=5) as client:
            ok = client.get("http://ratings/stars", headers={"x-request-id": "r-1", "user-agent": "curl/8"})
            refused = client.get("http://gone/x")
        with httpx.Client(trust_env=False, timeout=5) as client:
            answered = client.get(f"http://127.0.0.1:{inbound}/reviews/1", headers={"x-forwarded-for": "10.1.2.3"})
            denied = client.get(f"http://127.0.0.1:{inbound}/admin/users")
    finally:
        assert proxy.stop() == 0  # SIGTERM: a drain, then the mesh closes and the log is flushed
    assert (ok.status_code, refused.status_code, answered.status_code, denied.status_code) == (200, 503, 200, 403)
    by_path = {line["path"]: line for line in lines(log)}
    assert set(by_path) == {"/stars", "/x", "/reviews/1", "/admin/users"}
    out = by_path["/stars"]
    assert {
        k: out[k] for k in ("direction", "door", "protocol", "method", "authority", "status", "response_flags")
    } == {
        "direction": "outbound",
        "door": "sidecar",
        "protocol": "HTTP/1.1",
        "method": "GET",
        "authority": "ratings",
        "status": 200,
        "response_flags": "-",
    }
    assert out["upstream_cluster"] == "ratings"
    assert out["upstream_host"] == upstreams["ratings"].removeprefix("http://")
    assert (out["request_id"], out["user_agent"], out["tries"]) == ("r-1", "curl/8", 1)
    assert out["bytes_sent"] == len(ok.content)
    # The answer the sidecar made in place of the error: its status, Envoy's flag, the mesh's code.
    failed = by_path["/x"]
    assert (failed["status"], failed["response_flags"], failed["error"]) == (503, "UF", "upstream_connect_failure")
    into = by_path["/reviews/1"]
    assert (into["direction"], into["door"], into["status"], into["x_forwarded_for"]) == (
        "inbound",
        "sidecar",
        200,
        "10.1.2.3",
    )
    assert into["bytes_sent"] == len(answered.content)
    refusal = by_path["/admin/users"]
    assert (refusal["status"], refusal["response_flags"], refusal["error"], refusal["denied_by"]) == (
        403,
        "RBAC",
        "forbidden",
        "no-admin",
    )


def wait_ready(proc: subprocess.Popen[bytes], admin: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"meshlib proxy exited with {proc.returncode}"
            try:
                if client.get(f"http://127.0.0.1:{admin}/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise AssertionError(f"meshlib proxy not ready within {within}s")


def test_the_sidecar_writes_to_its_standard_output_by_default(tmp_path: Path, upstreams: dict[str, str]) -> None:
    """``path: "-"``: the lines are the proxy's standard output (its own messages go to standard error)."""
    outbound, admin = free_port(), free_port()
    config_path = tmp_path / "mesh.yaml"
    config = {"clusters": {"ratings": {"endpoints": [upstreams["ratings"]]}}, "access_log": {"path": "-"}}
    proxy_process.write_config(config_path, config, outbound, admin)
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshlib", "proxy", "--config", str(config_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_ready(proc, admin)
        with httpx.Client(proxy=f"http://127.0.0.1:{outbound}", trust_env=False, timeout=5) as client:
            for i in range(3):
                assert client.get(f"http://ratings/{i}").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0
    logged = [json.loads(line) for line in out.decode().splitlines()]
    assert [(line["path"], line["status"], line["door"]) for line in logged] == [
        (f"/{i}", 200, "sidecar") for i in range(3)
    ]


async def test_the_asgi_middleware_logs_inbound_requests(tmp_path: Path, make_mesh: MakeMesh) -> None:
    log = tmp_path / "access.log"
    mesh = make_mesh(
        {"service": "reviews", "inbound": {"authorization": [DENY_ADMIN]}, "access_log": {"path": str(log)}}
    )
    app = AsgiMiddleware(echo_app("reviews"), mesh=mesh)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://reviews") as client:
        answered = await client.post("/reviews/1?full=1", content=b"hello", headers={"user-agent": "t/1"})
        denied = await client.get("/admin")
    mesh.close()
    into, refusal = lines(log)
    assert answered.status_code == 200
    assert denied.status_code == 403
    assert {k: into[k] for k in ("direction", "door", "method", "authority", "path", "status", "response_flags")} == {
        "direction": "inbound",
        "door": "asgi",
        "method": "POST",
        "authority": "reviews",
        "path": "/reviews/1?full=1",
        "status": 200,
        "response_flags": "-",
    }
    assert (into["bytes_sent"], into["user_agent"], into["tries"], into["upstream_cluster"]) == (
        len(answered.content),
        "t/1",
        0,
        None,
    )
    assert (refusal["status"], refusal["response_flags"], refusal["denied_by"]) == (403, "RBAC", "no-admin")


def test_the_wsgi_middleware_logs_inbound_requests(tmp_path: Path, make_mesh: MakeMesh) -> None:
    log = tmp_path / "access.log"
    mesh = make_mesh(
        {"service": "reviews", "inbound": {"authorization": [DENY_ADMIN]}, "access_log": {"path": str(log)}}
    )
    flask_app = flask.Flask("reviews")

    @flask_app.get("/reviews/<int:n>")
    def review(n: int) -> dict[str, Any]:
        return {"review": n}

    @flask_app.get("/broken")
    def broken() -> str:
        raise RuntimeError("boom")

    app = WsgiMiddleware(flask_app.wsgi_app, mesh=mesh)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://reviews") as client:
        answered = client.get("/reviews/7", headers={"x-request-id": "w-1"})
        denied = client.get("/admin/x")
        crashed = client.get("/broken")
    mesh.close()
    by_path = {line["path"]: line for line in lines(log)}
    assert (answered.status_code, denied.status_code, crashed.status_code) == (200, 403, 500)
    into = by_path["/reviews/7"]
    assert (into["direction"], into["door"], into["status"], into["request_id"]) == ("inbound", "wsgi", 200, "w-1")
    assert into["bytes_sent"] == len(answered.content)
    assert (by_path["/admin/x"]["status"], by_path["/admin/x"]["response_flags"]) == (403, "RBAC")
    assert by_path["/broken"]["status"] == 500


def test_a_mesh_without_access_log_writes_nothing(make_mesh: MakeMesh, capsys: pytest.CaptureFixture[str]) -> None:
    mesh = make_mesh({"clusters": {"ratings": {"endpoints": ["http://127.0.0.1:9090"]}}})
    assert mesh.snapshot.observers is None
    assert meshlib.Mesh.stats(mesh)["observability"] == {}
    mesh.close()
    assert capsys.readouterr().out == ""
