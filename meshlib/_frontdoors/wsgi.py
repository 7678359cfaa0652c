"""WSGI front door: an environ → the inbound engine's view → a denial, or the app with the identity."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from meshlib._engine.inbound_context import BAD_REQUEST, Denial, InboundRequest, PeerCertificate
from meshlib._frontdoors.inbound_door import IDENTITY_KEY, certificate_from_pem, denial_headers, resolve_peer
from meshlib._observe.exchange import Exchange
from meshlib._observe.hooks import content_length, error_code, inbound_exchange, inbound_finished
from meshlib._observe.observers import Observers
from meshlib._policies.xfcc import XFCC_HEADER

if TYPE_CHECKING:
    from meshlib._mesh import Mesh

__all__ = ["MeshMiddleware", "StartResponse", "WSGIApp", "WSGIEnvironment"]

WSGIEnvironment = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]

_XFCC_KEY: Final = "HTTP_" + XFCC_HEADER.upper().replace("-", "_")
_PATH_SAFE: Final = "/!$&'()*+,;=:@-._~"


def _key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def _tls_certificate(environ: WSGIEnvironment) -> PeerCertificate | None:
    """The client certificate the server verified: ``SSL_CLIENT_CERT`` (mod_wsgi, Werkzeug's dev server)."""
    pem = environ.get("SSL_CLIENT_CERT")
    if not pem or environ.get("SSL_CLIENT_VERIFY", "SUCCESS") != "SUCCESS":
        return None
    return certificate_from_pem(pem)


def _raw_path(environ: WSGIEnvironment) -> str:
    """The path as received: ``RAW_URI``/``REQUEST_URI`` (gunicorn, Werkzeug), else PATH_INFO re-encoded."""
    uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if uri:
        if not uri.startswith("/") and "://" in uri:  # absolute-form (RFC 9112 §3.2.2)
            rest = uri.partition("://")[2]
            uri = "/" + rest.partition("/")[2] if "/" in rest else "/"
        path: str = uri.partition("?")[0]
        return path
    # PATH_INFO is already decoded, as latin-1 characters for its bytes (PEP 3333).
    full = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return quote(full.encode("latin-1"), safe=_PATH_SAFE)


_END: Final = object()
_NO_CONTEXT: Final = contextvars.Context()  # stands in until observers make one (never run when they don't)


class _ObservedResponse:
    """The app's response iterable, counted; the request ends when it is all sent, closed (PEP 3333), or fails.

    The app, each step of its body and the observers run in ``context``, a
    copy of the server thread's made for this request: what an observer makes
    current there (tracing's server span, the parent of the app's own mesh
    calls) never stays behind in the thread, even when a server skips close().
    """

    def __init__(
        self,
        app: WSGIApp,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        exchange: Exchange,
        observers: Observers,
        context: contextvars.Context,
    ) -> None:
        self._exchange = exchange
        self._observers = observers
        self._context = context
        self._status: int | None = None
        self._sent = 0
        self._done = False

        def observed_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            code = status.partition(" ")[0]
            self._status = int(code) if code.isdigit() else None
            return (
                start_response(status, headers, exc_info) if exc_info is not None else start_response(status, headers)
            )

        try:
            self._body = context.run(app, environ, observed_start_response)
        except BaseException as exc:
            self._finish(exc)
            raise

    def _finish(self, exc: BaseException | None = None) -> None:
        if self._done:
            return
        self._done = True
        error = None if exc is None else error_code(exc)
        status = self._status if exc is None or self._status is not None else 500
        self._context.run(inbound_finished, self._exchange, self._observers, status, error, self._sent)

    def __iter__(self) -> Iterator[bytes]:
        run = self._context.run
        try:
            chunks = run(iter, self._body)
            while (chunk := run(next, chunks, _END)) is not _END:
                assert isinstance(chunk, bytes)
                self._sent += len(chunk)
                yield chunk
        except BaseException as exc:
            self._finish(exc)
            raise
        # All sent: done now, as some servers (werkzeug's, when the client reset the connection) skip close().
        self._finish()

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                self._context.run(close)
        finally:
            self._finish()


class MeshMiddleware:
    """Applies the mesh's ``inbound:`` policy to every request, before the WSGI app.

    Pure WSGI, so it wraps any WSGI app (Flask, Django, Falcon)::

        from meshlib.wsgi import MeshMiddleware

        app.wsgi_app = MeshMiddleware(app.wsgi_app, mesh=mesh)   # Flask

    Each request's path is normalised (the app sees it in ``PATH_INFO``), the
    peer taken from ``SSL_CLIENT_CERT`` or, from a trusted proxy,
    ``x-forwarded-client-cert``, its JWT verified and the authorization
    policies applied. A refused request gets 400, 401 or 403
    (``x-meshlib-error``: ``bad_request``, ``unauthenticated``, ``forbidden``)
    and never reaches the app; an accepted one reaches it with a
    :class:`meshlib.Identity` in ``environ["meshlib.identity"]``.
    """

    def __init__(self, app: WSGIApp, *, mesh: Mesh) -> None:
        self.app = app
        self.mesh = mesh

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        snapshot = self.mesh.snapshot
        stack = snapshot.inbound
        observers = snapshot.observers
        headers: dict[str, str] = {}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                headers[key[5:].replace("_", "-").lower()] = value
        if "CONTENT_TYPE" in environ:
            headers["content-type"] = environ["CONTENT_TYPE"]
        address = environ.get("REMOTE_ADDR") or None
        peer, strip_xfcc = resolve_peer(stack, address, _tls_certificate(environ), headers.get(XFCC_HEADER))
        raw = _raw_path(environ)
        port = environ.get("SERVER_PORT")
        exchange = None
        context = _NO_CONTEXT
        if observers is not None:
            query = environ.get("QUERY_STRING", "")
            exchange = inbound_exchange(
                "wsgi",
                environ.get("REQUEST_METHOD", "GET"),
                environ.get("wsgi.url_scheme", "http"),
                headers.get("host") or f"{environ.get('SERVER_NAME', '')}:{port or ''}",
                raw + (f"?{query}" if query else ""),
                [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
                peer.principal,
            )
            exchange.protocol = environ.get("SERVER_PROTOCOL")
            exchange.bytes_received = content_length(environ.get("CONTENT_LENGTH"))
            context = contextvars.copy_context()
            context.run(observers.started, exchange)
        result = stack.check(
            InboundRequest(
                environ.get("REQUEST_METHOD", "GET"),
                raw,
                environ.get("QUERY_STRING", ""),
                headers,
                headers.get("host"),
                int(port) if port and port.isdigit() else None,
                peer,
            )
        )
        if result.denial is not None:
            if observers is not None and exchange is not None:
                exchange.denied_by = result.denial.policy
                denial = result.denial
                context.run(inbound_finished, exchange, observers, denial.status, denial.code, len(denial.body))
            return self._deny(start_response, result.denial)
        if result.path_changed:
            script = environ.get("SCRIPT_NAME", "")
            full = result.decoded_path.encode("utf-8").decode("latin-1")
            if not full.startswith(script):
                # The normalised path left the app's mount (/mount/../x): it is no path of this app.
                denial = Denial(400, BAD_REQUEST, "invalid path: outside the application's SCRIPT_NAME")
                if observers is not None and exchange is not None:
                    context.run(inbound_finished, exchange, observers, denial.status, denial.code, len(denial.body))
                return self._deny(start_response, denial)
            environ["PATH_INFO"] = full[len(script) :]
            query = environ.get("QUERY_STRING")
            for key in ("RAW_URI", "REQUEST_URI"):
                if key in environ:
                    environ[key] = result.path + (f"?{query}" if query else "")
        if strip_xfcc:
            environ.pop(_XFCC_KEY, None)
        for name in result.remove_headers or ():
            environ.pop(_key(name), None)
        for name, value in result.set_headers or ():
            environ[_key(name)] = value
        environ[IDENTITY_KEY] = result.identity
        if observers is None or exchange is None:
            return self.app(environ, start_response)
        return _ObservedResponse(self.app, environ, start_response, exchange, observers, context)

    @staticmethod
    def _deny(start_response: StartResponse, denial: Denial) -> list[bytes]:
        start_response(f"{denial.status} {HTTPStatus(denial.status).phrase}", denial_headers(denial))
        return [denial.body]
