"""Developer sessions: `nox -s tests compiled lint typecheck doctest docs coverage bench` (each runs alone)."""

from __future__ import annotations

import shutil

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The README's test command: the whole unit and integration suite."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def compiled(session: nox.Session) -> None:
    """The test suite against the request path compiled with mypyc (hatch_build.py), as a wheel install runs it."""
    session.install("-e", ".[test,compile]")
    session.run("python", "hatch_build.py", "--inplace")
    try:
        session.run("pytest", *session.posargs)
    finally:
        session.run("python", "hatch_build.py", "--clean")


@nox.session(python=PYTHON)
def doctest(session: nox.Session) -> None:
    """Every code sample of README.md, docs/ and examples/, run as written, and the config reference checked
    against the models (part of `tests` too)."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/test_docs.py", "tests/test_docs_site.py", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site: docs/reference/config.md checked against the models, docs/xds.md's feature table
    against the translation, then `mkdocs build --strict`
    into site/ (`mkdocs serve` for a live preview)."""
    session.install("-e", ".[docs,xds]")
    session.run("python", "docs/gen_config_reference.py", "--check")
    session.run("python", "docs/gen_xds_features.py", "--check")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package and the tests."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def coverage(session: nox.Session) -> None:
    """The test suite under coverage, with a report of the lines it misses."""
    session.install("-e", ".[test]", "coverage[toml]")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "report", "--skip-covered", "--show-missing")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks: print tables of ratios against baselines measured in the same run."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/bench_core.py", *session.posargs)
    session.run("python", "benchmarks/bench_resilience.py", *session.posargs)
    session.run("python", "benchmarks/bench_hedge_overload.py", *session.posargs)
    session.run("python", "benchmarks/bench_upstream_client.py", *session.posargs)
    session.run("python", "benchmarks/bench_inner_transport.py", *session.posargs)
    session.run("python", "benchmarks/bench_inbound.py", "--check", *session.posargs)
    session.run("python", "benchmarks/bench_metrics_choice.py", *session.posargs)
    session.run("python", "benchmarks/bench_zipkin_encoder.py", *session.posargs)
    # One minute of churn here (about 2.5 minutes in all); `nox -s discovery_soak` is the ten minutes.
    if shutil.which("etcd") is None:
        session.warn("bench_discovery needs etcd: apt-get install -y etcd-server")
    else:
        session.run("python", "benchmarks/bench_discovery.py", "--duration", "60", *session.posargs)
    if shutil.which("wrk") is None:
        session.skip("bench_sidecar needs wrk: apt-get install -y wrk")
    session.run("python", "benchmarks/bench_sidecar.py", *session.posargs)
    session.run("python", "benchmarks/bench_mtls_chain.py", *session.posargs)
    session.run("python", "benchmarks/bench_observability.py", *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """Memory soak of meshlib proxy with timeouts, retries, a breaker and a rate limit: RSS per round under wrk."""
    session.install("-e", ".[bench]")
    if shutil.which("wrk") is None:
        session.skip("soak_sidecar needs wrk: apt-get install -y wrk")
    session.run("python", "benchmarks/soak_sidecar.py", "--check", *session.posargs)


@nox.session(python=PYTHON)
def discovery_soak(session: nox.Session) -> None:
    """20 watcher processes, 2,000 endpoints in etcd churning at 50 changes/s for ten minutes: p99 time to every
    watcher's routing table under 1 s and no RSS growth after the first minute, or the session fails."""
    session.install("-e", ".[bench]")
    if shutil.which("etcd") is None:
        session.skip("bench_discovery needs etcd: apt-get install -y etcd-server")
    session.run("python", "benchmarks/bench_discovery.py", "--duration", "600", "--check", *session.posargs)
