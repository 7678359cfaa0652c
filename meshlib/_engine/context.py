"""Per-request mesh state: one CallContext, kept in ``request.extensions["meshlib"]``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from meshlib._snapshot.route import CompiledRoute
    from meshlib._upstream.endpoint import Endpoint

__all__ = ["EXTENSION", "CallContext", "context_of"]

EXTENSION = "meshlib"


@dataclass(slots=True)
class CallContext:
    """What the engine knows about one call: where it came from and where it went.

    ``sender``/``async_sender`` are the front door's innermost transports; the
    endpoint stage sends through whichever matches the stack that runs.
    """

    original: httpx.Request
    route: CompiledRoute
    sender: httpx.BaseTransport | None = None
    async_sender: httpx.AsyncBaseTransport | None = None
    cluster: str | None = None
    endpoint: Endpoint | None = None
    attempt: int = 0


def context_of(request: httpx.Request) -> CallContext:
    """The CallContext the engine attached to ``request``."""
    ctx: CallContext = request.extensions[EXTENSION]
    return ctx
