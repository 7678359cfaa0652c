"""A DNS server on loopback (UDP, an ephemeral port) whose answers a test changes while a client resolves.

Each (name, type) answers with records, NXDOMAIN, SERVFAIL, an empty NOERROR,
or not at all (the client times out); every query is counted, so that a test
can wait for the next re-resolution instead of sleeping a fixed time.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

import dnslib  # type: ignore[import-untyped]

Kind = Literal["records", "nxdomain", "servfail", "drop", "empty"]
TYPES = ("A", "AAAA")


@dataclass(frozen=True)
class _Answer:
    kind: Kind
    addresses: tuple[str, ...] = ()
    ttl: int = 60


def _key(name: str) -> str:
    return name.rstrip(".").lower()


class DnsServer:
    """Answers A and AAAA queries on ``host`` (127.0.0.1 or ::1) as told; ``address`` is the resolver's IP:PORT."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.bind((host, 0))
        except OSError:
            self._sock.close()
            raise
        self.port: int = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, str], _Answer] = {}
        self._queries: Counter[tuple[str, str]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns-server", daemon=True)

    @property
    def address(self) -> str:
        """The resolver address a DnsDiscoveryConfig takes: ``127.0.0.1:PORT`` or ``[::1]:PORT``."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    # What the server answers; each call replaces the name's earlier behaviour (for ``qtype`` only, if given).

    def set(self, name: str, addresses: Iterable[str], ttl: int = 60, qtype: str | None = None) -> None:
        """A records for the IPv4 addresses, AAAA for the IPv6 ones (a type with none answers NOERROR, empty)."""
        by_type: dict[str, list[str]] = {"A": [], "AAAA": []}
        for address in addresses:
            by_type["AAAA" if ipaddress.ip_address(address).version == 6 else "A"].append(address)
        with self._lock:
            for each, found in by_type.items():
                if qtype in (None, each):
                    self._answers[(_key(name), each)] = _Answer("records" if found else "empty", tuple(found), ttl)

    def nxdomain(self, name: str, qtype: str | None = None) -> None:
        self._set_kind(name, "nxdomain", qtype)

    def servfail(self, name: str, qtype: str | None = None) -> None:
        self._set_kind(name, "servfail", qtype)

    def drop(self, name: str, qtype: str | None = None) -> None:
        """No reply at all: the client times out."""
        self._set_kind(name, "drop", qtype)

    def empty(self, name: str, qtype: str | None = None) -> None:
        """NOERROR with no records."""
        self._set_kind(name, "empty", qtype)

    def _set_kind(self, name: str, kind: Kind, qtype: str | None) -> None:
        with self._lock:
            for each in (qtype,) if qtype else TYPES:
                self._answers[(_key(name), each)] = _Answer(kind)

    # What the server was asked.

    def queries(self, name: str, qtype: str = "A") -> int:
        """How many queries for (name, type) arrived, answered or not."""
        with self._lock:
            return self._queries[(_key(name), qtype)]

    def wait_for_queries(self, name: str, count: int, qtype: str = "A", timeout: float = 2.0) -> bool:
        """Wait until (name, type) was asked ``count`` times in all; whether it was, within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.queries(name, qtype) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # Serving.

    def _serve(self) -> None:
        while not self._stop.is_set():
            # A short select timeout, so that close() is prompt.
            readable, _, _ = select.select([self._sock], [], [], 0.05)
            if not readable:
                continue
            try:
                data, peer = self._sock.recvfrom(4096)
            except OSError:
                return
            reply = self._reply(data)
            if reply is not None:
                self._sock.sendto(reply, peer)

    def _reply(self, data: bytes) -> bytes | None:
        try:
            request = dnslib.DNSRecord.parse(data)
        except dnslib.DNSError:
            return None
        name = _key(str(request.q.qname))
        qtype = dnslib.QTYPE[request.q.qtype]
        with self._lock:
            self._queries[(name, qtype)] += 1
            answer = self._answers.get((name, qtype), _Answer("nxdomain"))
        reply = request.reply()  # same id and question, QR and RA set
        if answer.kind == "drop":
            return None
        if answer.kind == "nxdomain":
            reply.header.rcode = dnslib.RCODE.NXDOMAIN
        elif answer.kind == "servfail":
            reply.header.rcode = dnslib.RCODE.SERVFAIL
        elif answer.kind == "records":
            rdata = dnslib.A if qtype == "A" else dnslib.AAAA
            for address in answer.addresses:
                reply.add_answer(
                    dnslib.RR(request.q.qname, getattr(dnslib.QTYPE, qtype), rdata=rdata(address), ttl=answer.ttl)
                )
        packed: bytes = reply.pack()
        return packed

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self._sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
