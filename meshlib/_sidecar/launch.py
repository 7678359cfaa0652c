"""``meshlib proxy``'s entry: its options, the config's first load, logging, and the ``--workers`` supervisor.

Apart from :mod:`meshlib._sidecar.process` (the serving process: the mesh, its listeners, reload and drain) so
that the supervisor of ``--workers N``, which only starts the workers, relays signals and waits, never imports
what only they use (the engine, the policies, the listeners, the event loop): it idles at about 35 MB rather
than a worker's 50. A single proxy process (no ``--workers``) imports both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from meshlib._config import records
from meshlib._config.models import MeshConfig
from meshlib._config.sidecar import LISTENERS, ListenerName, SidecarConfig, parse_address, with_listen_addresses
from meshlib._control.reload import load_settled
from meshlib._errors import ConfigError

__all__ = [
    "EXIT_CONFIG",
    "EXIT_DISCOVERY",
    "EXIT_LISTEN",
    "LISTEN_ENV",
    "ProxyOptions",
    "configure_logging",
    "listen_addresses",
    "load_for_proxy",
    "parse_args_to_options",
    "run_proxy",
    "say",
]

# Environment variables that set a listener's address (a flag wins over its variable, which wins over the file).
LISTEN_ENV: Final[Mapping[ListenerName, str]] = {name: f"MESHLIB_SIDECAR_{name.upper()}_LISTEN" for name in LISTENERS}

EXIT_CONFIG = 2  # as `meshlib validate`
EXIT_LISTEN = 3  # a port is taken or cannot be bound
EXIT_DISCOVERY = 4  # etcd unreachable at start, and no snapshot to start from


@dataclass
class ProxyOptions:
    """What ``meshlib proxy`` was asked to do (the CLI's flags)."""

    config: Path
    outbound: str | None = None
    inbound: str | None = None
    admin: str | None = None
    workers: int = 1
    watch_interval: float = 1.0  # seconds between checks of the config file; 0 turns watching off
    log_level: str = "info"  # of the ``meshlib`` loggers, on stderr (the lines from say are always printed)
    worker_index: int | None = None  # set in a worker started by the supervisor
    ready_fd: int | None = None  # the workers' "listening" pipe: worker 0 reads it, the others write (see _supervise)
    argv: tuple[str, ...] = ()  # the command's arguments, to start again with pydantic (see _needs_pydantic)


def say(message: str) -> None:
    """One line on stderr, flushed, whatever the log level (readiness lines are what scripts and tests wait for).

    A stderr nobody reads any more (a log shipper that died: a broken pipe) loses the line, never the proxy's
    work: the drain that follows SIGTERM says "draining" here first.
    """
    with contextlib.suppress(OSError, ValueError):  # ValueError: stderr closed in this process
        print(f"meshlib proxy: {message}", file=sys.stderr, flush=True)


class _LogFormatter(logging.Formatter):
    """``meshlib proxy: MESSAGE`` as say prints, with the level in front of anything but INFO."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        level = "" if record.levelno == logging.INFO else f"{record.levelname}: "
        return f"meshlib proxy: {level}{text}"


_log_handler: logging.Handler | None = None


def configure_logging(level: str) -> None:
    """Send the ``meshlib`` loggers' records at ``level`` and above to stderr, one line each."""
    global _log_handler
    root = logging.getLogger("meshlib")
    if _log_handler is not None:
        root.removeHandler(_log_handler)
    _log_handler = logging.StreamHandler(sys.stderr)
    _log_handler.setFormatter(_LogFormatter())
    root.addHandler(_log_handler)
    root.setLevel(level.upper())


def load_for_proxy(
    path: Path, given: Mapping[ListenerName, tuple[str, str]]
) -> tuple[MeshConfig, str | None, SidecarConfig] | None:
    """The config file's config, its digest, and its sidecar section with the listen addresses ``given`` elsewhere
    (see :func:`listen_addresses`); None after printing why they cannot be had (an unreadable file included)."""
    try:
        config, digest = load_settled(path, settle=0)
    except ConfigError as exc:
        print(exc, file=sys.stderr, flush=True)
        return None
    try:
        sidecar = with_listen_addresses(config.sidecar, given)
    except ConfigError as exc:
        for where, why in exc.errors:
            say(f"{where}: {why}")
        return None
    return config, digest, sidecar


def _load(
    options: ProxyOptions, given: Mapping[ListenerName, tuple[str, str]]
) -> tuple[MeshConfig, str | None, SidecarConfig] | None:
    """:func:`load_for_proxy`, in a child process where the config models are records (no pydantic here).

    The child validates while this process imports the serving side (which it needs next, unless it only
    supervises workers): the two overlap on a machine with two cores.
    """
    if not records.ACTIVE:
        return load_for_proxy(options.config, given)
    from meshlib._config import offload

    child = offload.start(load_for_proxy, options.config, given)
    if options.workers == 1 or options.worker_index is not None:
        import meshlib._sidecar.process  # noqa: F401  # meanwhile
    loaded: tuple[MeshConfig, str | None, SidecarConfig] | None = offload.finish(child)
    return loaded


def _needs_pydantic(config: MeshConfig) -> str | None:
    """What of ``config`` a serving process without pydantic cannot run: it builds config models as it goes."""
    if config.xds is not None:
        return "xds"  # xDS resources become config models, validated as they arrive
    if config.config_source is not None:
        return "config_source"  # so does the config document in etcd
    return None


def _restart_with_pydantic(options: ProxyOptions) -> None:
    """Replace this process (same pid) with ``meshlib proxy`` serving with pydantic's config models."""
    sys.stdout.flush()
    sys.stderr.flush()
    environ = {**os.environ, records.PYDANTIC_ENV: "1"}
    os.execve(sys.executable, [sys.executable, "-m", "meshlib", *options.argv], environ)


def listen_addresses(options: ProxyOptions, environ: Mapping[str, str]) -> dict[ListenerName, tuple[str, str]]:
    """The listen addresses set outside the config file: listener -> (where from, address); a flag wins."""
    flags: dict[ListenerName, str | None] = {
        "outbound": options.outbound,
        "inbound": options.inbound,
        "admin": options.admin,
    }
    given: dict[ListenerName, tuple[str, str]] = {}
    for name in LISTENERS:
        flag, variable = flags[name], LISTEN_ENV[name]
        if flag is not None:
            given[name] = (f"--{name}", flag)
        elif environ.get(variable):
            given[name] = (variable, environ[variable])
    return given


def run_proxy(options: ProxyOptions, environ: Mapping[str, str] | None = None) -> int:
    """Run ``meshlib proxy`` until drained; the process's exit code.

    Listen addresses from flags and from ``environ`` (default ``os.environ``)
    are validated as the config file's are; a bad one exits 2 naming where it came from.
    """
    loaded = _load(options, listen_addresses(options, os.environ if environ is None else environ))
    if loaded is None:
        return EXIT_CONFIG
    config, digest, sidecar = loaded
    if records.ACTIVE and _needs_pydantic(config) is not None:
        _restart_with_pydantic(options)
    configure_logging(options.log_level)
    if options.workers > 1 and options.worker_index is None:
        return _supervise(options, sidecar)
    from meshlib._sidecar.process import serve  # here: the supervisor above never loads the serving side

    return serve(options, config, sidecar, digest)


def _supervise(options: ProxyOptions, sidecar: SidecarConfig) -> int:
    """Start ``options.workers`` worker processes, relay signals to them, and wait for them all."""
    if parse_address(sidecar.outbound.listen).port == 0:
        say("--workers needs a fixed outbound port (workers share it with SO_REUSEPORT), not port 0")
        return EXIT_CONFIG
    args = [sys.executable, "-m", "meshlib", "proxy", "--config", str(options.config)]
    for flag, value in (("--outbound", options.outbound), ("--inbound", options.inbound), ("--admin", options.admin)):
        if value is not None:
            args += [flag, value]
    args += ["--watch-interval", str(options.watch_interval), "--workers", str(options.workers)]
    args += ["--log-level", options.log_level]
    # Worker 0 (the admin) holds the read end; every other worker writes "INDEX PORT" once it listens.
    read_end, write_end = os.pipe()
    try:
        workers = [
            subprocess.Popen(
                [*args, "--worker-index", str(i), "--ready-fd", str(read_end if i == 0 else write_end)],
                stdin=subprocess.DEVNULL,
                pass_fds=(read_end if i == 0 else write_end,),
            )
            for i in range(options.workers)
        ]
    finally:
        os.close(read_end)
        os.close(write_end)

    def relay(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, relay)
    # A worker that fails (a port taken) takes the others down: a half-started proxy helps nobody.
    failed = 0
    while any(worker.poll() is None for worker in workers):
        for worker in workers:
            code = worker.poll()
            if code is not None and code != 0 and not failed:
                failed = code
                relay(signal.SIGTERM, None)
        time.sleep(0.05)
    codes = [worker.wait() for worker in workers]
    return failed or next((c for c in codes if c != 0), 0)


def parse_args_to_options(args: Any, argv: Sequence[str] = ()) -> ProxyOptions:
    """ProxyOptions from the CLI's parsed arguments (``argv``: the command line they were parsed from)."""
    return ProxyOptions(
        config=Path(args.config),
        outbound=args.outbound,
        inbound=args.inbound,
        admin=args.admin,
        workers=args.workers,
        watch_interval=args.watch_interval,
        log_level=args.log_level,
        worker_index=args.worker_index,
        ready_fd=args.ready_fd,
        argv=tuple(argv),
    )
