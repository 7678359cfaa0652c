"""Where rate limits count: the ``limits`` storages of one mesh, and the Redis helpers the breaker shares.

``limits`` and ``redis`` are imported only when a storage is first needed, so
a mesh without rate limits or shared breakers never loads them (the sidecar's
idle memory counts).
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any

from meshlib._config.storage_url import REDIS_MISSING
from meshlib._errors import ConfigError

if TYPE_CHECKING:
    import limits.storage

__all__ = ["REDIS_TIMEOUT", "StorageRegistry", "is_redis", "require_redis"]

# Seconds to connect to Redis and to wait for each answer, unless the URL says otherwise
# (``?socket_timeout=0.5&socket_connect_timeout=0.5``). Past it, Redis counts as down and the
# policy fails open; a short bound keeps a hung Redis from stalling every request.
REDIS_TIMEOUT = 0.1


def is_redis(url: str | None) -> bool:
    """True for a ``redis://`` or ``rediss://`` storage URL (the config admits those and ``memory://``)."""
    return url is not None and url.startswith(("redis://", "rediss://"))


def require_redis(where: str) -> ModuleType:
    """The ``redis`` package, or a ConfigError at ``where`` saying how to install it.

    Validation refuses a redis:// storage without the package already; this guards a config built otherwise.
    """
    try:
        return importlib.import_module("redis")
    except ImportError:
        raise ConfigError([(where, REDIS_MISSING)]) from None


class StorageRegistry:
    """The ``limits`` storages of one mesh: one in-memory storage, and one Redis client per URL.

    Callers in both modes share them: limits' memory storage never blocks,
    and the async path runs Redis hits in a worker thread (see
    :class:`RateLimitFilter`), so sync and async clients count in one place.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._memory: limits.storage.MemoryStorage | None = None
        self._redis: dict[str, limits.storage.RedisStorage] = {}

    def get(self, url: str | None, *, where: str = "rate_limit.storage") -> limits.storage.Storage:
        """The storage for ``url`` (None or ``memory://`` for memory), made on first use."""
        with self._lock:
            if not is_redis(url):
                if self._memory is None:
                    import limits.storage

                    self._memory = limits.storage.MemoryStorage()
                return self._memory
            assert url is not None
            storage = self._redis.get(url)
            if storage is None:
                require_redis(where)
                import limits.storage

                # wrap_exceptions: every Redis failure arrives as limits.errors.StorageError (failing open).
                # Options given in the URL's query win over these defaults (redis.from_url).
                storage = self._redis[url] = limits.storage.RedisStorage(
                    url,
                    wrap_exceptions=True,
                    socket_timeout=REDIS_TIMEOUT,
                    socket_connect_timeout=REDIS_TIMEOUT,
                )
            return storage

    def close(self) -> None:
        """Disconnect the Redis clients (a client still in use connects again)."""
        with self._lock:
            storages = list(self._redis.values())
        for storage in storages:
            client: Any = storage.get_connection()  # a redis.Redis (limits types it as a protocol)
            client.close()
