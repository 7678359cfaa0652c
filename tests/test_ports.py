"""The loopback ports tests hand to servers they start later (tests/ports.py)."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.ports import free_port, free_ports


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(1024 <= port < low for port in ports)
    for port in ports:
        with socket.create_server(("127.0.0.1", port)):  # each can be listened on
            pass


def test_a_port_is_never_handed_out_twice() -> None:
    first = free_port()
    assert all(free_port() != first for _ in range(50))
