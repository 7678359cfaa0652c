"""``OnCloseStream.take_whole``: a body that is all here handed over at once, counted, or None to iterate it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from meshlib._engine.streams import OnCloseStream

pytestmark = pytest.mark.anyio


class Whole(httpx.AsyncByteStream):
    """An inner body that says whether it can be taken whole (as the upstream client's does)."""

    def __init__(self, chunks: list[bytes] | None) -> None:
        self.chunks = chunks
        self.closed = False

    def take_whole(self) -> list[bytes] | None:
        return self.chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks or [b"iterated"]:
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


def wrapped(inner: httpx.SyncByteStream | httpx.AsyncByteStream) -> tuple[OnCloseStream, list[str]]:
    calls: list[str] = []
    return OnCloseStream(inner, lambda: calls.append("closed")), calls


async def test_an_inner_body_that_is_all_here_is_taken_and_counted() -> None:
    body, calls = wrapped(Whole([b"ab", b"", b"cde"]))
    assert body.take_whole() == [b"ab", b"", b"cde"]
    assert body.received == 5  # what observers count as the body's bytes
    assert calls == []  # taking is not closing: the caller still closes it
    await body.aclose()
    assert calls == ["closed"]


async def test_a_body_in_memory_is_taken_whole() -> None:
    body, _ = wrapped(httpx.ByteStream(b"in memory"))
    assert body.take_whole() == [b"in memory"]
    assert body.received == 9


@pytest.mark.parametrize(
    "inner",
    [
        pytest.param(Whole(None), id="inner-says-not-yet"),
        pytest.param(httpx.AsyncByteStream(), id="inner-cannot-say"),
    ],
)
async def test_otherwise_nothing_is_taken_and_the_body_is_iterated(inner: httpx.AsyncByteStream) -> None:
    body, _ = wrapped(inner)
    assert body.take_whole() is None
    assert body.received == 0


async def test_a_closed_body_is_not_taken() -> None:
    inner = Whole([b"late"])
    body, calls = wrapped(inner)
    await body.aclose()
    assert body.take_whole() is None
    assert body.received == 0
    assert calls == ["closed"]
