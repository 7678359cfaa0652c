"""A FastAPI "frontend" that calls its upstreams through meshlib in process.

Run it from the repository root, with the upstreams of mesh.yaml listening (``meshlib demo --serve``):

    uvicorn examples.fastapi_app.app:app --port 8000
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Header, Request

import meshlib
from meshlib.asgi import MeshMiddleware

CONFIG = Path(os.environ.get("MESH_CONFIG", Path(__file__).with_name("mesh.yaml")))


def create_app(mesh: meshlib.Mesh | None = None) -> FastAPI:
    """Build the app; tests pass their own mesh."""
    the_mesh = mesh or meshlib.Mesh.from_file(CONFIG)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One pooled client for the app's lifetime; the mesh routes each request.
        async with the_mesh, the_mesh.async_client(timeout=5.0) as client:
            app.state.http = client
            yield

    app = FastAPI(title="frontend", lifespan=lifespan)
    # The inbound side: mesh.yaml's `inbound:` policy (path normalisation, authorization) before every route.
    app.add_middleware(MeshMiddleware, mesh=the_mesh)

    @app.get("/products/{product_id}")
    async def product(product_id: int, request: Request, x_user: str | None = Header(default=None)) -> dict[str, Any]:
        client: httpx.AsyncClient = request.app.state.http
        headers = {"x-user": x_user} if x_user else {}
        reviews = await client.get(f"http://reviews/api/reviews/{product_id}", headers=headers)
        ratings = await client.get(f"http://ratings/api/ratings/{product_id}")
        return {"product": product_id, "reviews": reviews.json(), "ratings": ratings.json()}

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        # Who called, as the inbound policy established it (docs/security.md, "The app sees the caller").
        identity: meshlib.Identity = request.scope["meshlib.identity"]
        return {"peer": identity.peer_principal, "mtls": identity.mtls, "user": identity.request_principal}

    return app


app = create_app()
