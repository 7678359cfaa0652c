"""The in-process inbound door for ASGI apps: ``MeshMiddleware`` applies the mesh's ``inbound:`` policy.

::

    import meshlib
    from meshlib.asgi import MeshMiddleware

    mesh = meshlib.Mesh.from_file("mesh.yaml")
    app = MeshMiddleware(app, mesh=mesh)

The caller's :class:`meshlib.Identity` is in ``scope["meshlib.identity"]``
(see docs/security.md, "The app sees the caller").
"""

from __future__ import annotations

from meshlib._frontdoors.asgi import MeshMiddleware
from meshlib._frontdoors.inbound_door import IDENTITY_KEY

__all__ = ["IDENTITY_KEY", "MeshMiddleware"]
