"""Fixtures of the policy tests: a real redis-server for the global rate limit and the shared breaker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import MISSING, MissingRedisError, RedisServer, redis_server


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    """One real redis-server for the session (on 127.0.0.1, no persistence), stopped at the end.

    Fails, never skips, when redis-server is missing: a skip would hide a missing tool in CI.
    """
    try:
        with redis_server() as server:
            yield server
    except MissingRedisError:
        pytest.fail(MISSING, pytrace=False)


@pytest.fixture
def redis_url(redis_session: RedisServer) -> str:
    """The URL of an empty Redis database: every test starts without keys."""
    client = redis_session.client()
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_session.url
