"""compose() and compose_async(): the first filter sees the request first, one instance serves many chains."""

from __future__ import annotations

from typing import ClassVar

import httpx
import pytest

from meshlib._engine.base import AsyncHandler, Request, Response, SyncHandler, compose, compose_async


class Tag:
    """Appends its tag to ``x-path`` on the way in and to ``x-back`` on the way out."""

    name: ClassVar[str] = "tag"

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def handle(self, request: Request, call_next: SyncHandler) -> Response:
        request.headers["x-path"] = request.headers.get("x-path", "") + self.tag
        response = call_next(request)
        response.headers["x-back"] = response.headers.get("x-back", "") + self.tag
        return response

    async def handle_async(self, request: Request, call_next: AsyncHandler) -> Response:
        request.headers["x-path"] = request.headers.get("x-path", "") + self.tag
        response = await call_next(request)
        response.headers["x-back"] = response.headers.get("x-back", "") + self.tag
        return response


def _terminal(request: Request) -> Response:
    return httpx.Response(200, headers={"x-seen": request.headers["x-path"]})


async def _terminal_async(request: Request) -> Response:
    return _terminal(request)


def test_compose_runs_filters_outermost_first() -> None:
    response = compose([Tag("a"), Tag("b"), Tag("c")], _terminal)(httpx.Request("GET", "http://x/"))
    assert response.headers["x-seen"] == "abc"
    assert response.headers["x-back"] == "cba"


@pytest.mark.anyio
async def test_compose_async_runs_filters_outermost_first() -> None:
    response = await compose_async([Tag("a"), Tag("b"), Tag("c")], _terminal_async)(httpx.Request("GET", "http://x/"))
    assert response.headers["x-seen"] == "abc"
    assert response.headers["x-back"] == "cba"


def test_compose_of_no_filters_is_the_terminal_itself() -> None:
    assert compose([], _terminal) is _terminal
    assert compose_async([], _terminal_async) is _terminal_async


@pytest.mark.anyio
async def test_one_filter_instance_serves_several_sync_and_async_chains() -> None:
    shared = Tag("s")
    first = compose([shared, Tag("1")], _terminal)
    second = compose([Tag("2"), shared], _terminal)
    third = compose_async([shared], _terminal_async)
    assert first(httpx.Request("GET", "http://x/")).headers["x-seen"] == "s1"
    assert second(httpx.Request("GET", "http://x/")).headers["x-seen"] == "2s"
    assert (await third(httpx.Request("GET", "http://x/"))).headers["x-seen"] == "s"
