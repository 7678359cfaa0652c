"""The ``meshlib`` command: ``demo``, ``proxy``, ``validate``, ``schema``, ``ca init|issue``, ``config push``."""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

# The commands never run httpx's own command line, whose import loads click (and rich and pygments where they are
# installed): 1.2 MB of an idle sidecar, 4.7 MB with rich (docs/performance.md). Refused before httpx loads (which
# is why the package's names load lazily), it leaves httpx the stub ``main`` it has for an install without its CLI.
# A process that loaded httpx first (the tests, an app that imports this module) keeps httpx as it is.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None: "do not import", as Python defines

from meshlib.__version__ import __version__
from meshlib._errors import ConfigError

if TYPE_CHECKING:  # the config models load in the commands that use them: see main()
    from meshlib._config.models import MeshConfig

__all__ = ["main", "run"]

EXIT_INVALID = 2
EXIT_UNREACHABLE = 4  # as the sidecar's exit when etcd is unreachable at start


def build_kind() -> str:
    """How this install runs its request path: compiled with mypyc (a wheel built where a C compiler works)."""
    spec = importlib.util.find_spec("meshlib._sidecar.server")
    origin = spec.origin if spec is not None else None
    compiled = origin is not None and origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    return "compiled with mypyc" if compiled else "pure Python"


def _validate(args: argparse.Namespace) -> int:
    from meshlib._config.load import load_file

    failed = False
    several = len(args.config) > 1
    for path in args.config:
        try:
            config = load_file(path)
            # The files a config names (certificates, keys) are read as the mesh would read them: "would this load?"
            file_warnings = _check_files(config, path)
        except ConfigError as exc:
            failed = True
            print(exc, file=sys.stderr)
        else:
            # Warnings never fail validation: the config loads, but these settings can never take effect.
            for field, message in [*config.warnings(), *file_warnings]:
                print(f"{path}: " * several + f"warning: {field}: {message}", file=sys.stderr)
            print(f"{path}: ok" if several else "ok")
    return EXIT_INVALID if failed else 0


def _check_files(config: MeshConfig, path: str) -> list[tuple[str, str]]:
    """Warnings about the files ``config`` names (TLS, the access log); ConfigError when one cannot be used."""
    if config.access_log is not None:
        from meshlib._observe.access_log import path_problem

        problem = path_problem(config.access_log.path)
        if problem is not None:
            raise ConfigError([("access_log.path", problem)], source=path)
    if not any(c.tls is not None for c in config.clusters.values()) and (
        config.inbound is None or config.inbound.mtls is None
    ):
        return []
    from meshlib._tls.cluster import tls_file_problems

    errors, warnings = tls_file_problems(config)
    if errors:
        raise ConfigError(errors, source=path)
    return warnings


def _config_push(args: argparse.Namespace) -> int:
    """Validate a config document locally, then write it to an etcd key (nothing is written when it is invalid)."""
    from meshlib._config.load import config_from_dict
    from meshlib._discovery.config_source import parse_document

    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        config_from_dict(parse_document(data, args.key), source=str(path))
    except ConfigError as exc:
        print(exc if exc.source == str(path) else ConfigError(exc.errors, source=str(path)), file=sys.stderr)
        return EXIT_INVALID
    from meshlib._discovery.etcd_client import EtcdClient, EtcdError

    endpoints = [url.strip() for given in args.etcd for url in given.split(",") if url.strip()]
    client = EtcdClient(
        endpoints,
        timeout=args.timeout,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        username=args.username,
        password=args.password,
    )
    try:
        revision = client.put(args.key, data)
    except EtcdError as exc:
        print(f"not pushed: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        client.close()
    print(f"pushed {path} to {args.key} (revision {revision})")
    return 0


def _ca(args: argparse.Namespace) -> int:
    from meshlib._config.durations import MAX_DURATION, parse_duration
    from meshlib._tls import ca

    try:
        ttl = parse_duration(args.ttl)
        if not 0 < ttl <= MAX_DURATION:
            raise ValueError(f"invalid ttl {args.ttl!r}: above 0 and at most 8760h")
        if args.ca_command == "init":
            issued = ca.init_ca(Path(args.out), args.trust_domain, ttl=ttl, force=args.force)
            print(f"CA for trust domain {issued.spiffe_id.removeprefix('spiffe://')}: {issued.cert}, key {issued.key}")
        else:
            issued = ca.issue(Path(args.ca), Path(args.out), args.service, namespace=args.namespace, ttl=ttl)
            if issued.clamped:
                print("meshlib ca: the certificate ends with its CA, before the ttl asked for", file=sys.stderr)
            print(f"{issued.spiffe_id}: {issued.cert}, key {issued.key}")
    except (ca.CaError, ValueError) as exc:
        print(f"meshlib ca {args.ca_command}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"meshlib ca {args.ca_command}: cannot write {exc.filename!r}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"serial {issued.serial:x}, valid until {issued.not_after.isoformat()}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from meshlib._config.models import MeshConfig

    print(json.dumps(MeshConfig.model_json_schema(), indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from meshlib._demo import run_demo, serve_upstreams

    if args.serve:
        return serve_upstreams()
    return run_demo(requests=args.requests, concurrency=args.concurrency, print_config=args.print_config)


def _proxy(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from meshlib._sidecar.launch import parse_args_to_options, run_proxy

    if args.workers < 1:
        print("meshlib proxy: --workers must be at least 1", file=sys.stderr)
        return EXIT_INVALID
    return run_proxy(parse_args_to_options(args, argv))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshlib", description="A service mesh you pip install.")
    parser.add_argument("--version", action="version", version=f"meshlib {__version__} ({build_kind()})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run local upstreams and send traffic through a built-in mesh config")
    demo.add_argument("--requests", type=int, default=3000, help="how many requests to send (default 3000)")
    demo.add_argument("--concurrency", type=int, default=8, help="concurrent async requests (default 8)")
    demo_mode = demo.add_mutually_exclusive_group()
    demo_mode.add_argument("--print-config", action="store_true", help="print the demo's mesh config as YAML and exit")
    demo_mode.add_argument(
        "--serve",
        action="store_true",
        help="serve the demo's upstreams on 127.0.0.1:9081-9083 and :9090 until Ctrl-C (for the docs' samples)",
    )
    demo.set_defaults(func=_demo)

    proxy = commands.add_parser(
        "proxy",
        help="run the sidecar: an HTTP proxy on loopback applying the mesh (outbound, inbound, admin listeners)",
    )
    proxy.add_argument("--config", required=True, help="the mesh config (YAML or JSON); reloaded when it changes")
    proxy.add_argument(
        "--outbound",
        metavar="HOST:PORT",
        help="outbound listener (default: $MESHLIB_SIDECAR_OUTBOUND_LISTEN, else sidecar.outbound.listen)",
    )
    proxy.add_argument(
        "--inbound",
        metavar="HOST:PORT",
        help="inbound listener (default: $MESHLIB_SIDECAR_INBOUND_LISTEN, else sidecar.inbound.listen)",
    )
    proxy.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="admin listener, loopback only (default: $MESHLIB_SIDECAR_ADMIN_LISTEN, else sidecar.admin.listen)",
    )
    proxy.add_argument(
        "--workers", type=int, default=1, help="processes sharing the ports with SO_REUSEPORT (default 1)"
    )
    proxy.add_argument(
        "--watch-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often to check the config file for changes (default 1; 0 turns watching off)",
    )
    proxy.add_argument(
        "--log-level",
        type=str.lower,
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="what the meshlib loggers print on stderr (default info); readiness lines are always printed",
    )
    proxy.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    proxy.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    proxy.set_defaults(func=_proxy)

    validate = commands.add_parser("validate", help="check config files: prints ok, or the errors and exits 2")
    validate.add_argument("config", nargs="+", help="a YAML or JSON mesh config")
    validate.set_defaults(func=_validate)

    schema = commands.add_parser("schema", help="print the config's JSON Schema")
    schema.set_defaults(func=_schema)

    ca = commands.add_parser("ca", help="a local certificate authority: SPIFFE workload certificates for mTLS")
    ca_commands = ca.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    init = ca_commands.add_parser("init", help="create a CA (ca.pem, ca-key.pem) for a trust domain")
    init.add_argument("--trust-domain", required=True, help="the SPIFFE trust domain, e.g. example.org")
    init.add_argument("--out", required=True, metavar="DIR", help="where to write ca.pem and ca-key.pem")
    init.add_argument("--ttl", default="8760h", help="how long the CA is valid (default 8760h)")
    init.add_argument("--force", action="store_true", help="replace an existing CA in DIR")
    init.set_defaults(func=_ca)
    issue = ca_commands.add_parser(
        "issue", help="issue SERVICE.pem and SERVICE-key.pem: spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE"
    )
    issue.add_argument("--service", required=True, help="the workload's service account name, e.g. reviews")
    issue.add_argument("--namespace", default="default", help="its namespace (default: default)")
    issue.add_argument("--ttl", default="24h", help="how long the certificate is valid (default 24h)")
    issue.add_argument("--ca", required=True, metavar="DIR", help="the CA directory (from meshlib ca init)")
    issue.add_argument("--out", required=True, metavar="DIR", help="where to write the files (replaced atomically)")
    issue.set_defaults(func=_ca)

    config = commands.add_parser("config", help="the mesh config in etcd (config_source.etcd)")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    push = config_commands.add_parser(
        "push", help="validate a config document, then write it to an etcd key that meshes watch"
    )
    push.add_argument("file", help="the config document (YAML or JSON), without registry and config_source")
    push.add_argument(
        "--etcd", required=True, action="append", metavar="URL", help="an etcd member (repeat, or comma-separate)"
    )
    push.add_argument("--key", required=True, help="the key, as in config_source.etcd.key")
    push.add_argument("--timeout", type=float, default=5.0, help="seconds per etcd member (default 5)")
    push.add_argument("--ca-file", help="the CA of etcd's serving certificate (https:// members)")
    push.add_argument("--cert-file", help="a client certificate, when etcd asks for one")
    push.add_argument("--key-file", help="the client certificate's key")
    push.add_argument("--username", help="etcd user (with --password, or MESHLIB_ETCD_PASSWORD)")
    push.add_argument("--password", default=os.environ.get("MESHLIB_ETCD_PASSWORD"), help=argparse.SUPPRESS)
    push.set_defaults(func=_config_push)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``meshlib`` command; returns the exit code."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(arguments)
    if args.func is _proxy:
        # The serving process defines its config models as records (it never loads pydantic: 13 MB of an idle
        # sidecar), and has its configs validated by a child process: see meshlib/_config/records.py.
        from meshlib._config import records

        if os.environ.get(records.PYDANTIC_ENV) != "1":
            records.activate()
        proxied: int = _proxy(args, arguments)
        return proxied
    result: int = args.func(args)
    return result


def run() -> None:
    """Console-script entry: exit with :func:`main`'s code."""
    sys.exit(main())
