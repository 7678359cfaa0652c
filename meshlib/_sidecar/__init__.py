"""The sidecar process: listeners, the upstream client, admin, reload and drain.

``server`` is the HTTP/1.1 listener (its wire format in ``http1``, CONNECT and
upgrades in ``tunnel``, TLS accepts in ``tls_accept``); ``process`` wires the
listeners to the sidecar front door's handlers (``meshlib._frontdoors``). Imports
between the two packages go one way: ``_sidecar`` → ``_frontdoors``.
"""
