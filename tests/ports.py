"""Loopback ports for servers a test starts and binds later (a proxy, Redis, etcd, Prometheus), or for "nothing
listens here".

A port the OS picks with ``bind(0)`` comes from its ephemeral range, the range every outgoing connection's local
port comes from too. Between the moment a test learns such a port and the moment its server binds it, a client
socket (of this test, or of a server it runs) may take it, and the server fails with "address already in use": a
sidecar test under load failed that way in CI. The OS never hands out a port below that range on its own, so a
port picked there, checked free and not handed out before by this process, stays free for the test that asked.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port", "free_ports"]

_FALLBACK_RANGE = (32768, 60999)  # Linux's default ephemeral range
_LOWEST = 20000  # below: ports that well-known services (and people) use
_given: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _FALLBACK_RANGE


def _bindable(port: int) -> bool:
    # Without SO_REUSEADDR: a port with a connection still in TIME_WAIT counts as taken too.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nothing listens on, outside the OS's ephemeral range, never returned before here."""
    low, _ = _ephemeral_range()
    candidates = range(_LOWEST, low) if low - _LOWEST >= 1000 else range(1024, low)
    rng = random.Random()
    for _ in range(200):
        port = rng.choice(candidates)
        if port not in _given and _bindable(port):
            _given.add(port)
            return port
    raise RuntimeError(f"no free loopback port found in {candidates.start}-{candidates.stop - 1}")


def free_ports(count: int) -> list[int]:
    """``count`` different ports, as :func:`free_port` picks them."""
    return [free_port() for _ in range(count)]
