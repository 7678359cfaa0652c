"""ASGI front door: an HTTP or WebSocket scope → the inbound engine's view → a denial, or the app with the identity."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from meshlib._engine.inbound_context import Denial, InboundRequest, PeerCertificate
from meshlib._frontdoors.inbound_door import IDENTITY_KEY, certificate_from_pem, denial_headers, resolve_peer
from meshlib._observe.exchange import Exchange
from meshlib._observe.hooks import error_code, inbound_exchange, inbound_finished
from meshlib._observe.observers import Observers
from meshlib._policies.xfcc import XFCC_HEADER

if TYPE_CHECKING:
    from meshlib._mesh import Mesh

__all__ = ["ASGIApp", "MeshMiddleware", "Receive", "Scope", "Send", "serve_lifespan"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loose on purpose: apps annotate their scope as dict, MutableMapping or Starlette's Scope alike.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

_XFCC = XFCC_HEADER.encode()
# quote()'s safe set for a path the server gave only decoded: every pchar and '/' (RFC 3986 §3.3).
_PATH_SAFE = "/!$&'()*+,;=:@-._~"


async def serve_lifespan(receive: Receive, send: Send) -> None:
    """Answer a lifespan scope for an app with nothing to start or stop (the mesh's own small apps, run alone)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _merged(raw_headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Headers with repeated names joined by ``", "``, as Istio's authorization sees them."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw_headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _tls_certificate(scope: Scope) -> PeerCertificate | None:
    """The client certificate the server verified (the ASGI TLS extension; hypercorn has it, uvicorn not)."""
    extensions = scope.get("extensions")
    tls = extensions.get("tls") if extensions else None
    if not tls or tls.get("client_cert_error") is not None:
        return None
    chain = tls.get("client_cert_chain")
    return certificate_from_pem(chain[0]) if chain else None


async def _observed_app(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, exchange: Exchange, observers: Observers
) -> None:
    """Run the app, noting its status and body bytes; the request ends when the app returns (or raises)."""
    status: int | None = None
    sent = 0
    exchange.bytes_received = 0  # counted as the app reads it: a chunked upload has no Content-Length

    async def observed_receive() -> Message:
        message = await receive()
        if message["type"] == "http.request":
            exchange.bytes_received += len(message.get("body", b""))
        return message

    async def observed_send(message: Message) -> None:
        nonlocal status, sent
        kind = message["type"]
        if kind == "http.response.start":
            status = message["status"]
        elif kind == "http.response.body":
            sent += len(message.get("body", b""))
        await send(message)

    try:
        await app(scope, observed_receive, observed_send)
    except BaseException as exc:
        # What the server answers for an app that raised before its response: 500.
        inbound_finished(exchange, observers, status or 500, error_code(exc), sent)
        raise
    inbound_finished(exchange, observers, status, None, sent)


class MeshMiddleware:
    """Applies the mesh's ``inbound:`` policy to every HTTP and WebSocket request, before the app.

    Pure ASGI, so it wraps any ASGI app (FastAPI, Starlette, Quart, Django's ASGI handler)::

        from meshlib.asgi import MeshMiddleware

        app = MeshMiddleware(app, mesh=mesh)                 # any ASGI app
        fastapi_app.add_middleware(MeshMiddleware, mesh=mesh)  # or as Starlette middleware

    Each request's path is normalised (the app sees the normalised path in
    ``scope["path"]`` and ``scope["raw_path"]``), the peer is taken from the
    server's TLS extension or, from a trusted proxy, ``x-forwarded-client-cert``,
    its JWT verified and the authorization policies applied. A refused request
    gets 400, 401 or 403 (``x-meshlib-error``: ``bad_request``,
    ``unauthenticated``, ``forbidden``) and never reaches the app; an accepted
    one reaches it with a :class:`meshlib.Identity` in ``scope["meshlib.identity"]``.
    The policy is read from ``mesh.snapshot`` per request, so a reload applies
    at once. Lifespan and other scopes pass through untouched.
    """

    def __init__(self, app: ASGIApp, *, mesh: Mesh) -> None:
        self.app = app
        self.mesh = mesh

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        snapshot = self.mesh.snapshot
        stack = snapshot.inbound
        observers = snapshot.observers if kind == "http" else None
        raw_headers = scope["headers"]
        # ASGI header names are lower-case already (the spec requires it of servers).
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers}
        if len(headers) != len(raw_headers):
            headers = _merged(raw_headers)
        client = scope.get("client")
        address = client[0] if client else None
        peer, strip_xfcc = resolve_peer(stack, address, _tls_certificate(scope), headers.get(XFCC_HEADER))
        raw_path = scope.get("raw_path")
        # Some servers leave the query in raw_path; without raw_path, the decoded path is encoded again.
        raw = raw_path.decode("latin-1").partition("?")[0] if raw_path else quote(scope["path"], safe=_PATH_SAFE)
        server = scope.get("server")
        exchange = None
        if observers is not None:
            authority = headers.get("host") or (f"{server[0]}:{server[1]}" if server else "")
            query = scope.get("query_string", b"")
            exchange = inbound_exchange(
                "asgi",
                scope.get("method", "GET"),
                scope.get("scheme", "http"),
                authority,
                raw + ("?" + query.decode("latin-1") if query else ""),
                list(raw_headers),
                peer.principal,
            )
            exchange.protocol = "HTTP/" + scope.get("http_version", "1.1")
            observers.started(exchange)
        result = stack.check(
            InboundRequest(
                scope.get("method", "GET"),
                raw,
                scope.get("query_string", b"").decode("latin-1"),
                headers,
                headers.get("host"),
                server[1] if server else None,
                peer,
            )
        )
        if result.denial is not None:
            if observers is None or exchange is None:
                await self._deny(scope, send, result.denial)
                return
            exchange.denied_by = result.denial.policy
            try:
                await self._deny(scope, send, result.denial)
            finally:
                inbound_finished(exchange, observers, result.denial.status, result.denial.code, len(result.denial.body))
            return
        scope = dict(scope)
        if result.path_changed:
            root = scope.get("root_path")
            # A server that puts root_path in front of path (uvicorn's --root-path) keeps it there.
            prefix = root if root and raw_path and scope["path"].startswith(root) and not raw.startswith(root) else ""
            scope["path"] = prefix + result.decoded_path
            scope["raw_path"] = result.path.encode("ascii")
        removed, added = result.remove_headers, result.set_headers
        if strip_xfcc or removed or added:
            drop = {name.encode("latin-1") for name in removed or ()}
            drop.update(name.encode("latin-1") for name, _ in added or ())
            if strip_xfcc:
                drop.add(_XFCC)
            edited = [(k, v) for k, v in raw_headers if k.lower() not in drop]
            edited.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in added or ())
            scope["headers"] = edited
        scope[IDENTITY_KEY] = result.identity
        if observers is None or exchange is None:
            await self.app(scope, receive, send)
        else:
            await _observed_app(self.app, scope, receive, send, exchange, observers)

    async def _deny(self, scope: Scope, send: Send, denial: Denial) -> None:
        head = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in denial_headers(denial)]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": denial.status, "headers": head})
            await send({"type": "http.response.body", "body": denial.body})
        elif "websocket.http.response" in scope.get("extensions", {}):
            # The WebSocket denial response extension: the client gets the same HTTP answer.
            await send({"type": "websocket.http.response.start", "status": denial.status, "headers": head})
            await send({"type": "websocket.http.response.body", "body": denial.body})
        else:
            # Closing before accepting: the server answers the handshake with 403 (ASGI spec, websocket.close).
            await send({"type": "websocket.close", "code": 1008, "reason": denial.code})
