"""Front doors: convert a caller's traffic to the engine's view and back, nothing else.

No front door imports ``meshlib._sidecar``: the sidecar's listener and process
import the sidecar front door (``sidecar_listeners``, and the names both sides
share in ``sidecar_requests``), never the other way round.
"""
