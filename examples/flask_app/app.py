"""A Flask "storefront" that calls its upstreams through meshlib in process.

Run it from the repository root, with the upstreams of mesh.yaml listening (``meshlib demo --serve``):

    flask --app examples.flask_app.app run --port 8001
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Any

from flask import Flask

import meshlib

CONFIG = Path(os.environ.get("MESH_CONFIG", Path(__file__).with_name("mesh.yaml")))


def create_app(mesh: meshlib.Mesh | None = None) -> Flask:
    """Build the app; tests pass their own mesh."""
    the_mesh = mesh or meshlib.Mesh.from_file(CONFIG)
    # httpx.Client is thread-safe: one pooled client serves every Flask worker thread.
    client = the_mesh.client(timeout=5.0)
    atexit.register(client.close)
    app = Flask("storefront")

    @app.get("/products/<int:product_id>")
    def product(product_id: int) -> dict[str, Any]:
        reviews = client.get(f"http://reviews/api/reviews/{product_id}")
        ratings = client.get(f"http://ratings/api/ratings/{product_id}")
        return {"product": product_id, "reviews": reviews.json(), "ratings": ratings.json()}

    return app


app = create_app()
