"""Hosts and authorities: what a route's ``match.host`` pattern means, and what an authority may be."""

from __future__ import annotations

import ipaddress

import httpx

__all__ = ["authority_host", "check_authority", "host_matches", "is_ip"]


def is_ip(text: str, version: int | None = None) -> bool:
    """Whether ``text`` is an IP address as :mod:`ipaddress` reads one (IPv6 without brackets), of ``version``
    (4 or 6) when given."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version


def host_matches(pattern: str, host: str) -> bool:
    """``*`` matches any host; ``*.example.com`` matches ``a.example.com`` but not ``example.com``."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def check_authority(value: str) -> str:
    """``host[:port]`` as a URL has it (lowercase, no default port), or ValueError saying why not."""
    try:
        url = httpx.URL(f"http://{value}/")
    except httpx.InvalidURL:
        url = None
    if url is None or not url.host or url.userinfo or url.netloc.decode("ascii", "replace") != value.lower():
        raise ValueError(f"invalid authority {value!r}: use host[:port] as the URL has it (no default port 80)")
    return value.lower()


def authority_host(authority: str) -> str:
    """The host part of a valid authority (``[::1]:8080`` → ``::1``)."""
    return httpx.URL(f"http://{authority}/").host
