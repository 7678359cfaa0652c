"""Upstream client benchmark: the sidecar's ``AsyncHTTP1Transport`` against ``httpx.AsyncHTTPTransport``.

Run ``python benchmarks/bench_upstream_client.py`` (``--quick`` for a smoke
run, ``--upstream uvicorn`` to answer with uvicorn instead of the built-in
server, ``--profile`` to print a cProfile of AsyncHTTP1Transport). Not collected
by pytest.

Each transport is driven directly, as the mesh's engine drives its inner
sender: ``CONCURRENCY`` tasks each send a prebuilt ``GET`` one after the
other, read the body and close the response. The upstream runs in another
process, so the client's CPU time per request (``time.process_time``) is the
number to compare; requests/s also depends on the upstream sharing the
machine's cores. Both transports run in alternating batches (ABBA) on the
default asyncio loop and on uvloop; each row reports the median batch.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx

from meshlib._transport import AsyncHTTP1Transport

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop does not build on Windows
    uvloop = None  # type: ignore[assignment]

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
CONCURRENCY = 16
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


# -- the upstream: a tiny keep-alive server, run in a subprocess -------------------------------------------------


class _Server(asyncio.Protocol):
    """Answers each request (found by httptools) with the same ``200 ok``."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        if self.transport is not None:
            self.transport.write(_RESPONSE)


def serve(port: int) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Server, "127.0.0.1", port, backlog=1024)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        async with server:
            await stop.wait()

    if uvloop is not None:
        uvloop.run(main())
    else:
        asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def upstream(kind: str, start_timeout: float = 15.0) -> Iterator[str]:
    """Run the upstream in a subprocess; yields its URL; always stops it."""
    port = _free_port()
    if kind == "uvicorn":
        cmd = [sys.executable, "-m", "uvicorn", "upstream_app:app", "--app-dir", str(HERE), "--port", str(port)]
        cmd += ["--log-level", "warning", "--no-access-log", "--http", "httptools", "--loop", "uvloop"]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(port)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {kind} upstream did not start")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()


# -- the client side ------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One batch: requests done, wall seconds and client CPU seconds."""

    requests: int
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.wall

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.requests * 1e6


def make_request(url: str) -> httpx.Request:
    """A GET built by a client, as the mesh's requests are (its default headers and timeout extension)."""
    with httpx.Client(timeout=5.0) as client:
        return client.build_request("GET", url + "/bench")


async def run_batch(transport: httpx.AsyncBaseTransport, request: httpx.Request, seconds: float) -> Batch:
    """``CONCURRENCY`` tasks send ``request`` one after the other for ``seconds``; count them."""
    deadline = time.monotonic() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            for _ in range(20):
                response = await transport.handle_async_request(request)
                async for _chunk in response.stream:  # type: ignore[union-attr]
                    pass
                await response.aclose()
            done += 20

    cpu = time.process_time()
    wall = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return Batch(done, time.perf_counter() - wall, time.process_time() - cpu)


async def compare(url: str, pairs: int, seconds: float) -> dict[str, list[Batch]]:
    """ABBA batches of both transports (each warmed up once); one transport object per side for the whole run."""
    sides: dict[str, httpx.AsyncBaseTransport] = {
        "httpx.AsyncHTTPTransport": httpx.AsyncHTTPTransport(),
        "AsyncHTTP1Transport": AsyncHTTP1Transport(),
    }
    names = list(sides)
    request = make_request(url)
    for transport in sides.values():
        await run_batch(transport, request, min(0.3, seconds))
    batches: dict[str, list[Batch]] = {name: [] for name in names}
    for i in range(pairs):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            batches[name].append(await run_batch(sides[name], request, seconds))
    for transport in sides.values():
        await transport.aclose()
    return batches


def run_loop(kind: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` on a new loop of ``kind`` ("asyncio" or "uvloop")."""
    if kind == "uvloop":
        assert uvloop is not None
        return uvloop.run(main())
    return asyncio.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--upstream", choices=["builtin", "uvicorn"], default="builtin")
    parser.add_argument("--profile", action="store_true", help="also profile AsyncHTTP1Transport on asyncio")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    pairs, seconds = (2, 0.5) if args.quick else (4, 1.5)
    loops = ["asyncio"] + (["uvloop"] if uvloop is not None else [])
    print(
        f"python {sys.version.split()[0]}, httpx {httpx.__version__}, {os.cpu_count()} CPUs, upstream: {args.upstream}"
    )
    print(f"{CONCURRENCY} concurrent tasks, sequential requests each; median of {pairs} batches of {seconds} s\n")
    rows: list[tuple[str, Batch, Batch]] = []
    with upstream(args.upstream) as url:
        for loop_kind in loops:
            result = run_loop(loop_kind, lambda: compare(url, pairs, seconds))
            rows.append(
                (loop_kind, _median(result["httpx.AsyncHTTPTransport"]), _median(result["AsyncHTTP1Transport"]))
            )
        if args.profile:
            profiler = cProfile.Profile()

            async def profiled() -> None:
                transport = AsyncHTTP1Transport()
                profiler.enable()
                await run_batch(transport, make_request(url), seconds)
                profiler.disable()
                await transport.aclose()

            asyncio.run(profiled())
    header = ("loop", "httpx req/s", "pooled req/s", "ratio", "httpx CPU µs/req", "pooled CPU µs/req", "CPU ratio")
    table = [header]
    for loop_kind, bare_batch, fast_batch in rows:
        table.append(
            (
                loop_kind,
                f"{bare_batch.rate:,.0f}",
                f"{fast_batch.rate:,.0f}",
                f"{fast_batch.rate / bare_batch.rate:.1f}×",
                f"{bare_batch.cpu_us:.0f}",
                f"{fast_batch.cpu_us:.0f}",
                f"{bare_batch.cpu_us / fast_batch.cpu_us:.1f}× less",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for j, row in enumerate(table):
        print("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    if args.profile:
        print()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return 0


def _median(batches: list[Batch]) -> Batch:
    """The batch with the median rate."""
    ordered = sorted(batches, key=lambda b: b.rate)
    return ordered[len(ordered) // 2] if len(ordered) % 2 else ordered[len(ordered) // 2 - 1]


if __name__ == "__main__":
    sys.exit(main())
