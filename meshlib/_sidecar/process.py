"""``meshlib proxy``'s serving process: alone, or one of the N ``--workers`` sharing the ports.

:mod:`meshlib._sidecar.launch` loads the config and either calls :func:`serve` here or, with ``--workers N``,
supervises N processes that do.

A proxy process loads the config, binds its listeners (outbound, inbound when
configured, admin), serves them with :class:`HttpServer`, and then:

* **hot reload** - on a change of the config file (polled by the same
  :class:`FileWatcher` as ``Mesh.from_file(watch=True)``), ``SIGHUP`` or
  ``POST /reload``, reloads the file through ``Mesh.reload``: an empty read is
  read again for about a second, then the new snapshot is swapped in (requests
  in flight finish on the old one; live state of clusters that still exist is
  kept), or the config is refused with one log line and a count, and the old
  one keeps serving. Reloads run on their own threads, never on the event loop
  nor in its default executor, so neither a slow reload nor a busy executor
  (name lookups) can hold up the other.
* **graceful drain** - on ``SIGTERM`` (or ``POST /drain``): stop accepting,
  let requests in flight finish up to ``sidecar.limits.drain_timeout``, exit 0.

With ``--workers N`` the parent (launch's supervisor) binds nothing itself: it starts N workers
that each bind the outbound and inbound ports with ``SO_REUSEPORT`` (the
kernel spreads connections across them), relays ``SIGHUP``/``SIGTERM`` to
them, and exits when they have. Worker 0 also serves the admin listener; its
``POST /drain`` goes to the supervisor, which relays it to every worker. Each
other worker also serves the admin endpoints on a private loopback port and,
once it listens, writes its index and that port to a pipe that worker 0 reads:
worker 0's ``GET /ready`` answers 200 only once every worker has, and its
``/stats`` and ``/clusters`` merge every worker's. Worker 0's ``POST /reload``
reloads worker 0 first (so an invalid config is refused there, 400, and
nothing is relayed), then asks every other worker for a ``POST /reload`` on its
private port and answers 200 only once each runs the same config, by content
digest (:func:`workers_answer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import logging
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import httpx

from meshlib._config.models import MeshConfig
from meshlib._config.sidecar import (
    Address,
    SidecarConfig,
    parse_address,
)
from meshlib._control.watch import FileWatcher
from meshlib._errors import ConfigError, DiscoveryError
from meshlib._frontdoors.sidecar_listeners import InboundTls, connect_policy, inbound_handler, outbound_handler
from meshlib._mesh import Mesh
from meshlib._sidecar.admin import ReloadAnswer, admin_handler, reload_answer
from meshlib._sidecar.launch import EXIT_CONFIG, EXIT_DISCOVERY, EXIT_LISTEN, ProxyOptions, say
from meshlib._sidecar.server import HttpServer
from meshlib._tls.senders import TlsSenders
from meshlib._transport import AsyncHTTP1Transport

__all__ = ["Proxy", "serve", "workers_answer"]

logger = logging.getLogger("meshlib.proxy")

# How long worker 0 waits for another worker's /stats (the admin answers without it past that).
_PEER_TIMEOUTS: dict[str, float | None] = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}
# How long worker 0's POST /reload waits for another worker's reload (one may wait out an empty read).
RELOAD_WAIT: Final = 10.0
_RELOAD_TIMEOUTS: dict[str, float | None] = {**_PEER_TIMEOUTS, "read": RELOAD_WAIT}
# The collector's thresholds once serving (Python's: 700, 10, 10). At 700 the objects of the requests in
# flight alone start a young collection every few dozen requests (benchmarks/soak_sidecar.py
# --no-observability, 64 connections: 4,300 collections over 147k requests, about 4 µs a request; at 3,000:
# 3 collections). Requests leave no cyclic garbage, observers on or off (tests/observe/test_no_cyclic_garbage.py):
# when they did, collections ran anyway, 13-20 µs a request in the collector, and RSS climbed for minutes. 50,000
# was worse: its young generation outgrows the CPU caches (pauses of 40-60 ms). Start-up's objects are frozen
# (gc.freeze).
_GC_THRESHOLDS: Final = (3_000, 20, 100)


class ListenError(Exception):
    """A listener could not bind its address."""


def bind(address: Address, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``address``; ListenError with a clear reason when it cannot be had."""
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot resolve {address.host!r}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        sock.listen(4096)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise ListenError(f"cannot listen on {address}: {reason}") from None
    return sock


class Proxy:
    """One proxy process: the mesh, its listeners, reload and drain (the admin endpoints' target)."""

    def __init__(
        self, options: ProxyOptions, config: MeshConfig, sidecar: SidecarConfig, loaded: str | None = None
    ) -> None:
        # sidecar: config.sidecar with the listen addresses of flags and environment applied;
        # loaded: the digest of the config file's content, for the watcher (see load_settled).
        self.options = options
        self.mesh = Mesh(config, _sidecar=True)
        self.sender = AsyncHTTP1Transport()
        # Clusters with tls: pools of the sender's own kind, per cluster and certificate version.
        self.tls = TlsSenders(async_base=self.sender)
        self.servers: dict[str, HttpServer] = {}
        self._draining = False
        self._started = False
        self._stopped = asyncio.Event()
        self._loaded = loaded
        # SIGHUP's and POST /reload's reloads: one at a time, off the event loop and out of its default executor.
        self._reloader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meshlib-reload")
        self._under_supervisor = options.worker_index is not None
        self._file_sidecar = config.sidecar  # to tell that a reload changed the section (which needs a restart)
        self._listening_config = sidecar  # what the listeners were started with (a reload can't change it)
        self._admin: HttpServer | None = None
        # Worker 0 of a supervised proxy waits for the others' "listening" lines: index -> private admin port.
        self._expected_peers = options.workers - 1 if options.worker_index == 0 and options.ready_fd is not None else 0
        self._peer_admins: dict[int, int] = {}
        self._private_admin: HttpServer | None = None  # another worker's admin listener, for worker 0 to ask
        self._relaying = asyncio.Lock()  # worker 0: one relayed reload at a time, so that answers never interleave

    # --- AdminTarget -------------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._started and len(self._peer_admins) >= self._expected_peers and not self._draining

    def listener_stats(self) -> dict[str, Any]:
        return {
            name: {"connections": s.connections, "in_flight": s.in_flight, "address": _shown(*s.address)}
            for name, s in self.servers.items()
        }

    async def peer_stats(self) -> tuple[list[tuple[int, dict[str, Any]]], list[int]]:
        if not self._expected_peers:
            return [], []
        peers = sorted(self._peer_admins.items())
        found = await asyncio.gather(*(self._ask(port, "GET", "/stats", _PEER_TIMEOUTS) for _, port in peers))
        answered = [(index, doc) for (index, _), (status, doc) in zip(peers, found, strict=True) if status == 200]
        got = {index for index, _ in answered}
        return answered, [i for i in range(1, self._expected_peers + 1) if i not in got]

    async def peer_metrics(self) -> tuple[list[str], list[int]]:
        if not self._expected_peers:
            return [], []
        peers = sorted(self._peer_admins.items())
        found = await asyncio.gather(*(self._ask_text(port, "/metrics") for _, port in peers))
        pages = [page for page in found if page is not None]
        answered = {index for (index, _), page in zip(peers, found, strict=True) if page is not None}
        return pages, [i for i in range(1, self._expected_peers + 1) if i not in answered]

    async def _ask_text(self, port: int, path: str) -> str | None:
        """Another worker's 200 answer to ``GET path`` on its private admin port, as text; None if none came."""
        request = httpx.Request("GET", f"http://127.0.0.1:{port}{path}", extensions={"timeout": _PEER_TIMEOUTS})
        try:
            response = await self.sender.handle_async_request(request)
            body = await response.aread()
        except httpx.HTTPError:
            return None
        return body.decode("utf-8", "replace") if response.status_code == 200 else None

    async def _ask(
        self, port: int, method: str, path: str, timeouts: dict[str, float | None]
    ) -> tuple[int, dict[str, Any]]:
        """Another worker's JSON answer on its private admin port: (status, document); (0, why) if none came."""
        request = httpx.Request(method, f"http://127.0.0.1:{port}{path}", extensions={"timeout": timeouts})
        try:
            response = await self.sender.handle_async_request(request)
            doc = json.loads(await response.aread())
        except httpx.TimeoutException:
            return 0, {"message": f"did not answer within {timeouts['read']:g}s"}
        except (httpx.HTTPError, ValueError) as exc:
            return 0, {"message": f"did not answer: {type(exc).__name__}"}
        return (response.status_code, doc) if isinstance(doc, dict) else (0, {"message": "answered no JSON object"})

    async def reload(self) -> ReloadAnswer:
        if not self._expected_peers:  # one process, or a worker that worker 0 asks: reload this process
            answer, _ = await asyncio.wrap_future(self._reloader.submit(self._reload_now))
            return answer
        async with self._relaying:
            # Worker 0 validates (and loads) first: an invalid config is refused here, and nothing is relayed.
            own, _ = await asyncio.wrap_future(self._reloader.submit(self._reload_now))
            if not own.ok:
                return own
            peers = await asyncio.gather(*(self._reload_peer(i) for i in range(1, self._expected_peers + 1)))
            return workers_answer(own, list(peers))

    async def _reload_peer(self, index: int) -> tuple[bool, dict[str, Any]]:
        """Worker ``index``'s answer to ``POST /reload`` (on its private admin port): (answered, its body)."""
        port = self._peer_admins.get(index)
        if port is None:
            return False, {"worker": index, "reloaded": False, "message": "not listening yet"}
        status, doc = await self._ask(port, "POST", "/reload", _RELOAD_TIMEOUTS)
        return status != 0, {"worker": index, "reloaded": False, **doc}

    def _reload_now(self) -> tuple[ReloadAnswer, str | None]:
        """Reload the config file (``Mesh.reload`` logs and counts it): the answer for ``POST /reload``, and
        the digest of the file loaded (for the file watcher; None when refused). Runs on a reload thread."""
        try:
            snapshot, digest = self.mesh._reload(self.options.config)
        except Exception as exc:  # invalid (400), or a bug or an I/O error (500): logged once, the old config serves
            serving = self.mesh.snapshot
            return reload_answer(exc, version=serving.version, digest=serving.digest), None
        if snapshot.config.sidecar != self._file_sidecar:
            logger.warning("the sidecar section changed: listeners and limits apply after a restart")
        return reload_answer(version=snapshot.version, digest=snapshot.digest), digest

    def drain(self) -> str:
        if self._under_supervisor:
            os.kill(os.getppid(), signal.SIGTERM)
            return "drain requested from every worker"
        self._begin_drain()
        return "draining: no new connections; requests in flight finish"

    # --- lifecycle ---------------------------------------------------------------------------------------------------

    def _begin_drain(self) -> None:
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())

    def _register(self, sidecar: SidecarConfig) -> None:
        """Announce this sidecar in the registry, once listening: at ``register.address``, else its inbound listener."""
        discovery = self.mesh._discovery
        register = discovery.register_config if discovery is not None else None
        if discovery is None or register is None or self.options.worker_index not in (None, 0):
            return  # under --workers, worker 0 speaks for all of them (they share the ports)
        address = register.address
        if address is None:
            server = self.servers.get("inbound")
            assert server is not None  # check_registration refused a config without one
            host, port = server.address
            address = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        discovery.register(address)

    async def _drain(self) -> None:
        # Out of the registry first, so callers stop sending before the listeners stop taking requests.
        discovery = self.mesh._discovery
        if discovery is not None:
            await asyncio.get_running_loop().run_in_executor(self._reloader, discovery.deregister)
        try:
            timeout = self.mesh.config.sidecar.limits.drain_timeout
            say(f"draining (up to {timeout:g}s)")
            results = await asyncio.gather(*(s.drain(timeout) for s in self.servers.values() if s is not self._admin))
            say("drained" if all(results) else "drain timeout: aborted the requests still in flight")
        finally:
            self._stopped.set()  # a drain that failed still ends the process: SIGTERM must never be ignored

    async def run(self) -> int:
        sidecar = self._listening_config
        limits = sidecar.limits
        reuse = self.options.workers > 1 or self._under_supervisor
        plan: list[tuple[str, Address]] = [("outbound", parse_address(sidecar.outbound.listen))]
        inbound_app = sidecar.inbound.app if sidecar.inbound is not None else None
        if sidecar.inbound is not None:
            plan.append(("inbound", parse_address(sidecar.inbound.listen)))
        serve_admin = self.options.worker_index in (None, 0)
        if serve_admin:
            plan.append(("admin", parse_address(sidecar.admin.listen)))
        sockets: dict[str, socket.socket] = {}
        try:
            for name, address in plan:
                sockets[name] = bind(address, reuse_port=reuse and name != "admin")
        except ListenError as exc:
            for sock in sockets.values():
                sock.close()
            say(f"{exc} ({name} listener)")
            return EXIT_LISTEN
        handlers = {
            "outbound": outbound_handler(self.mesh, self.sender, self.tls),
            "admin": admin_handler(self),
        }
        if inbound_app is not None:
            handlers["inbound"] = inbound_handler(self.mesh, inbound_app, self.sender)
        for name, sock in sockets.items():
            server = HttpServer(
                name,
                handlers[name],
                limits,
                connect_tunnel=connect_policy(self.mesh) if name == "outbound" else None,
                # Always through the TLS-aware accept loop: a reload may turn inbound mTLS on or off.
                tls=InboundTls(self.mesh) if name == "inbound" else None,
            )
            await server.start(sock)
            self.servers[name] = server
            if name == "admin":
                self._admin = server
        self._started = True
        self._register(sidecar)
        # Everything built so far (config, snapshot, modules) lives as long as the process: keep it out of the
        # collector's scans, which otherwise stall the loop for milliseconds and show in the p99; and collect
        # less often while serving (_GC_THRESHOLDS).
        gc.collect()
        gc.freeze()
        thresholds = gc.get_threshold()
        gc.set_threshold(*_GC_THRESHOLDS)
        workers = f" (worker {self.options.worker_index})" if self._under_supervisor else ""
        for name, server in self.servers.items():
            say(f"{name} listening on {_shown(*server.address)}{workers}")
        loop = asyncio.get_running_loop()
        await self._report_listening(loop)
        loop.add_signal_handler(signal.SIGTERM, self._begin_drain)
        loop.add_signal_handler(signal.SIGINT, self._begin_drain)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._reloader.submit(self._reload_now))
        watcher = None
        if self.options.watch_interval > 0:
            watcher = FileWatcher(
                self.options.config,
                lambda: self._reload_now()[1],
                interval=self.options.watch_interval,
                loaded=self._loaded,
            )
            watcher.start()
        try:
            await self._stopped.wait()
        finally:
            gc.set_threshold(*thresholds)  # as it was, for a caller that goes on (the tests run proxies in process)
            if watcher is not None:
                watcher.close()
            self._reloader.shutdown(wait=False, cancel_futures=True)
            for server in self.servers.values():
                await server.close()
            if self._private_admin is not None:
                await self._private_admin.close()
            await self.sender.aclose()
            await self.tls.aclose()
            self.mesh.close()
        return 0

    async def _report_listening(self, loop: asyncio.AbstractEventLoop) -> None:
        """Under a supervisor: worker 0 reads the others' lines from the pipe; the others write theirs."""
        fd = self.options.ready_fd
        if fd is None:
            return
        if not self._expected_peers:
            # Not the admin worker: serve the admin endpoints privately, for worker 0 to merge this worker's stats.
            server = HttpServer("admin", admin_handler(self), self._listening_config.limits)
            await server.start(bind(Address("127.0.0.1", 0)))
            self._private_admin = server
            with contextlib.suppress(OSError):  # the supervisor is gone: nobody to tell
                os.write(fd, f"{self.options.worker_index} {server.address[1]}\n".encode())
            os.close(fd)
            return
        pending = bytearray()

        def on_readable() -> None:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            pending.extend(data)
            *lines, rest = pending.split(b"\n")
            pending[:] = rest
            for line in lines:
                with contextlib.suppress(ValueError):
                    index, port = map(int, line.split())
                    self._peer_admins[index] = port
            if not data or len(self._peer_admins) >= self._expected_peers:
                # Done, or EOF: a worker died before listening (the supervisor then stops every worker).
                loop.remove_reader(fd)
                os.close(fd)

        os.set_blocking(fd, False)
        loop.add_reader(fd, on_readable)


def workers_answer(own: ReloadAnswer, peers: list[tuple[bool, dict[str, Any]]]) -> ReloadAnswer:
    """Worker 0's answer to ``POST /reload`` from its own (a 200) and the others' (answered, body).

    200 when every worker runs worker 0's new config (by digest); otherwise 504 when some worker did
    not answer in time, else 500 (one refused or failed the reload, or runs other content: the file
    changed meanwhile). ``workers`` lists what each worker answered.
    """
    digest = own.body["digest"]
    workers = [{"worker": 0, **own.body}, *(body for _, body in peers)]
    behind = [w for w in workers if w.get("digest") != digest or not w.get("reloaded")]
    if not behind:
        message = f"config digest {digest} runs in every worker"
        return ReloadAnswer(200, {**own.body, "message": message, "workers": workers})
    status = 504 if not all(answered for answered, _ in peers) else 500
    why = "; ".join(map(_behind, behind))
    message = f"not every worker runs the new config (digest {digest}): {why}"
    return ReloadAnswer(status, {**own.body, "reloaded": False, "message": message, "workers": workers})


def _behind(worker: dict[str, Any]) -> str:
    """One line on a worker that does not run the new config: what it runs, or why it did not reload."""
    runs = f"runs config version {worker.get('version')} (digest {worker.get('digest')})"
    if worker.get("reloaded"):
        return f"worker {worker['worker']} {runs}"  # another content: the file changed meanwhile
    why = " ".join(str(worker.get("message")).split())
    return f"worker {worker['worker']}: {why}" + (f"; still {runs}" if "digest" in worker else "")


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(options: ProxyOptions, config: MeshConfig, sidecar: SidecarConfig, digest: str | None) -> int:
    """Serve ``config`` in this process until drained (``meshlib proxy``, or one of its ``--workers``); the exit code.

    :func:`meshlib._sidecar.launch.run_proxy` has loaded the config and set the listen addresses and logging.
    """
    try:
        proxy = Proxy(options, config, sidecar, digest)
    except ConfigError as exc:  # found only once the mesh is built (validation catches all it can)
        print(exc, file=sys.stderr, flush=True)
        return EXIT_CONFIG
    except DiscoveryError as exc:
        say(str(exc))
        return EXIT_DISCOVERY
    loop = _event_loop()
    try:
        return loop.run_until_complete(proxy.run())
    finally:
        loop.close()
