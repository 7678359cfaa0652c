"""Heavy libraries load only for a mesh that uses them: the sidecar's idle memory and start-up stay small."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
import meshlib
from meshlib._sidecar import process  # the sidecar's whole import graph
mesh = meshlib.Mesh.from_dict(json.loads(sys.argv[1]))
with mesh.client() as client:
    pass
heavy = ("jwt", "cryptography", "limits", "pybreaker", "redis", "opentelemetry", "requests")
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


def _loaded(config: dict[str, object]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(config)], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(done.stdout)
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
