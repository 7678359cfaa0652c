"""A filter with nothing to do once the response is back returns the next handler's awaitable itself (base.Filter).

Its caller then awaits the next layer directly: one coroutine fewer per
request, and one layer fewer for every suspension to pass through. The
filters that do work on the way back stay coroutines and still do it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import httpx
import pytest

from meshlib._config.models import RouteHeadersConfig
from meshlib._engine.base import EXTENSION, Request, Response, context_of
from meshlib._engine.context import CallContext
from meshlib._policies.headers import HeadersFilter
from meshlib._policies.timeout import DeadlineFilter
from meshlib.testing import FakeClock
from tests.conftest import MakeMesh

pytestmark = pytest.mark.anyio


async def _answer(request: Request) -> Response:
    return httpx.Response(200, headers={"x-seen": request.headers.get("x-a", "")})


class _Next:
    """A next handler that remembers the awaitable it returned."""

    def __init__(self) -> None:
        self.returned: Coroutine[Any, Any, Response] | None = None

    def __call__(self, request: Request) -> Coroutine[Any, Any, Response]:
        self.returned = _answer(request)
        return self.returned


def _request(make_mesh: MakeMesh, clock: FakeClock) -> Request:
    mesh = make_mesh({"clusters": {"reviews": {"endpoints": ["http://10.0.0.1:80"]}}}, clock=clock)
    request = httpx.Request("GET", "http://reviews/x")
    request.extensions[EXTENSION] = CallContext(original=request, route=mesh.snapshot.routes.routes[0], clock=clock)
    return request


def _headers(config: dict[str, Any]) -> HeadersFilter:
    built = HeadersFilter.from_config(RouteHeadersConfig.model_validate(config))
    assert built is not None
    return built


async def test_the_deadline_sets_the_request_up_and_hands_on_the_next_awaitable(make_mesh: MakeMesh) -> None:
    clock = FakeClock()
    request = _request(make_mesh, clock)
    following = _Next()
    handed = DeadlineFilter(2.0, clock).handle_async(request, following)
    assert handed is following.returned
    assert context_of(request).deadline == clock.monotonic() + 2.0
    assert (await handed).status_code == 200


async def test_request_only_header_edits_hand_on_the_next_awaitable(make_mesh: MakeMesh) -> None:
    request = _request(make_mesh, FakeClock())
    following = _Next()
    handed = _headers({"request": {"set": {"x-a": "1"}}}).handle_async(request, following)
    assert handed is following.returned
    assert (await handed).headers["x-seen"] == "1"


async def test_response_header_edits_stay_a_coroutine_of_their_own_and_apply(make_mesh: MakeMesh) -> None:
    request = _request(make_mesh, FakeClock())
    following = _Next()
    pending = _headers({"request": {"set": {"x-a": "1"}}, "response": {"set": {"x-b": "2"}}}).handle_async(
        request, following
    )
    assert pending is not following.returned
    response = await pending
    assert (response.headers["x-seen"], response.headers["x-b"]) == ("1", "2")
