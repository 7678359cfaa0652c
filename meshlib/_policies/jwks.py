"""Inbound JWT keys: a JWKS given inline, read from a file (re-read when it changes) or fetched from a URL.

A URL's keys are fetched in a background thread when the snapshot starts,
kept for ``jwks_cache_duration`` and fetched again; a fetch that fails (or
returns no usable key) keeps the last good keys and is retried sooner. Until
the first fetch succeeds a provider has no keys, and a token of its issuer
gets 401 "no keys" (docs/security.md, "JWT").
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx
import jwt

from meshlib.__version__ import __version__

__all__ = ["ALGORITHMS", "FileJwks", "JwksError", "KeySet", "RemoteJwks", "StaticJwks", "parse_jwks"]

logger = logging.getLogger("meshlib.jwt")

# Asymmetric algorithms only, each with the key type (and curve) it needs. HS* is refused: with a JWKS of
# public keys, accepting it lets a token signed with the public key as HMAC secret pass (algorithm confusion).
ALGORITHMS: Final[Mapping[str, tuple[str, str | None]]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
# How soon a failed fetch is retried (then doubled up to the cache duration), and how long a fetch may take.
_RETRY_FIRST: Final = 1.0
_FETCH_TIMEOUT: Final = 5.0
# A file is checked for changes at most this often (seconds), so a request costs no stat().
_FILE_CHECK_INTERVAL: Final = 1.0


class JwksError(ValueError):
    """A JWKS that holds no usable key, or is not JSON."""


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: Any  # a cryptography public key

    def fits(self, alg: str) -> bool:
        kty, crv = ALGORITHMS[alg]
        if self.kty != kty or (self.alg is not None and self.alg != alg):
            return False
        return crv is None or self.crv == crv


@dataclass(frozen=True, slots=True)
class KeySet:
    """The usable public keys of one JWKS; ``generation`` changes whenever the keys do."""

    keys: tuple[_Key, ...]
    generation: int

    def candidates(self, kid: str | None, alg: str) -> tuple[list[_Key], bool]:
        """Keys that may have signed a token with this ``kid`` and ``alg``, and whether any had the kid."""
        named = [k for k in self.keys if kid is None or k.kid == kid]
        return [k for k in named if k.fits(alg)], bool(named)


_generations = iter(range(1, 1 << 62))
_generation_lock = threading.Lock()


def _next_generation() -> int:
    with _generation_lock:
        return next(_generations)


def parse_jwks(text: str | bytes) -> KeySet:
    """A JWKS document → its usable keys; keys of other types or uses are skipped. Raises :class:`JwksError`."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise JwksError(f"not a JSON document: {exc}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksError('not a JWKS: expected {"keys": [...]}')
    keys: list[_Key] = []
    problems: list[str] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"keys[{i}] is not an object")
            continue
        kty = entry.get("kty")
        if kty not in ("RSA", "EC", "OKP") or entry.get("use", "sig") != "sig":
            continue  # symmetric ("oct") or encryption keys never verify a signature here
        alg = entry.get("alg")
        if alg is not None and alg not in ALGORITHMS:
            continue
        try:
            key = jwt.PyJWK(entry).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
            problems.append(f"keys[{i}]: {exc}")
            continue
        keys.append(_Key(entry.get("kid"), kty, entry.get("crv"), alg, key))
    if not keys:
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise JwksError(f"no usable signing key (RSA, EC or OKP){detail}")
    return KeySet(tuple(keys), _next_generation())


class StaticJwks:
    """Keys given inline (``jwks:``)."""

    def __init__(self, text: str) -> None:
        self._keys = parse_jwks(text)

    def current(self) -> KeySet | None:
        return self._keys


class FileJwks:
    """Keys read from ``jwks_file``, re-read when its modification time or size changes.

    A file that becomes unreadable or invalid keeps the last good keys (logged once per change).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        stat = os.stat(path)
        with open(path, "rb") as f:
            self._keys = parse_jwks(f.read())
        self._signature = (stat.st_mtime_ns, stat.st_size)
        self._next_check = time.monotonic() + _FILE_CHECK_INTERVAL
        self._lock = threading.Lock()

    def current(self) -> KeySet | None:
        now = time.monotonic()
        if now >= self._next_check and self._lock.acquire(blocking=False):
            try:
                self._next_check = now + _FILE_CHECK_INTERVAL
                self._reload()
            finally:
                self._lock.release()
        return self._keys

    def _reload(self) -> None:
        try:
            stat = os.stat(self.path)
            signature = (stat.st_mtime_ns, stat.st_size)
            if signature == self._signature:
                return
            self._signature = signature
            with open(self.path, "rb") as f:
                self._keys = parse_jwks(f.read())
            logger.info("JWKS file %s re-read", self.path)
        except (OSError, JwksError) as exc:
            logger.warning("JWKS file %s: %s; the last good keys stay in use", self.path, exc)


class RemoteJwks:
    """Keys fetched from ``jwks_uri`` in a background thread: every ``cache_duration`` seconds, sooner after a failure.

    Built inert (a reload that fails must start nothing); :meth:`start` starts
    the thread, :meth:`close` stops it. :meth:`refresh` fetches once in the
    caller's thread.
    """

    def __init__(self, uri: str, cache_duration: float) -> None:
        self.uri = uri
        self.cache_duration = cache_duration
        self._keys: KeySet | None = None
        self._content = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.fetches = 0
        self.failures = 0
        # trust_env=False: the keys come straight from the issuer, never through a proxy from the environment.
        self._client = httpx.Client(
            timeout=_FETCH_TIMEOUT,
            trust_env=False,
            follow_redirects=True,
            headers={"user-agent": f"meshlib-jwks/{__version__}", "accept": "application/json"},
        )

    def current(self) -> KeySet | None:
        return self._keys

    def start(self) -> None:
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="meshlib-jwks", daemon=True)
            self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the first fetch succeeded; whether it did."""
        return self._ready.wait(timeout)

    def refresh(self) -> bool:
        """Fetch the keys once; on failure keep the last good ones. Whether it succeeded."""
        self.fetches += 1
        try:
            response = self._client.get(self.uri)
            response.raise_for_status()
            keys = parse_jwks(response.content)
        except (httpx.HTTPError, JwksError) as exc:
            self.failures += 1
            kept = "the last good keys stay in use" if self._keys is not None else "no keys yet"
            logger.warning("fetching JWKS %s failed: %s; %s", self.uri, exc, kept)
            return False
        if response.content != self._content:  # the same document keeps its generation, and the token cache
            self._keys = keys
            self._content = response.content
        self._ready.set()
        return True

    def _run(self) -> None:
        retry = _RETRY_FIRST
        try:
            while not self._stop.is_set():
                if self.refresh():
                    retry = _RETRY_FIRST
                    delay = self.cache_duration
                else:
                    delay = min(retry, self.cache_duration)
                    retry *= 2
                if self._stop.wait(delay):
                    return
        finally:
            self._client.close()

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is None:
            self._client.close()
        elif thread is not threading.current_thread():
            thread.join(_FETCH_TIMEOUT + 1)
