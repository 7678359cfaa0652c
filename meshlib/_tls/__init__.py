"""Workload identity and transport security: certificates (``meshlib ca``), reloadable TLS material, SPIFFE checks.

* ``ca.py`` - ``meshlib ca init`` and ``meshlib ca issue``: a small CA and SPIFFE workload certificates.
* ``material.py`` - certificate, key and CA files, validated, re-read when they change, as SSL contexts.
* ``contexts.py`` - SSL contexts from validated material: a client's (to upstreams) and a server's (inbound).
* ``identity.py`` - the SPIFFE ID of a peer's certificate, and the check of it against ``expected_identities``.
* ``backends.py`` - network backends for httpx's transports that check the peer before a request byte is sent.
* ``senders.py`` - per front door, the transports a TLS cluster's requests go through, swapped on rotation.
* ``cluster.py`` - a cluster's compiled ``tls`` and the mesh's certificate stats.
"""
