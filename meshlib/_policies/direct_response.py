"""``direct_response``: answer from the mesh itself, without an upstream."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from meshlib._config.models import DirectResponseConfig

__all__ = ["DirectResponsePolicy"]


@dataclass(frozen=True, slots=True)
class DirectResponsePolicy:
    """A fixed status, body and headers; ``content-type`` defaults to text/plain when a body is set."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]

    @classmethod
    def from_config(cls, config: DirectResponseConfig) -> DirectResponsePolicy:
        headers = dict(config.headers)
        if config.body and "content-type" not in headers:
            headers["content-type"] = "text/plain; charset=utf-8"
        return cls(config.status, config.body.encode(), tuple(headers.items()))

    def respond(self, request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            # RFC 9110 §9.3.2: the same headers as GET (content-length included), no body.
            headers = (*self.headers, ("content-length", str(len(self.body))))
            return httpx.Response(self.status, headers=headers, request=request)
        return httpx.Response(self.status, headers=self.headers, content=self.body, request=request)
