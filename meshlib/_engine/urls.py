"""Cheap URL surgery for the hot path: swap the origin or the path of an ``httpx.URL``.

``URL.copy_with`` re-parses and re-validates the whole URL: about 33 µs a call
on the reference machine, more than the rest of the engine together. The
engine only ever combines parts that were already validated (an endpoint
origin from the config, a path from a parsed request), so it replaces fields
of httpx's parsed form directly (about 1 µs; ``benchmarks/bench_core.py``).
If a future httpx changes that private form, the slow public path is used.
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["path_of", "with_origin", "with_path"]


def _probe() -> bool:
    ref: Any = getattr(httpx.URL("http://a/"), "_uri_reference", None)
    return ref is not None and hasattr(ref, "_replace") and hasattr(ref, "path")


_FAST = _probe()


def path_of(url: httpx.URL) -> str:
    """The percent-encoded path, without the query (what route matchers compare)."""
    if _FAST:
        path: str = url._uri_reference.path
        return path or "/"
    return url.raw_path.split(b"?", 1)[0].decode("ascii") or "/"


def with_origin(url: httpx.URL, origin: httpx.URL) -> httpx.URL:
    """``url``'s path and query on ``origin``'s scheme, host and port."""
    if _FAST:
        o = origin._uri_reference
        new = httpx.URL.__new__(httpx.URL)
        new._uri_reference = url._uri_reference._replace(scheme=o.scheme, userinfo="", host=o.host, port=o.port)
        return new
    return url.copy_with(scheme=origin.scheme, host=origin.host, port=origin.port)


def with_path(url: httpx.URL, path: str) -> httpx.URL:
    """``url`` with its path replaced by an already percent-encoded ``path``."""
    if _FAST:
        new = httpx.URL.__new__(httpx.URL)
        new._uri_reference = url._uri_reference._replace(path=path)
        return new
    query = url.query
    return url.copy_with(raw_path=path.encode("ascii") + (b"?" + query if query else b""))
