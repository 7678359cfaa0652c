"""The in-process inbound door for WSGI apps: ``MeshMiddleware`` applies the mesh's ``inbound:`` policy.

::

    import meshlib
    from meshlib.wsgi import MeshMiddleware

    mesh = meshlib.Mesh.from_file("mesh.yaml")
    flask_app.wsgi_app = MeshMiddleware(flask_app.wsgi_app, mesh=mesh)

The caller's :class:`meshlib.Identity` is in ``environ["meshlib.identity"]``
(see docs/security.md, "The app sees the caller").
"""

from __future__ import annotations

from meshlib._frontdoors.inbound_door import IDENTITY_KEY
from meshlib._frontdoors.wsgi import MeshMiddleware

__all__ = ["IDENTITY_KEY", "MeshMiddleware"]
