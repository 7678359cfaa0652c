"""The hand-written baseline for the sidecar benchmark: a uvicorn ASGI app forwarding to upstreams with httpx.

This is the proxy a team would write by hand in an afternoon: one shared
``httpx.AsyncClient``, round robin over the upstreams, up to 3 attempts on a
connect failure or a 5xx, hop-by-hop headers dropped, and the upstream's
answer streamed back. It has no routing: every request goes to the upstreams.

Run ``python benchmarks/baseline_proxy.py --port N --upstream http://127.0.0.1:A --upstream http://127.0.0.1:B``;
it serves one uvicorn worker on 127.0.0.1 (uvloop and httptools, as uvicorn
picks when they are installed) and logs nothing per request.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import httpx

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ATTEMPTS = 3
# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded (and Host is the upstream's own).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    while message.get("more_body"):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def _send_simple(send: Send, status: int, text: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(text)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})


def make_app(upstreams: Sequence[str], *, attempts: int = ATTEMPTS) -> ASGIApp:
    """An ASGI app forwarding every HTTP request to ``upstreams`` in turn, with one shared AsyncClient."""
    if not upstreams:
        raise ValueError("give at least one upstream URL")
    bases = itertools.cycle([u.rstrip("/") for u in upstreams])
    state: dict[str, httpx.AsyncClient] = {}

    def client() -> httpx.AsyncClient:
        # Created on first use, inside the server's event loop; the pool is as large as the load needs.
        if "client" not in state:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
            state["client"] = httpx.AsyncClient(timeout=15.0, limits=limits, trust_env=False)
        return state["client"]

    async def forward(scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP]
        target = scope.get("raw_path") or scope["path"].encode()
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        response: httpx.Response | None = None
        for attempt in range(1, attempts + 1):
            request = client().build_request(
                scope["method"], next(bases) + target.decode("latin-1"), headers=headers, content=body
            )
            try:
                response = await client().send(request, stream=True)
            except httpx.ConnectError:
                if attempt == attempts:
                    await _send_simple(send, 502, b"upstream connect error")
                    return
                continue
            if response.status_code < 500 or attempt == attempts:
                break
            await response.aclose()
        assert response is not None
        try:
            out = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await forward(scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if "client" in state:
                        await state.pop("client").aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Serve :func:`make_app` with uvicorn on ``127.0.0.1:--port``."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True, help="the port to listen on, on 127.0.0.1")
    parser.add_argument("--upstream", action="append", required=True, help="an upstream URL (repeatable)")
    args = parser.parse_args(argv)
    uvicorn.run(
        make_app(args.upstream),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
