"""The "ratings" service of the bookinfo example: a Flask app that answers with each product's ratings.

It calls no other service, so its mesh is only its inbound side. Run it from the repository root:

    flask --app examples.ratings_app.app run --port 9090
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import meshlib
from meshlib.wsgi import MeshMiddleware

CONFIG = Path(os.environ.get("MESH_CONFIG", Path(__file__).with_name("mesh.yaml")))
REVIEWERS = ("Reviewer1", "Reviewer2")


def ratings_of(product_id: int) -> dict[str, int]:
    """Each reviewer's stars (1 to 5) for a product: made up, but the same for a product every time."""
    return {name: 1 + (product_id * (3 + 2 * i) + i) % 5 for i, name in enumerate(REVIEWERS)}


def create_app(mesh: meshlib.Mesh | None = None) -> Flask:
    """Build the app; the bookinfo runner and the tests pass their own mesh."""
    the_mesh = mesh or meshlib.Mesh.from_file(CONFIG)
    app = Flask("ratings")
    # The mesh's metrics in Prometheus's text format at /metrics (404 while mesh.yaml turns them off), and the
    # inbound side: mesh.yaml's `inbound:` policy, a server span and the inbound metrics, before every view.
    metrics = DispatcherMiddleware(app.wsgi_app, {"/metrics": the_mesh.metrics_wsgi_app()})
    app.wsgi_app = MeshMiddleware(metrics, mesh=the_mesh)  # type: ignore[method-assign]

    @app.get("/ratings/<int:product_id>")
    def ratings(product_id: int) -> dict[str, Any]:
        return {"service": "ratings", "product": product_id, "ratings": ratings_of(product_id)}

    return app


app = create_app()
