"""Instructions per sidecar request, counted by valgrind: a measure the host's noise does not move.

Run ``python benchmarks/sidecar_instructions.py`` (needs ``valgrind``: ``apt-get
install valgrind``). It starts ``fast_upstream.py`` and ``meshlib proxy`` on
``bench_sidecar.py``'s config (round robin over two upstream ports, a 1 s
timeout, retries on 5xx and connect failures) with the proxy under valgrind,
sends ``--small`` and then, in a second run, ``--large`` requests over 16
keep-alive connections, and prints the difference in the proxy's instructions
divided by the difference in requests: what one request costs, start-up and
shutdown taken off. User-space instructions only: the kernel's reads, writes
and epoll are not counted, so compare this figure with itself (before and
after a change), not with CPU time. ``PYTHONHASHSEED`` is fixed, so two runs
of the same code agree to about 0.01%.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml
from bench_sidecar import meshlib_config

HERE = Path(__file__).resolve().parent
CONNECTIONS = 16
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
        return port


async def _client(port: int, count: int) -> None:
    """``count`` GETs one after the other on one keep-alive connection; each must answer 200."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"the proxy answered {head[:80]!r}")
            length = _LENGTH.search(head)
            await reader.readexactly(int(length.group(1)) if length else 0)
    finally:
        writer.close()


async def _load(port: int, requests: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:  # valgrind starts the proxy slowly
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the proxy did not start listening") from None
            await asyncio.sleep(0.2)
    each = requests // CONNECTIONS
    await asyncio.wait_for(asyncio.gather(*(_client(port, each) for _ in range(CONNECTIONS))), seconds)


def count(requests: int, python: str, timeout: float) -> int:
    """The proxy's instructions, start to exit, serving ``requests`` requests."""
    with tempfile.TemporaryDirectory() as work:
        upstream = subprocess.Popen(
            [sys.executable, str(HERE / "fast_upstream.py"), "--port", "0", "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert upstream.stdout is not None
            ports = [int(upstream.stdout.readline().rsplit(":", 1)[1]) for _ in range(2)]
            port, admin = _free_port(), _free_port()
            config = Path(work) / "mesh.yaml"
            config.write_text(yaml.safe_dump(meshlib_config(ports, port, admin)))
            out = Path(work) / "cachegrind.out"
            proxy = subprocess.Popen(
                [
                    "valgrind",
                    "--tool=cachegrind",
                    "--cache-sim=no",
                    f"--cachegrind-out-file={out}",
                    python,
                    "-m",
                    "meshlib",
                    "proxy",
                    "--config",
                    str(config),
                ],
                env={**os.environ, "PYTHONHASHSEED": "0"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                asyncio.run(_load(port, requests, timeout))
            finally:
                proxy.send_signal(signal.SIGINT)
                _, err = proxy.communicate(timeout=timeout)
        finally:
            upstream.terminate()
            upstream.wait()
    found = re.search(r"I\s+refs:\s+([\d,]+)", err)
    if found is None:
        raise RuntimeError(f"valgrind printed no instruction count:\n{err[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--small", type=int, default=1_600, help="requests in the first run (default 1,600)")
    parser.add_argument("--large", type=int, default=6_400, help="requests in the second run (default 6,400)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds each run may take (default 300)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("sidecar_instructions: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    if args.large <= args.small or args.small < CONNECTIONS:
        parser.error(f"--large must exceed --small, and --small be at least {CONNECTIONS}")
    # valgrind cannot follow pyenv's shell shims: the interpreter itself.
    python = os.path.realpath(sys.executable)
    small = count(args.small, python, args.timeout)
    large = count(args.large, python, args.timeout)
    served = (args.large // CONNECTIONS - args.small // CONNECTIONS) * CONNECTIONS
    print(f"instructions: {small:,} for {args.small:,} requests, {large:,} for {args.large:,}")
    print(f"sidecar instructions per request: {(large - small) / served:,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
