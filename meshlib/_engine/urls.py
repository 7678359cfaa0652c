"""Cheap URL surgery for the hot path: swap the origin or the path of an ``httpx.URL``.

``URL.copy_with`` re-parses and re-validates the whole URL: about 33 µs a call
on the reference machine, more than the rest of the engine together. The
engine only ever combines parts that were already validated (an endpoint
origin from the config, a path from a parsed request), so it replaces fields
of httpx's parsed form directly (about 1 µs; ``benchmarks/bench_core.py``).
If a future httpx changes that private form, the slow public path is used.
"""

from __future__ import annotations

from typing import Any, Final

import httpx

from meshlib._httpx_shortcuts import URL, new_instance

__all__ = ["host_of", "origin_key", "path_of", "target_of", "with_origin", "with_path"]


_FIELDS = ("scheme", "userinfo", "host", "port", "path", "query", "fragment")


def _probe() -> bool:
    ref: Any = getattr(httpx.URL("http://a/"), "_uri_reference", None)
    return ref is not None and getattr(ref, "_fields", None) == _FIELDS


_FAST: Final = _probe()
# The parsed form's class, a named tuple of _FIELDS: built with tuple.__new__, as its _replace does after a
# keyword-argument round trip that costs more than the rest of a with_origin.
_PARSED: Final[Any] = type(httpx.URL("http://a/")._uri_reference) if _FAST else None
_new_tuple: Final = tuple.__new__


def path_of(url: httpx.URL) -> str:
    """The percent-encoded path, without the query (what route matchers compare)."""
    if _FAST:
        path: str = url._uri_reference.path
        return path or "/"
    return url.raw_path.split(b"?", 1)[0].decode("ascii") or "/"


def host_of(url: httpx.URL) -> str:
    """``url.host`` (what the route table indexes), without the property's Python call for a host not in IDNA form."""
    if _FAST:
        host: str = url._uri_reference.host
        if not host.startswith("xn--"):  # httpx's own test: such a host it decodes
            return host
    return url.host


def origin_key(url: httpx.URL) -> tuple[bytes, bytes, int | None]:
    """``(url.raw_scheme, url.raw_host, url.port)``: a connection pool's key, without three Python properties."""
    if _FAST:
        r = url._uri_reference
        return r[0].encode("ascii"), r[2].encode("ascii"), r[3]
    return url.raw_scheme, url.raw_host, url.port


def target_of(url: httpx.URL) -> bytes:
    """``url.raw_path``: the path and query a request line carries, without the property's Python call."""
    if _FAST:
        r = url._uri_reference
        path: str = r[4] or "/"
        query: str | None = r[5]
        return (path if query is None else path + "?" + query).encode("ascii")
    return url.raw_path


def with_origin(url: httpx.URL, origin: httpx.URL) -> httpx.URL:
    """``url``'s path and query on ``origin``'s scheme, host and port."""
    if _FAST:
        o = origin._uri_reference
        r = url._uri_reference
        new: httpx.URL = new_instance(URL)
        new._uri_reference = _new_tuple(_PARSED, (o[0], "", o[2], o[3], r[4], r[5], r[6]))
        return new
    return url.copy_with(scheme=origin.scheme, host=origin.host, port=origin.port)


def with_path(url: httpx.URL, path: str) -> httpx.URL:
    """``url`` with its path replaced by an already percent-encoded ``path``."""
    if _FAST:
        r = url._uri_reference
        new: httpx.URL = new_instance(URL)
        new._uri_reference = _new_tuple(_PARSED, (r[0], r[1], r[2], r[3], path, r[5], r[6]))
        return new
    query = url.query
    return url.copy_with(raw_path=path.encode("ascii") + (b"?" + query if query else b""))
