"""What a route's ``match.host`` pattern means, for the route table and for the config's warnings."""

from __future__ import annotations

__all__ = ["host_matches"]


def host_matches(pattern: str, host: str) -> bool:
    """``*`` matches any host; ``*.example.com`` matches ``a.example.com`` but not ``example.com``."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern
