"""Retries through the whole engine, sync and async, with respx under the mesh and a fake clock for the backoff."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import respx
import tenacity

import meshlib
from meshlib._config.resilience import RetryConfig
from meshlib._errors import RequestTimeoutError, UpstreamConnectError, UpstreamResetError
from meshlib._policies.retry import RetryPolicy
from meshlib.testing import FakeClock, MeshFactory, assert_counters, stats_of
from tests.conftest import Caller

pytestmark = pytest.mark.anyio

A, B = "http://127.0.0.1:9081", "http://127.0.0.1:9082"
URL = "http://reviews/x"


def mesh_config(retry: dict[str, Any] | None, *, endpoints: tuple[str, ...] = (A,), **cluster: Any) -> dict[str, Any]:
    """One cluster ``reviews`` (reachable as host ``reviews``) with this retry policy."""
    return {"clusters": {"reviews": {"endpoints": list(endpoints), "retry": retry, **cluster}}}


def in_flight(mesh: meshlib.Mesh) -> int:
    return sum(e["in_flight"] for e in mesh.stats()["clusters"]["reviews"]["endpoints"].values())


async def test_503_503_200_caller_sees_200_after_two_retries(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, mesh_clock: FakeClock, caller: Caller
) -> None:
    upstream = respx_mock.get(f"{A}/x").mock(
        side_effect=[httpx.Response(503), httpx.Response(503), httpx.Response(200)]
    )
    mesh = mesh_factory(mesh_config({"attempts": 3, "retry_on": ["5xx"]}))
    async with caller(mesh) as client:
        response = await client.get(URL)
    assert response.status_code == 200
    assert upstream.call_count == 3
    assert len(mesh_clock.sleeps) == 2  # two backoffs, on the fake clock: no real waiting
    assert_counters(mesh, "reviews", retries=2, retried_requests=1, retry_budget_exhausted=0)
    assert in_flight(mesh) == 0  # the two 503s were closed before retrying


async def test_tries_exhausted_on_5xx_return_the_last_response(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    answers = [httpx.Response(503, text=f"answer {i}") for i in (1, 2, 3)]
    upstream = respx_mock.get(f"{A}/x").mock(side_effect=answers)
    mesh = mesh_factory(mesh_config({"attempts": 3, "retry_on": ["5xx"]}))
    async with caller(mesh) as client:
        response = await client.get(URL)
    assert (response.status_code, response.text) == (503, "answer 3")
    assert upstream.call_count == 3
    assert_counters(mesh, "reviews", retries=2, retried_requests=1)
    assert in_flight(mesh) == 0


async def test_tries_exhausted_on_errors_raise_the_last_error(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    errors = [httpx.ConnectError(f"refused {i}") for i in (1, 2, 3)]
    upstream = respx_mock.get(f"{A}/x").mock(side_effect=errors)
    mesh = mesh_factory(mesh_config({"attempts": 3, "retry_on": ["connect-failure"]}))
    async with caller(mesh) as client:
        with pytest.raises(UpstreamConnectError, match="refused 3") as raised:
            await client.get(URL)
    assert isinstance(raised.value, httpx.ConnectError)
    assert raised.value.__cause__ is errors[2]
    assert upstream.call_count == 3
    assert_counters(mesh, "reviews", retries=2, retried_requests=1)


# (id, failure, retry_on that retries it, retry_on that does not, error raised when not retried; None: a response)
Failure = Callable[[], httpx.Response | Exception]
CONDITIONS: list[tuple[str, Failure, list[str], list[str], type[Exception] | None]] = [
    (
        "connect-failure",
        lambda: httpx.ConnectError("refused"),
        ["connect-failure"],
        ["reset", "5xx", "per-try-timeout"],
        UpstreamConnectError,
    ),
    (
        "reset-read-error",
        lambda: httpx.ReadError("connection reset by peer"),
        ["reset"],
        ["connect-failure", "5xx", "per-try-timeout"],
        UpstreamResetError,
    ),
    (
        "reset-remote-protocol-error",
        lambda: httpx.RemoteProtocolError("server disconnected without sending a response"),
        ["reset"],
        ["connect-failure", "5xx", "per-try-timeout"],
        UpstreamResetError,
    ),
    ("5xx-500", lambda: httpx.Response(500), ["5xx"], ["connect-failure", "reset", "gateway-error"], None),
    ("5xx-503", lambda: httpx.Response(503), ["5xx"], ["connect-failure", "reset", "per-try-timeout"], None),
    ("gateway-error-502", lambda: httpx.Response(502), ["gateway-error"], ["connect-failure", "reset"], None),
    ("gateway-error-503", lambda: httpx.Response(503), ["gateway-error"], ["connect-failure", "reset"], None),
    ("gateway-error-504", lambda: httpx.Response(504), ["gateway-error"], ["connect-failure", "reset"], None),
    ("retriable-status-codes-409", lambda: httpx.Response(409), ["retriable-status-codes"], ["5xx"], None),
    (
        "per-try-timeout",
        lambda: httpx.ReadTimeout("timed out"),
        ["per-try-timeout"],
        ["connect-failure", "reset", "5xx"],
        RequestTimeoutError,
    ),
]
CONDITION_IDS = [c[0] for c in CONDITIONS]


def _retry(retry_on: list[str]) -> dict[str, Any]:
    retry: dict[str, Any] = {"attempts": 2, "retry_on": retry_on}
    if "retriable-status-codes" in retry_on:
        retry["retriable_status_codes"] = [409]
    return retry


@pytest.mark.parametrize(("name", "failure", "retried_on", "not_retried_on", "raises"), CONDITIONS, ids=CONDITION_IDS)
async def test_each_retry_on_condition_retries_its_failure(
    respx_mock: respx.MockRouter,
    mesh_factory: MeshFactory,
    caller: Caller,
    name: str,
    failure: Failure,
    retried_on: list[str],
    not_retried_on: list[str],
    raises: type[Exception] | None,
) -> None:
    upstream = respx_mock.get(f"{A}/x").mock(side_effect=[failure(), httpx.Response(200)])
    mesh = mesh_factory(mesh_config(_retry(retried_on)))
    async with caller(mesh) as client:
        assert (await client.get(URL)).status_code == 200
    assert upstream.call_count == 2
    assert_counters(mesh, "reviews", retries=1, retried_requests=1)


@pytest.mark.parametrize(("name", "failure", "retried_on", "not_retried_on", "raises"), CONDITIONS, ids=CONDITION_IDS)
async def test_a_failure_no_listed_condition_covers_is_not_retried(
    respx_mock: respx.MockRouter,
    mesh_factory: MeshFactory,
    caller: Caller,
    name: str,
    failure: Failure,
    retried_on: list[str],
    not_retried_on: list[str],
    raises: type[Exception] | None,
) -> None:
    first = failure()
    upstream = respx_mock.get(f"{A}/x").mock(side_effect=[first, httpx.Response(200)])
    mesh = mesh_factory(mesh_config(_retry(not_retried_on)))
    async with caller(mesh) as client:
        if raises is None:
            assert isinstance(first, httpx.Response)
            assert (await client.get(URL)).status_code == first.status_code
        else:
            with pytest.raises(raises) as raised:
                await client.get(URL)
            if isinstance(raised.value, RequestTimeoutError):
                assert raised.value.per_try is True  # no request timeout configured: only the try ran out
    assert upstream.call_count == 1
    assert stats_of(mesh, "reviews").get("retries", 0) == 0


async def test_the_issue_example_retries_409_listed_in_retriable_status_codes(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    """``retry_on: [connect-failure, reset, 5xx]`` with ``retriable_status_codes: [409]``: listing a code is enough."""
    upstream = respx_mock.get(f"{A}/x").mock(side_effect=[httpx.Response(409), httpx.Response(200)])
    retry = {"attempts": 3, "retry_on": ["connect-failure", "reset", "5xx"], "retriable_status_codes": [409]}
    mesh = mesh_factory(mesh_config(retry))
    async with caller(mesh) as client:
        assert (await client.get(URL)).status_code == 200
    assert upstream.call_count == 2


ALL_CONDITIONS = ["connect-failure", "reset", "5xx", "per-try-timeout"]


@pytest.mark.parametrize(
    ("failure", "outcome"),
    [
        (lambda: httpx.Response(503), 503),
        (lambda: httpx.ReadError("reset"), UpstreamResetError),
        (lambda: httpx.ReadTimeout("timed out"), RequestTimeoutError),
    ],
    ids=["503", "reset", "per-try-timeout"],
)
async def test_post_is_not_retried_once_it_may_have_reached_the_upstream(
    respx_mock: respx.MockRouter,
    mesh_factory: MeshFactory,
    caller: Caller,
    failure: Failure,
    outcome: int | type[Exception],
) -> None:
    upstream = respx_mock.post(f"{A}/x").mock(side_effect=[failure(), httpx.Response(200)])
    mesh = mesh_factory(mesh_config({"attempts": 3, "retry_on": ALL_CONDITIONS}))
    async with caller(mesh) as client:
        if isinstance(outcome, int):
            assert (await client.request("POST", URL, content=b"order")).status_code == outcome
        else:
            with pytest.raises(outcome):
                await client.request("POST", URL, content=b"order")
    assert upstream.call_count == 1


async def test_post_is_retried_on_connect_failure_which_never_reached_the_upstream(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    upstream = respx_mock.post(f"{A}/x").mock(side_effect=[httpx.ConnectError("refused"), httpx.Response(201)])
    mesh = mesh_factory(mesh_config({"attempts": 2, "retry_on": ["connect-failure"]}))
    async with caller(mesh) as client:
        assert (await client.request("POST", URL, content=b"order")).status_code == 201
    assert upstream.call_count == 2
    assert [call.request.content for call in upstream.calls] == [b"order", b"order"]


async def test_post_listed_in_retry_methods_is_retried_on_any_condition(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    upstream = respx_mock.post(f"{A}/x").mock(side_effect=[httpx.Response(503), httpx.Response(201)])
    mesh = mesh_factory(mesh_config({"attempts": 2, "retry_on": ["5xx"], "methods": ["post"]}))
    async with caller(mesh) as client:
        assert (await client.request("POST", URL, content=b"order")).status_code == 201
    assert upstream.call_count == 2


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
async def test_idempotent_methods_are_retried(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller, method: str
) -> None:
    upstream = respx_mock.route(method=method, url=f"{A}/x").mock(
        side_effect=[httpx.Response(503), httpx.Response(200)]
    )
    mesh = mesh_factory(mesh_config({"attempts": 2, "retry_on": ["5xx"]}))
    async with caller(mesh) as client:
        assert (await client.request(method, URL)).status_code == 200
    assert upstream.call_count == 2


async def test_a_retry_goes_to_the_other_endpoint(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    """With two tries only, every request succeeds although one of the two endpoints refuses every connection."""
    refusing = respx_mock.get(f"{A}/x").mock(side_effect=httpx.ConnectError("refused"))
    working = respx_mock.get(f"{B}/x").mock(return_value=httpx.Response(200))
    mesh = mesh_factory(mesh_config({"attempts": 2, "retry_on": ["connect-failure"]}, endpoints=(A, B)))
    async with caller(mesh) as client:
        statuses = [(await client.get(URL)).status_code for _ in range(6)]
    assert statuses == [200] * 6
    assert working.call_count == 6
    assert refusing.call_count >= 3  # round robin starts half of the requests on the refusing endpoint
    assert_counters(mesh, "reviews", retries=refusing.call_count)


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    ("status", "retry_after", "backoff_max", "expected"),
    [
        (503, "1", "2s", 1.0),
        (503, "1", "250ms", 0.25),  # honoured only up to backoff.max
        (503, "0", "250ms", 0.0),
        (429, "1", "2s", 1.0),
        (503, _http_date(3600), "250ms", 0.25),  # made at collection: an hour, so a long run keeps it ahead
    ],
    ids=["503-1s", "503-capped", "503-0s", "429-1s", "503-http-date-capped"],
)
async def test_retry_after_is_honoured_up_to_backoff_max(
    respx_mock: respx.MockRouter,
    mesh_factory: MeshFactory,
    mesh_clock: FakeClock,
    caller: Caller,
    status: int,
    retry_after: str,
    backoff_max: str,
    expected: float,
) -> None:
    respx_mock.get(f"{A}/x").mock(
        side_effect=[httpx.Response(status, headers={"Retry-After": retry_after}), httpx.Response(200)]
    )
    retry = {
        "attempts": 2,
        "retry_on": ["5xx"],
        "retriable_status_codes": [429],
        "backoff": {"base": "10ms", "max": backoff_max},
    }
    mesh = mesh_factory(mesh_config(retry))
    async with caller(mesh) as client:
        assert (await client.get(URL)).status_code == 200
    assert mesh_clock.sleeps == [expected]


@pytest.mark.parametrize("retry_after", ["1", "soon"])
async def test_retry_after_elsewhere_or_unreadable_falls_back_to_the_backoff(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, mesh_clock: FakeClock, caller: Caller, retry_after: str
) -> None:
    """Retry-After counts on 429 and 503 only, and only when readable; otherwise the jittered backoff applies."""
    status = 500 if retry_after == "1" else 503
    respx_mock.get(f"{A}/x").mock(
        side_effect=[httpx.Response(status, headers={"Retry-After": retry_after}), httpx.Response(200)]
    )
    mesh = mesh_factory(mesh_config({"attempts": 2, "retry_on": ["5xx"], "backoff": {"base": "10ms", "max": "2s"}}))
    async with caller(mesh) as client:
        assert (await client.get(URL)).status_code == 200
    [slept] = mesh_clock.sleeps
    assert 0 <= slept <= 0.01


async def test_backoff_is_exponential_with_full_jitter(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, mesh_clock: FakeClock, caller: Caller
) -> None:
    """Retry n (from 0) sleeps a random time in [0, min(max, base × 2ⁿ)]."""
    respx_mock.get(f"{A}/x").mock(return_value=httpx.Response(503))
    retry = {"attempts": 6, "retry_on": ["5xx"], "backoff": {"base": "10ms", "max": "50ms"}, "budget": None}
    mesh = mesh_factory(mesh_config(retry))
    requests = 20
    async with caller(mesh) as client:
        for _ in range(requests):
            assert (await client.get(URL)).status_code == 503
    sleeps = mesh_clock.sleeps
    assert len(sleeps) == requests * 5
    per_retry = [sleeps[n::5] for n in range(5)]
    for n, drawn in enumerate(per_retry):
        assert all(0 <= s <= min(0.05, 0.01 * 2**n) for s in drawn), (n, drawn)
    # Jitter: the draws differ; growth: later retries use their wider window (P(fail) < 1e-7 with 20 draws).
    assert len(set(sleeps)) > requests
    assert max(per_retry[4]) > 0.02
    assert_counters(mesh, "reviews", retries=requests * 5, retried_requests=requests)


def test_backoff_jitter_draws_from_the_given_rng() -> None:
    """The mesh's seeded rng makes the jitter reproducible (tenacity alone draws from the random module)."""
    config = RetryConfig.model_validate({"attempts": 5, "backoff": {"base": "10ms", "max": "1s"}})

    def draws(seed: int) -> list[float]:
        policy = RetryPolicy.from_config(config, random.Random(seed))
        state = tenacity.RetryCallState(policy.template, fn=None, args=(), kwargs={})
        out = []
        for n in range(1, 5):
            state.attempt_number = n
            out.append(policy.template.wait(state))
        return out

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)
    assert all(0 <= s <= 0.01 * 2**n for n, s in enumerate(draws(3)))


def _stream_of(mode: str, chunks: list[bytes]) -> Iterator[bytes] | AsyncIterator[bytes]:
    if mode == "sync":
        return iter(chunks)

    async def agen() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return agen()


@pytest.mark.parametrize(
    ("method", "failure"),
    [("PUT", lambda: httpx.Response(503)), ("POST", lambda: httpx.ConnectError("refused"))],
    ids=["put-503", "post-connect-failure"],
)
async def test_a_streaming_request_body_is_sent_once_and_never_retried(
    respx_mock: respx.MockRouter,
    mesh_factory: MeshFactory,
    caller: Caller,
    mode: str,
    method: str,
    failure: Failure,
) -> None:
    first = failure()
    upstream = respx_mock.route(method=method, url=f"{A}/x").mock(side_effect=[first, httpx.Response(200)])
    mesh = mesh_factory(mesh_config({"attempts": 3, "retry_on": ["connect-failure", "5xx"]}))
    async with caller(mesh) as client:
        body = _stream_of(mode, [b"chunk-1,", b"chunk-2"])
        if isinstance(first, httpx.Response):
            assert (await client.request(method, URL, content=body)).status_code == 503
            assert upstream.calls.last.request.content == b"chunk-1,chunk-2"
        else:
            with pytest.raises(UpstreamConnectError):
                await client.request(method, URL, content=body)
    assert upstream.call_count == 1
    assert stats_of(mesh, "reviews").get("retries", 0) == 0


@pytest.mark.parametrize(("size", "calls"), [(16, 2), (17, 1)], ids=["within-limit", "over-limit"])
async def test_a_buffered_body_is_replayed_identically_within_buffer_limit_bytes(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller, size: int, calls: int
) -> None:
    upstream = respx_mock.put(f"{A}/x").mock(side_effect=[httpx.Response(503), httpx.Response(200)])
    mesh = mesh_factory(mesh_config({"attempts": 2, "retry_on": ["5xx"], "buffer_limit_bytes": 16}))
    body = bytes(range(65, 65 + size))
    async with caller(mesh) as client:
        response = await client.request("PUT", URL, content=body)
    assert response.status_code == (200 if calls == 2 else 503)
    assert upstream.call_count == calls
    for call in upstream.calls:
        assert call.request.content == body
        assert call.request.headers["content-length"] == str(size)


async def test_a_routes_retry_replaces_the_clusters(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, caller: Caller
) -> None:
    once = respx_mock.get(f"{A}/once").mock(side_effect=[httpx.Response(503), httpx.Response(200)])
    twice = respx_mock.get(f"{A}/x").mock(side_effect=[httpx.Response(503), httpx.Response(200)])
    config = mesh_config({"attempts": 3, "retry_on": ["5xx"]})
    config["routes"] = [
        # The route's retry is used whole: its retry_on does not include 5xx.
        {"match": {"host": "reviews", "path": "/once"}, "cluster": "reviews", "retry": {"retry_on": ["reset"]}},
        {"match": {"host": "reviews"}, "cluster": "reviews"},
    ]
    mesh = mesh_factory(config)
    async with caller(mesh) as client:
        assert (await client.get("http://reviews/once")).status_code == 503
        assert (await client.get(URL)).status_code == 200
    assert (once.call_count, twice.call_count) == (1, 2)


async def test_a_request_that_needs_no_retry_counts_nothing(
    respx_mock: respx.MockRouter, mesh_factory: MeshFactory, mesh_clock: FakeClock, caller: Caller
) -> None:
    respx_mock.get(f"{A}/x").mock(return_value=httpx.Response(200))
    mesh = mesh_factory(mesh_config({"attempts": 3, "retry_on": ["5xx"]}))
    async with caller(mesh) as client:
        for _ in range(5):
            assert (await client.get(URL)).status_code == 200
    assert stats_of(mesh, "reviews") == {}
    assert mesh_clock.sleeps == []


# The before_retry hook


async def test_before_retry_hears_each_retry_with_its_cause_and_backoff(
    respx_mock: respx.MockRouter, mesh_clock: FakeClock, caller: Caller
) -> None:
    refused = httpx.ConnectError("refused")
    respx_mock.get(f"{A}/x").mock(side_effect=[httpx.Response(503), refused, httpx.Response(200)])
    events: list[meshlib.RetryEvent] = []
    config = mesh_config({"attempts": 3, "retry_on": ["5xx", "connect-failure"]})
    with meshlib.Mesh.from_dict(config, clock=mesh_clock, before_retry=events.append) as mesh:
        async with caller(mesh) as client:
            response = await client.get(URL)
    assert response.status_code == 200
    assert [(e.cluster, e.route, e.attempt, e.status) for e in events] == [
        ("reviews", "cluster:reviews", 1, 503),
        ("reviews", "cluster:reviews", 2, None),
    ]
    assert events[0].error is None
    assert isinstance(events[1].error, UpstreamConnectError)
    assert events[1].error.__cause__ is refused
    assert [e.sleep for e in events] == mesh_clock.sleeps  # told before each backoff, with its length
    assert all(e.request.url == URL for e in events)


async def test_before_retry_is_not_called_without_a_retry(
    respx_mock: respx.MockRouter, mesh_clock: FakeClock, caller: Caller
) -> None:
    respx_mock.get(f"{A}/x").mock(side_effect=[httpx.Response(200), httpx.Response(503), httpx.Response(404)])
    events: list[meshlib.RetryEvent] = []
    # No budget reserve and no requests before: the budget refuses the 503's retry.
    retry = {"attempts": 3, "retry_on": ["5xx"], "budget": {"ratio": 0, "min_retries_per_second": 0}}
    with meshlib.Mesh.from_dict(mesh_config(retry), clock=mesh_clock, before_retry=events.append) as mesh:
        async with caller(mesh) as client:
            assert [(await client.get(URL)).status_code for _ in range(3)] == [200, 503, 404]
    assert events == []


async def test_a_before_retry_hook_that_raises_does_not_fail_the_request(
    respx_mock: respx.MockRouter, mesh_clock: FakeClock, caller: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    respx_mock.get(f"{A}/x").mock(side_effect=[httpx.Response(503), httpx.Response(200)])

    def broken(event: meshlib.RetryEvent) -> None:
        raise RuntimeError("hook bug")

    config = mesh_config({"attempts": 2, "retry_on": ["5xx"]})
    with meshlib.Mesh.from_dict(config, clock=mesh_clock, before_retry=broken) as mesh:
        async with caller(mesh) as client:
            assert (await client.get(URL)).status_code == 200
    [record] = [r for r in caplog.records if r.name == "meshlib.hooks"]
    assert record.exc_info is not None
    assert "before_retry" in record.getMessage()
