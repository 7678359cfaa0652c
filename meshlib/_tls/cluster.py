"""Compiled TLS: a cluster's ``tls`` and the inbound ``mtls`` as live, reloading material; their errors and stats.

Each is a registry component (``tls`` per cluster, ``inbound_tls``), so it is
kept across config reloads while its config is unchanged and rebuilt, with
its files read afresh, when it changes. Files that cannot be used fail the
compile with a :class:`meshlib.ConfigError` naming every bad field at once
(``clusters.reviews.tls.key_file: the key does not match cert_file ...``),
as ``meshlib validate`` reports them (:func:`tls_file_problems`).
"""

from __future__ import annotations

import datetime as dt
import functools
import ssl
from collections.abc import Iterator
from typing import Any

from meshlib._config.base import format_loc
from meshlib._config.models import MeshConfig
from meshlib._config.security import ClusterTlsConfig, InboundMtlsConfig
from meshlib._errors import ConfigError
from meshlib._tls.contexts import client_context, server_context
from meshlib._tls.identity import IdentityCheck
from meshlib._tls.material import CertificateSource, MaterialError, Purpose, TlsFiles, read_material
from meshlib._upstream.cluster import ClusterState
from meshlib._upstream.registry import StateRegistry

__all__ = ["ClusterTls", "ServerCredentials", "certificate_stats", "compile_tls", "tls_file_problems"]


def _files(config: ClusterTlsConfig | InboundMtlsConfig) -> TlsFiles:
    return TlsFiles(config.cert_file, config.key_file, config.ca_file)


class ClusterTls:
    """How connections to one cluster are secured: the SSL context in force, SNI, and the SPIFFE check.

    ``current()`` is ``(version, ssl_context)``; the version changes when
    rotated files were taken, and transports built for an older one are
    replaced (``senders.py``). ``verify_peer`` (None without
    ``expected_identities``) is called with each new connection's SSL object
    before a request is written on it.
    """

    def __init__(self, name: str, config: ClusterTlsConfig, state: ClusterState | None = None) -> None:
        self.name = name
        self.config = config
        self.where = format_loc(("clusters", name, "tls"))
        self.server_name = config.server_name
        self.verify_peer = IdentityCheck.of(config.expected_identities) if config.expected_identities else None
        check_hostname = not config.expected_identities

        def counted(accepted: bool) -> None:
            if state is not None:
                state.count("certificate_reloads" if accepted else "certificate_reloads_refused")

        self._source = CertificateSource(
            _files(config),
            "client",
            lambda material: client_context(material, check_hostname=check_hostname),
            where=self.where,
            on_reload=counted,
        )
        self.closed = False

    def current(self) -> tuple[int, ssl.SSLContext]:
        """The SSL context for new connections, and its version (checks the files at most once a second)."""
        return self._source.get()

    @property
    def source(self) -> CertificateSource[ssl.SSLContext]:
        return self._source

    def close(self) -> None:
        # Dropped by a reload: front doors retire the transports built for it (senders.py).
        self.closed = True


class ServerCredentials:
    """The inbound listener's TLS material (``inbound.mtls``): ``context()`` is the SSL context in force.

    The context presents ``cert_file`` and requires a client certificate that
    chains to ``ca_file``; rotated files apply to connections accepted after
    the change (``context()`` checks the files at most once a second).
    """

    def __init__(self, config: InboundMtlsConfig, *, require_client_cert: bool = True) -> None:
        self.config = config
        self.where = format_loc(("inbound", "mtls"))
        self._source = CertificateSource(
            _files(config),
            "server",
            lambda material: server_context(material, require_client_cert=require_client_cert),
            where=self.where,
        )

    def context(self) -> ssl.SSLContext:
        return self._source.get()[1]

    @property
    def source(self) -> CertificateSource[ssl.SSLContext]:
        return self._source


def _config_errors(where: tuple[str, ...], exc: MaterialError) -> list[tuple[str, str]]:
    return [(format_loc((*where, name)), message) for name, message in exc.errors]


def _tls_configs(config: MeshConfig) -> Iterator[tuple[tuple[str, ...], ClusterTlsConfig | InboundMtlsConfig, Purpose]]:
    """Every TLS config that names files or needs a context: clusters' ``tls`` and ``inbound.mtls``."""
    for name, cluster in config.clusters.items():
        if cluster.tls is not None and cluster.tls.mode != "disable":
            yield ("clusters", name, "tls"), cluster.tls, "client"
    mtls = config.inbound.mtls if config.inbound is not None else None
    if mtls is not None and mtls.mode != "disable":
        yield ("inbound", "mtls"), mtls, "server"


def compile_tls(config: MeshConfig, registry: StateRegistry) -> tuple[dict[str, ClusterTls], ServerCredentials | None]:
    """The live TLS of ``config``'s clusters and inbound side, loading the files of what is new or changed.

    Raises one ConfigError naming every file that cannot be used.
    """
    errors: list[tuple[str, str]] = []
    clusters: dict[str, ClusterTls] = {}
    inbound: ServerCredentials | None = None
    for where, tls, _ in _tls_configs(config):
        try:
            if isinstance(tls, ClusterTlsConfig):
                name = where[1]
                make = functools.partial(ClusterTls, name, tls, registry.cluster(name))
                clusters[name] = registry.component("tls", name, tls, make)
            else:
                inbound = registry.component("inbound_tls", "inbound", tls, functools.partial(ServerCredentials, tls))
        except MaterialError as exc:
            errors += _config_errors(where, exc)
    if errors:
        raise ConfigError(errors)
    return clusters, inbound


def tls_file_problems(config: MeshConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(errors, warnings)`` about the files ``config`` names, as ``(field_path, message)``; nothing is kept.

    Errors are what :func:`compile_tls` would refuse; warnings, certificates
    outside or near the end of their validity.
    """
    errors: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    now = dt.datetime.now(dt.UTC)
    for where, tls, purpose in _tls_configs(config):
        try:
            material = read_material(_files(tls), purpose)
            if purpose == "client":
                client_context(material, check_hostname=False)
            else:
                server_context(material)
        except MaterialError as exc:
            errors += _config_errors(where, exc)
        except ssl.SSLError as exc:
            from meshlib._engine.errors import openssl_words

            errors.append((format_loc((*where, "cert_file")), f"OpenSSL cannot load it: {openssl_words(exc)}"))
        else:
            warnings += [(format_loc((*where, name)), message) for name, _, message in material.problems(now)]
    return errors, warnings


def certificate_stats(sources: list[CertificateSource[Any]]) -> dict[str, Any]:
    """``{field_path: {file, subject, spiffe_id, serial, not_before, not_after, expires_in_seconds}}``."""
    now = dt.datetime.now(dt.UTC)
    out: dict[str, Any] = {}
    for source in sources:
        for name, infos in source.material.certificates.items():
            for i, info in enumerate(infos):
                key = f"{source.where}.{name}" + (f"[{i}]" if len(infos) > 1 else "")
                out[key] = info.as_dict(now)
    return out
