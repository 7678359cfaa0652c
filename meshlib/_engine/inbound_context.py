"""Inbound: the engine's view of one request (what a door hands in) and of its verdict (what it gets back)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal, Protocol

from meshlib._policies.identity import Identity, JwtPrincipal, Peer

__all__ = [
    "BAD_REQUEST",
    "FORBIDDEN",
    "UNAUTHENTICATED",
    "Denial",
    "InboundContext",
    "InboundFilter",
    "InboundRequest",
    "InboundResult",
]

DenialCode = Literal["bad_request", "unauthenticated", "forbidden"]
BAD_REQUEST: Final = "bad_request"
UNAUTHENTICATED: Final = "unauthenticated"
FORBIDDEN: Final = "forbidden"


@dataclass(slots=True)
class InboundRequest:
    """One request as a door received it, before any decoding.

    * **method** - as received (case kept: a lower-case method is refused, as Istio does).
    * **raw_path** - the path of the request target, no query, still percent-encoded; raw bytes
      above ASCII as latin-1 characters (``bytes.decode("latin-1")``).
    * **query** - the query string, without ``?`` (JWTs may come from ``from_params``).
    * **headers** - lower-case names; repeated headers joined with ``", "`` (Istio merges them so).
    * **host** - the Host (``:authority``) header as received, or None.
    * **port** - the port the request arrived on (Istio's ``destination.port``).
    * **peer** - the connection: source address, whether it was mTLS, the peer's certificate.
    """

    method: str
    raw_path: str
    query: str
    headers: Mapping[str, str]
    host: str | None = None
    port: int | None = None
    peer: Peer = field(default_factory=Peer)


@dataclass(frozen=True, slots=True)
class Denial:
    """A request refused before the app: the door answers ``status`` with ``headers`` and a one-line body.

    ``code`` goes in ``x-meshlib-error``; ``policy`` names the authorization
    policy that denied it (its ``name`` or ``authorization[i]``), for logs and metrics.
    """

    status: int
    code: DenialCode
    message: str
    headers: tuple[tuple[str, str], ...] = ()
    policy: str | None = None

    @property
    def body(self) -> bytes:
        """``{code}: {message}``, the format of the sidecar's own error answers (meshlib/_wire.py)."""
        return f"{self.code}: {self.message}\n".encode(errors="replace")


@dataclass(slots=True)
class InboundContext:
    """What the inbound filters establish about one request, and the verdict the door carries out.

    ``denial`` set: answer it, the app never sees the request. Otherwise the
    app gets ``identity``, the normalised path (``path`` percent-encoded, what
    authorization matched; ``decoded_path``, what ASGI ``path`` and WSGI
    ``PATH_INFO`` hold) and the header edits: ``remove_headers`` (a verified
    token, a forged payload header) taken out, then ``set_headers`` set.
    """

    request: InboundRequest
    peer: Peer
    path: str = ""
    decoded_path: str = ""
    host: str | None = None
    jwt: JwtPrincipal | None = None
    remove_headers: list[str] | None = None
    set_headers: list[tuple[str, str]] | None = None
    denial: Denial | None = None
    identity: Identity | None = None

    @property
    def path_changed(self) -> bool:
        """Whether normalisation changed the path: the door must hand the app the new one."""
        return self.path != self.request.raw_path

    def remove_header(self, name: str) -> None:
        if self.remove_headers is None:
            self.remove_headers = [name]
        else:
            self.remove_headers.append(name)

    def set_header(self, name: str, value: str) -> None:
        if self.set_headers is None:
            self.set_headers = [(name, value)]
        else:
            self.set_headers.append((name, value))


# What InboundStack.check returns: the context, with denial or identity set.
InboundResult = InboundContext


class InboundFilter(Protocol):
    """One step of the inbound stack: sans-I/O, returns a :class:`Denial` to stop the request or None."""

    name: ClassVar[str]

    def apply(self, ctx: InboundContext) -> Denial | None: ...
