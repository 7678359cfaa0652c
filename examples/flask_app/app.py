"""A Flask "storefront" that calls its upstreams through meshlib in process.

Run it from the repository root, with the upstreams of mesh.yaml listening (``meshlib demo --serve``):

    flask --app examples.flask_app.app run --port 8001
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Any

from flask import Flask, request

import meshlib
from meshlib.wsgi import MeshMiddleware

CONFIG = Path(os.environ.get("MESH_CONFIG", Path(__file__).with_name("mesh.yaml")))


def create_app(mesh: meshlib.Mesh | None = None) -> Flask:
    """Build the app; tests pass their own mesh."""
    the_mesh = mesh or meshlib.Mesh.from_file(CONFIG)
    # httpx.Client is thread-safe: one pooled client serves every Flask worker thread.
    client = the_mesh.client(timeout=5.0)
    atexit.register(client.close)
    app = Flask("storefront")
    # The inbound side: mesh.yaml's `inbound:` policy (path normalisation, authorization) before every view.
    app.wsgi_app = MeshMiddleware(app.wsgi_app, mesh=the_mesh)  # type: ignore[method-assign]

    @app.get("/products/<int:product_id>")
    def product(product_id: int) -> dict[str, Any]:
        reviews = client.get(f"http://reviews/api/reviews/{product_id}")
        ratings = client.get(f"http://ratings/api/ratings/{product_id}")
        return {"product": product_id, "reviews": reviews.json(), "ratings": ratings.json()}

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        # Who called, as the inbound policy established it (docs/security.md, "The app sees the caller").
        identity: meshlib.Identity = request.environ["meshlib.identity"]
        return {"peer": identity.peer_principal, "mtls": identity.mtls, "user": identity.request_principal}

    return app


app = create_app()
