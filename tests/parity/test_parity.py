"""The same scenarios, the same assertions, in four modes: in process and through ``meshlib proxy``, sync and async.

Application code switches with one argument, ``mesh.client(mode="sidecar")``,
and must see the same responses and the same exception classes. Each test is
one scenario: one mesh config, real upstreams on loopback, and what the caller
and the upstreams saw. Timing bounds are loose; counts are exact.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

import meshlib
from meshlib._errors import MeshError
from tests.conftest import MeshCaller, close_before_response, close_mid_body, raw_server, stall
from tests.failing_upstreams import (
    answer_ok_keep_alive,
    drip,
    first_connection_then,
    reset_before_response,
    reset_mid_body,
    stall_mid_body,
    unaccepting_endpoint,
)
from tests.parity.conftest import OpenClient, StartUpstream

pytestmark = pytest.mark.anyio

FAST_BACKOFF = {"base": "1ms", "max": "2ms"}


def answered_by(response: httpx.Response) -> str:
    """Which echo upstream (tests/conftest.py ``echo_app``) answered."""
    assert response.status_code == 200, response.text
    name: str = response.json()["name"]
    return name


async def test_routing_by_host_path_and_header(open_client: OpenClient, upstreams: dict[str, str]) -> None:
    config: dict[str, Any] = {
        "clusters": {
            "v1": {"endpoints": [upstreams["reviews-v1-a"]]},
            "v2": {"endpoints": [upstreams["reviews-v2"]]},
            "ratings": {"endpoints": [upstreams["ratings"]]},
        },
        "routes": [
            {"name": "testers", "match": {"host": "reviews", "headers": {"x-user": "tester"}}, "cluster": "v2"},
            {"name": "v2-api", "match": {"host": "reviews", "path_prefix": "/v2/"}, "cluster": "v2"},
            {"name": "reviews", "match": {"host": "reviews"}, "cluster": "v1"},
            {"name": "ratings-alias", "match": {"host": "ratings.svc"}, "cluster": "ratings"},
        ],
    }
    async with open_client(config) as client:
        plain = await client.get("http://reviews/api/1?x=1")
        assert answered_by(plain) == "reviews-v1-a"
        seen = plain.json()
        assert (seen["path"], seen["query"]) == ("/api/1", "x=1")
        assert dict(seen["headers"])["host"] == "reviews"
        assert answered_by(await client.get("http://reviews/api/1", headers={"x-user": "tester"})) == "reviews-v2"
        assert answered_by(await client.get("http://reviews/api/1", headers={"x-user": "someone"})) == "reviews-v1-a"
        assert answered_by(await client.get("http://reviews/v2/api/1")) == "reviews-v2"
        assert answered_by(await client.get("http://ratings.svc/stars")) == "ratings"
        assert answered_by(await client.get("http://ratings/stars")) == "ratings"  # a cluster's name is a host


async def test_a_90_10_split(open_client: OpenClient, upstreams: dict[str, str]) -> None:
    config: dict[str, Any] = {
        "clusters": {
            "v1": {"endpoints": [upstreams["reviews-v1-a"]]},
            "v2": {"endpoints": [upstreams["reviews-v2"]]},
        },
        "routes": [
            {"match": {"host": "reviews"}, "split": [{"cluster": "v1", "weight": 90}, {"cluster": "v2", "weight": 10}]}
        ],
    }
    requests = 200
    async with open_client(config) as client:
        names = [answered_by(await client.get("http://reviews/x")) for _ in range(requests)]
    assert set(names) <= {"reviews-v1-a", "reviews-v2"}
    # The sidecar draws from its own unseeded rng: 20 expected, and outside 6..40 is more than 3 sd away.
    assert 0.03 * requests <= names.count("reviews-v2") <= 0.20 * requests


async def test_retries_hide_failures_and_the_upstream_sees_every_try(
    open_client: OpenClient, start_upstream: StartUpstream
) -> None:
    flaky = start_upstream(lambda n: 503 if n % 2 else 200)  # every odd-numbered request fails
    config: dict[str, Any] = {
        "clusters": {
            "flaky": {
                "endpoints": [flaky.url],
                "retry": {"attempts": 3, "retry_on": ["5xx"], "backoff": FAST_BACKOFF},
            }
        },
        "routes": [
            {
                "name": "no-retry",
                "match": {"host": "flaky", "path_prefix": "/once/"},
                "cluster": "flaky",
                "retry": {"attempts": 1},
            },
        ],
    }
    async with open_client(config) as client:
        for i in range(1, 6):
            response = await client.get("http://flaky/x")
            assert (response.status_code, response.text) == (200, f"call {2 * i}")
        assert flaky.calls == 10
        # Without retries the upstream's own 503 reaches the caller as a response, not an exception.
        failed = await client.get("http://flaky/once/x")
        assert (failed.status_code, failed.text) == (503, "call 11")
        assert (await client.get("http://flaky/once/x")).status_code == 200
    assert flaky.calls == 12


async def test_a_stalled_upstream_times_out(open_client: OpenClient) -> None:
    with raw_server(stall) as stalled:
        config: dict[str, Any] = {
            "clusters": {"slow": {"endpoints": [stalled.url]}},
            "routes": [
                {
                    "name": "per-try",
                    "match": {"host": "slow", "path_prefix": "/per-try"},
                    "cluster": "slow",
                    "retry": {"attempts": 1, "per_try_timeout": "150ms"},
                },
                {
                    "name": "whole",
                    "match": {"host": "slow", "path_prefix": "/whole"},
                    "cluster": "slow",
                    "timeout": "150ms",
                    "retry": {"attempts": 1},
                },
            ],
        }
        async with open_client(config) as client:
            for path, per_try, kind in (("/per-try", True, "per-try"), ("/whole", False, "request")):
                started = time.monotonic()
                with pytest.raises(meshlib.RequestTimeoutError) as raised:
                    await client.get(f"http://slow{path}")
                elapsed = time.monotonic() - started
                error = raised.value
                assert isinstance(error, httpx.TimeoutException)
                assert (error.per_try, error.route, error.cluster) == (per_try, path[1:], "slow")
                # The same words and fields in process and through the sidecar.
                assert (error.kind, error.timeout) == (kind.replace("-", "_"), 0.15)
                assert str(error) == (
                    f"{kind} timeout (150ms) ran out during try 1 of route {path[1:]!r}, cluster 'slow'"
                    f" (endpoint {stalled.url})"
                )
                assert 0.12 <= elapsed < 3.0
        assert stalled.connections == 2


async def test_the_breaker_opens_after_two_failures_and_spares_the_upstream(
    open_client: OpenClient, start_upstream: StartUpstream
) -> None:
    broken = start_upstream(lambda n: 503)
    config: dict[str, Any] = {
        "clusters": {
            "broken": {
                "endpoints": [broken.url],
                "retry": {"attempts": 1},
                "circuit_breaker": {"failure_threshold": 2, "recovery_timeout": "60s"},
            }
        }
    }
    async with open_client(config) as client:
        # The tries that trip the breaker still return their own answers.
        assert [(await client.get("http://broken/x")).status_code for _ in range(2)] == [503, 503]
        for _ in range(3):
            with pytest.raises(meshlib.CircuitOpenError) as raised:
                await client.get("http://broken/x")
            assert raised.value.cluster == "broken"
    assert broken.calls == 2


async def test_the_fourth_request_in_a_minute_is_rate_limited(
    open_client: OpenClient, start_upstream: StartUpstream
) -> None:
    upstream = start_upstream(lambda n: 200)
    config = {"clusters": {"limited": {"endpoints": [upstream.url], "rate_limit": {"rate": "3/minute"}}}}
    async with open_client(config) as client:
        assert [(await client.get("http://limited/x")).text for _ in range(3)] == ["call 1", "call 2", "call 3"]
        with pytest.raises(meshlib.RateLimitedError) as raised:
            await client.get("http://limited/x")
    assert raised.value.cluster == "limited"
    assert upstream.calls == 3


async def test_registry_only_refuses_an_unknown_host(open_client: OpenClient, upstreams: dict[str, str]) -> None:
    config = {"outbound_policy": "registry_only", "clusters": {"ratings": {"endpoints": [upstreams["ratings"]]}}}
    async with open_client(config) as client:
        assert answered_by(await client.get("http://ratings/x")) == "ratings"
        with pytest.raises(meshlib.RouteNotFoundError) as raised:
            await client.get("http://unknown-service/x")
    assert (raised.value.route, raised.value.cluster) == (None, None)
    assert str(raised.value.request.url) == "http://unknown-service/x"


async def test_a_refused_port_is_an_upstream_connect_error(open_client: OpenClient, free_port: int) -> None:
    config = {
        "clusters": {
            "gone": {
                "endpoints": [f"http://127.0.0.1:{free_port}"],
                "retry": {"attempts": 2, "backoff": FAST_BACKOFF},
            }
        }
    }
    async with open_client(config) as client:
        with pytest.raises(meshlib.UpstreamConnectError) as raised:
            await client.get("http://gone/x")
    assert isinstance(raised.value, httpx.ConnectError)
    assert raised.value.cluster == "gone"
    assert "meshlib sidecar at" not in str(raised.value)  # the upstream's failure, not the sidecar's


async def test_connect_timeouts_and_resets_read_the_same_in_every_mode(open_client: OpenClient, free_port: int) -> None:
    """The message is written once, by the engine: the sidecar client raises the very text and fields."""
    refused = f"http://127.0.0.1:{free_port}"
    with (
        unaccepting_endpoint() as hanging,
        raw_server(reset_before_response) as resetting,
        raw_server(close_before_response) as closing,
    ):
        # cluster, its endpoint, the error, what its message says happened, (kind, timeout) of a connect error
        cases: list[tuple[str, str, type[meshlib.MeshError], str, tuple[str | None, float | None] | None]] = [
            ("hanging", hanging, meshlib.UpstreamConnectError, "connect timeout (100ms) ran out", ("connect", 0.1)),
            ("resetting", resetting.url, meshlib.UpstreamResetError, "connection reset by peer", None),
            (
                "closing",
                closing.url,
                meshlib.UpstreamResetError,
                "server disconnected without sending a response",
                None,
            ),
            ("gone", refused, meshlib.UpstreamConnectError, "connection refused", (None, None)),
        ]
        clusters = {name: {"endpoints": [url], "retry": {"attempts": 1}} for name, url, *_ in cases}
        clusters["hanging"]["connect_timeout"] = "100ms"
        async with open_client({"clusters": clusters}) as client:
            for name, url, cls, what, timed_out in cases:
                with pytest.raises(cls) as raised:
                    await client.get(f"http://{name}/x")
                error = raised.value
                assert str(error) == f"{what} during try 1 of route 'cluster:{name}', cluster {name!r} (endpoint {url})"
                assert (error.route, error.cluster) == (f"cluster:{name}", name)
                if timed_out is not None:
                    assert isinstance(error, meshlib.UpstreamConnectError)
                    assert (error.kind, error.timeout) == timed_out


async def test_a_per_try_timeout_while_connecting_is_a_request_timeout_in_every_mode(open_client: OpenClient) -> None:
    """No connect_timeout: the per-try timeout cuts the connect short, and every mode raises the same class."""
    with unaccepting_endpoint() as hanging:
        config = {
            "clusters": {"hanging": {"endpoints": [hanging], "retry": {"attempts": 1, "per_try_timeout": "150ms"}}}
        }
        async with open_client(config) as client:
            with pytest.raises(meshlib.RequestTimeoutError) as raised:
                await client.get("http://hanging/x")
    error = raised.value
    assert (error.kind, error.timeout, error.per_try) == ("per_try", 0.15, True)
    expected = "per-try timeout (150ms) ran out during try 1 of route 'cluster:hanging', cluster 'hanging'"
    assert str(error) == f"{expected} (endpoint {hanging})"


# --- failures after the response head: the body's read raises, with the same class and words in every mode -----


async def _read_fails(client: MeshCaller, url: str, error: type[MeshError]) -> tuple[MeshError, float]:
    """Open ``url``'s response (a 200 head), then read its body: the read raises ``error``; and how long it took."""
    started = time.monotonic()
    response = await client.open_stream("GET", url)
    try:
        assert response.status_code == 200  # the head reached the caller: nothing can retry this try now
        with pytest.raises(error) as raised:
            await client.read_response(response)
    finally:
        await client.close_response(response)
    return raised.value, time.monotonic() - started


async def test_a_body_that_drips_or_stalls_past_a_timeout_fails_at_the_deadline(open_client: OpenClient) -> None:
    """The issue's upstream, scaled down: a byte every 50 ms for 50 bytes outlasts ``timeout`` and ``per_try_timeout``.

    Each read of the body comes within any read timeout, so only a bound on the
    whole response ends it; as in Envoy both timeouts span the body, and the
    try is not retried (its head went out) even under ``retry_on: [per-try-timeout]``.
    """
    with raw_server(drip) as per_try, raw_server(drip) as whole, raw_server(stall_mid_body) as stalling:
        retry = {"attempts": 2, "per_try_timeout": "300ms", "retry_on": ["per-try-timeout"], "backoff": FAST_BACKOFF}
        clusters: dict[str, Any] = {
            "per-try": {"endpoints": [per_try.url], "timeout": "600ms", "retry": retry},
            "whole": {"endpoints": [whole.url], "timeout": "300ms", "retry": {"attempts": 1}},
            "stalling": {"endpoints": [stalling.url], "timeout": "600ms", "retry": retry},
        }
        cases = [(per_try, "per-try", "per_try"), (whole, "whole", "request"), (stalling, "stalling", "per_try")]
        async with open_client({"clusters": clusters}) as client:
            for upstream, name, kind in cases:
                error, elapsed = await _read_fails(client, f"http://{name}/x", meshlib.RequestTimeoutError)
                assert isinstance(error, meshlib.RequestTimeoutError)
                assert (error.kind, error.timeout, error.per_try) == (kind, 0.3, kind == "per_try")
                assert (error.route, error.cluster) == (f"cluster:{name}", name)
                label = kind.replace("_", "-")
                assert str(error) == (
                    f"{label} timeout (300ms) ran out during try 1 of route 'cluster:{name}', cluster {name!r}"
                    f" (endpoint {upstream.url})"
                )
                assert 0.28 <= elapsed < 0.8  # at the deadline, not when the body would have ended (2.5 s)
            # Read whole by the client itself (client.get), the body fails the same way.
            started = time.monotonic()
            with pytest.raises(meshlib.RequestTimeoutError) as raised:
                await client.get("http://per-try/x")
            assert raised.value.kind == "per_try"
            assert time.monotonic() - started < 0.8
        assert (per_try.connections, whole.connections, stalling.connections) == (2, 1, 1)


async def test_a_body_cut_short_by_the_upstream_is_an_upstream_reset(open_client: OpenClient) -> None:
    """Closed or reset after 10 of 1000 bytes: the read raises UpstreamResetError, in the engine's words."""
    with raw_server(close_mid_body) as closing, raw_server(reset_mid_body) as resetting:
        clusters = {
            name: {"endpoints": [url], "retry": {"attempts": 1}}
            for name, url in (("closing", closing.url), ("resetting", resetting.url))
        }
        cases = [
            (
                closing,
                "closing",
                "peer closed connection without sending complete message body (received 10 bytes, expected 1000)",
            ),
            (resetting, "resetting", "connection reset by peer"),
        ]
        async with open_client({"clusters": clusters}) as client:
            for upstream, name, what in cases:
                error, _ = await _read_fails(client, f"http://{name}/x", meshlib.UpstreamResetError)
                assert isinstance(error, httpx.NetworkError)
                assert (error.route, error.cluster) == (f"cluster:{name}", name)
                assert (
                    str(error)
                    == f"{what} during try 1 of route 'cluster:{name}', cluster {name!r} (endpoint {upstream.url})"
                )
                assert upstream.connections == 1


async def test_a_connection_whose_body_timed_out_is_not_used_again(open_client: OpenClient) -> None:
    """The stalled connection is closed: the next requests go out on a new one (which is then reused)."""
    with raw_server(first_connection_then(drip, answer_ok_keep_alive)) as upstream:
        config = {
            "clusters": {"up": {"endpoints": [upstream.url], "retry": {"attempts": 1, "per_try_timeout": "200ms"}}}
        }
        async with open_client(config) as client:
            with pytest.raises(meshlib.RequestTimeoutError):
                await client.get("http://up/x")
            assert [(await client.get("http://up/x")).text for _ in range(3)] == ["ok"] * 3
        assert upstream.connections == 2
