"""SSL contexts from validated material: a client's (``simple``/``mutual``, to upstreams) and a server's (inbound).

Both speak TLS 1.2 or 1.3 only and verify the peer's chain. A client checks
the upstream's host name against ``server_name`` (else the endpoint's host)
unless ``expected_identities`` is set: then the SPIFFE ID is what names the
peer, and the host name is not checked, as Envoy does when a cluster's
``match_typed_subject_alt_names`` is set (Istio's ``ISTIO_MUTUAL`` checks
the service account's SPIFFE ID, never the host).
"""

from __future__ import annotations

import ssl

from meshlib._tls.material import Material

__all__ = ["client_context", "server_context"]


def _load_chain(context: ssl.SSLContext, material: Material) -> None:
    files = material.files
    if files.cert_file is not None and files.key_file is not None:
        # From the paths: ssl has no in-memory load. CertificateSource compares the bytes before and after.
        context.load_cert_chain(files.cert_file, files.key_file)


def client_context(material: Material, *, check_hostname: bool) -> ssl.SSLContext:
    """A context for connections to upstreams: trusts ``ca_file`` (else the system's CAs), presents ``cert_file``."""
    _, _, ca = material.data
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca.decode("latin-1") if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    _load_chain(context, material)
    return context


def server_context(material: Material, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """A context for a listener: presents ``cert_file``, and verifies clients' certificates against ``ca_file``.

    ``require_client_cert``: a client without a certificate fails the
    handshake (``CERT_REQUIRED``); otherwise one is asked for and verified
    when sent (``CERT_OPTIONAL``).
    """
    _, _, ca = material.data
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=ca.decode("latin-1") if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    _load_chain(context, material)
    return context
