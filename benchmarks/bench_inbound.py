"""Inbound policy cost: a bare ASGI/WSGI app against the same app behind meshlib's middleware, in one run.

The middleware gets what a request through the sidecar carries: a peer identity
(``x-forwarded-client-cert`` from loopback), a verified JWT (the same token every
time, so the cache serves it after the first request) and three authorization
policies. The apps are called directly in a loop, no server or socket, so the
difference is the middleware's own cost per request. Target: at most 15 µs.

    python benchmarks/bench_inbound.py [--quick] [--requests N] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import meshlib
from meshlib.asgi import MeshMiddleware as AsgiMiddleware
from meshlib.wsgi import MeshMiddleware as WsgiMiddleware
from tests.inbound import tokens

TARGET_US = 15.0
FRONTEND = "spiffe://example.org/ns/default/sa/frontend"
XFCC = f'By=spiffe://example.org/ns/default/sa/reviews;Hash=1f2e3d;Subject="CN=frontend";URI={FRONTEND}'


def config() -> dict[str, Any]:
    """The issue's policy: a JWT provider and three authorization policies."""
    return {
        "service": "reviews",
        "inbound": {
            "jwt": [{"issuer": tokens.ISSUER, "audiences": ["reviews"], "jwks": json.dumps(tokens.default_jwks())}],
            "authorization": [
                {"name": "no-admin", "action": "deny", "rules": [{"to": {"paths": ["/admin/*"]}}]},
                {"name": "no-delete", "action": "deny", "rules": [{"to": {"methods": ["DELETE"]}}]},
                {
                    "name": "frontend-or-admins",
                    "action": "allow",
                    "rules": [
                        {"from": {"principals": [FRONTEND]}, "to": {"methods": ["GET"], "paths": ["/api/*"]}},
                        {
                            "from": {"request_principals": [f"{tokens.ISSUER}/*"]},
                            "when": [{"key": "request.auth.claims[role]", "values": ["admin"]}],
                        },
                    ],
                },
            ],
        },
    }


async def bare_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def bare_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("content-length", "2")])
    return [b"ok"]


def asgi_scope(token: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/reviews/1",
        "raw_path": b"/api/reviews/1",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"reviews:9080"),
            (b"user-agent", b"bench"),
            (b"accept", b"*/*"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"x-forwarded-client-cert", XFCC.encode()),
            (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ],
        "client": ("127.0.0.1", 51000),
        "server": ("127.0.0.1", 9080),
    }


def wsgi_environ(token: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/api/reviews/1",
        "RAW_URI": "/api/reviews/1",
        "QUERY_STRING": "",
        "SERVER_NAME": "reviews",
        "SERVER_PORT": "9080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "reviews:9080",
        "HTTP_USER_AGENT": "bench",
        "HTTP_ACCEPT": "*/*",
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "HTTP_X_FORWARDED_CLIENT_CERT": XFCC,
        "HTTP_TRACEPARENT": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "wsgi.url_scheme": "http",
    }


def time_asgi(app: Any, token: str, n: int) -> float:
    """Seconds per request of ``app``, called directly n times (best of 3 batches)."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message

    async def rounds() -> list[float]:
        out = []
        for _ in range(3):
            scopes = [asgi_scope(token) for _ in range(n)]
            start = time.perf_counter()
            for scope in scopes:
                await app(scope, receive, send)
            out.append((time.perf_counter() - start) / n)
        return out

    return min(asyncio.run(rounds()))


def time_wsgi(app: Any, token: str, n: int) -> float:
    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        assert status.startswith("200"), status

    best = []
    for _ in range(3):
        environs = [wsgi_environ(token) for _ in range(n)]
        start = time.perf_counter()
        for environ in environs:
            for _chunk in app(environ, start_response):
                pass
        best.append((time.perf_counter() - start) / n)
    return min(best)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests per batch")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds of batches")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer requests")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if the middleware adds more than {TARGET_US} µs")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.rounds = 2000, 1
    token = tokens.token(sub="frontend-user", role="admin", lifetime=3600)
    with meshlib.Mesh.from_dict(config()) as mesh:
        gc.collect()
        asgi = AsgiMiddleware(bare_asgi, mesh=mesh)
        wsgi = WsgiMiddleware(bare_wsgi, mesh=mesh)
        best = {"asgi bare": 1.0, "asgi mesh": 1.0, "wsgi bare": 1.0, "wsgi mesh": 1.0}
        # ABBA order, best of each side: a burst of other load hits both alike.
        runs: dict[str, Callable[[], float]] = {
            "asgi bare": functools.partial(time_asgi, bare_asgi, token, args.requests),
            "asgi mesh": functools.partial(time_asgi, asgi, token, args.requests),
            "wsgi bare": functools.partial(time_wsgi, bare_wsgi, token, args.requests),
            "wsgi mesh": functools.partial(time_wsgi, wsgi, token, args.requests),
        }
        order = ["asgi bare", "asgi mesh", "asgi mesh", "asgi bare", "wsgi bare", "wsgi mesh", "wsgi mesh", "wsgi bare"]
        for _ in range(args.rounds):
            for key in order:
                best[key] = min(best[key], runs[key]())
        rows = [
            ("ASGI", best["asgi bare"], best["asgi mesh"]),
            ("WSGI", best["wsgi bare"], best["wsgi mesh"]),
        ]
    print(f"inbound middleware: peer identity (XFCC from loopback), cached JWT, 3 policies; {args.requests} requests")
    print(f"{'door':<6}{'bare app µs':>14}{'with middleware µs':>21}{'added µs':>11}{'ratio':>8}{'target':>10}")
    worst = 0.0
    for door, bare, wrapped in rows:
        added = (wrapped - bare) * 1e6
        worst = max(worst, added)
        verdict = "ok" if added <= TARGET_US else "OVER"
        print(f"{door:<6}{bare * 1e6:>14.2f}{wrapped * 1e6:>21.2f}{added:>11.2f}{wrapped / bare:>7.1f}x{verdict:>10}")
    return 1 if args.check and worst > TARGET_US else 0


if __name__ == "__main__":
    raise SystemExit(main())
