"""Fixtures of the TLS tests: a CA and workload certificates made once per session, and TLS upstreams."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.tls.pki import Pki, Workload
from tests.tls.tls_server import Handler, TlsServer, echo, server_context, tls_server

# frontend → reviews → ratings: the three services of the chain; details is a fourth, for wrong identities.
SERVICES = ("frontend", "reviews", "ratings", "details")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The trust domain example.org's CA, with a workload certificate for each of :data:`SERVICES`."""
    pki = Pki(tmp_path_factory.mktemp("pki"))
    for service in SERVICES:
        pki.issue(service)
    return pki


@pytest.fixture(scope="session")
def workloads(pki: Pki) -> dict[str, Workload]:
    root = pki.root
    return {s: Workload(s, root / s / f"{s}.pem", root / s / f"{s}-key.pem", pki.ca_file) for s in SERVICES}


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA of the same trust domain: its certificates carry the right SPIFFE IDs but chain elsewhere."""
    pki = Pki(tmp_path_factory.mktemp("other-pki"))
    pki.issue("reviews")
    pki.issue("frontend")
    return pki


ServeTls = Callable[..., AbstractContextManager[TlsServer]]


@pytest.fixture
def serve_tls(pki: Pki) -> ServeTls:
    """``serve_tls(workload, handler=echo, ca=pki.ca_file, require_client_cert=True)``: a TLS upstream (a context)."""

    def serve(
        workload: Workload,
        handler: Handler = echo,
        *,
        ca: Path | None = None,
        require_client_cert: bool = True,
    ) -> AbstractContextManager[TlsServer]:
        context = server_context(
            workload.cert, workload.key, ca or pki.ca_file, require_client_cert=require_client_cert
        )
        return tls_server(context, handler)

    return serve


@pytest.fixture
def reviews_server(serve_tls: ServeTls, workloads: dict[str, Workload]) -> Iterator[TlsServer]:
    """The reviews service over mTLS, accepting clients of the example.org CA."""
    with serve_tls(workloads["reviews"]) as server:
        yield server
