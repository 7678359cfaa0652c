"""``storage:`` URLs of rate limits and breakers, checked at validation exactly as far as building the mesh reads them.

``memory://`` counts in the process; ``redis://`` and ``rediss://`` (TLS)
URLs go to redis-py (through ``limits`` for rate limits, directly for
breakers), which would otherwise refuse a bad port, database or option only
when the mesh is built, or a bad option only at the first request. So a redis
URL is checked here: host, port 1-65535, database number, and its query
options handed to redis-py's own parser and connection class (no connection
is made). Error messages show the URL with its credentials redacted.
"""

from __future__ import annotations

import importlib
import math
import re
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from meshlib._config.hosts import is_ip
from meshlib._config.pydantic_names import AfterValidator, WithJsonSchema
from meshlib._config.redact import Secret, redact_url

__all__ = ["REDIS_MISSING", "StorageUrl", "check_storage_url"]

REDIS_MISSING: Final = "a redis:// storage needs the redis package: pip install redis"
_USAGE: Final = "use memory:// or redis://[:PASSWORD@]HOST:PORT[/DB] (rediss:// for TLS)"
_HOST = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
# redis-py's complaint about an option it does not know: "... got an unexpected keyword argument 'foo'".
_UNKNOWN_OPTION = re.compile(r"unexpected keyword argument '([^']+)'")


def _redis_errors(url: str) -> str | None:
    """Why redis-py would refuse ``url`` when the mesh is built or first connects, or None."""
    parts = urlsplit(url)
    try:
        port = parts.port  # None: redis-py's default, 6379
    except ValueError:  # not a number, or above 65535
        port = 0
    if port == 0:
        return "the port must be a number from 1 to 65535"
    host = parts.hostname or ""
    if not host:
        return "it names no host"
    if not _HOST.match(host) and not is_ip(host):
        return f"invalid host {host!r}"
    if parts.path not in ("", "/") and not re.fullmatch(r"/\d+", parts.path):
        return "the database must be a number: redis://HOST:PORT/0"
    if parts.fragment:
        return "a storage URL takes no #fragment"
    try:
        redis: Any = importlib.import_module("redis")
    except ImportError:
        return REDIS_MISSING
    return _option_errors(redis, url)


def _option_errors(redis: Any, url: str) -> str | None:
    """The query's options, as redis-py parses them and its connection class takes them (nothing connects)."""
    try:
        options: dict[str, Any] = redis.connection.parse_url(url)
        pool = redis.ConnectionPool.from_url(url)
        pool.make_connection()
        pool.disconnect()
    except TypeError as exc:
        unknown = _UNKNOWN_OPTION.search(str(exc))
        option = repr(unknown.group(1)) if unknown else "an option"
        hint = " (ssl_ options need rediss://)" if option.startswith("'ssl_") and url.startswith("redis:") else ""
        return f"redis does not take {option} in the URL's query{hint}"
    except Exception as exc:  # redis-py: "Invalid value for 'db' in connection URL.", "protocol must be ..."
        return str(exc).rstrip(".") or type(exc).__name__
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        # A database and the health-check interval may be 0 (the first one; no checks); timeouts and sizes may not.
        positive = name not in ("db", "health_check_interval")
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            return f"invalid value for {name!r}: a number {'above 0' if positive else 'of 0 or more'}"
    return None


def check_storage_url(value: str) -> str:
    """``value`` if the mesh can use it as a storage; else ValueError saying why (credentials redacted)."""
    if value == "memory://":
        return value
    shown = repr(redact_url(value))
    if value.startswith("memory://"):
        raise ValueError(f"invalid storage {shown}: memory:// takes no host, path or options")
    if not value.startswith(("redis://", "rediss://")):
        raise ValueError(f"unsupported storage {shown}: {_USAGE}")
    why = _redis_errors(value)
    if why is not None:
        why = why.replace(value, redact_url(value))  # should redis-py's message quote the URL
        raise ValueError(why if why == REDIS_MISSING else f"invalid storage {shown}: {why}")
    return value


StorageUrl = Annotated[
    str,
    AfterValidator(check_storage_url),
    Secret.URL,
    WithJsonSchema({"type": "string", "pattern": "^(memory://$|rediss?://)", "examples": ["redis://127.0.0.1:6379/0"]}),
]
"""A ``storage:`` URL: ``memory://``, ``redis://...`` or ``rediss://...``, checked as redis-py reads it."""
