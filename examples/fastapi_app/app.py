"""The "frontend" service of the bookinfo example: a FastAPI app that calls ``reviews`` through meshlib.

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
from fastapi.responses import JSONResponse

import meshlib
from meshlib.asgi import MeshMiddleware

CONFIG = Path(os.environ.get("MESH_CONFIG", Path(__file__).with_name("mesh.yaml")))
# Behind a sidecar the mesh cannot see which request a call belongs to: the app passes these on (as Istio's
# bookinfo does). In process, the mesh's tracing joins the call to the request itself.
TRACE_HEADERS = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled")


def create_app(mesh: meshlib.Mesh | None = None, *, sidecar: str | None = None) -> FastAPI:
    """Build the app; the bookinfo runner and the tests pass their own mesh.

    ``sidecar``: the URL of a ``meshlib proxy`` to send through instead of the mesh in process.
    """
    the_mesh = mesh or meshlib.Mesh.from_file(CONFIG)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One pooled client for the app's lifetime; the mesh routes each request. The one line that differs
        # between the two modes:
        client = (
            the_mesh.async_client(mode="sidecar", sidecar=sidecar, timeout=5.0)
            if sidecar
            else the_mesh.async_client(timeout=5.0)
        )
        async with the_mesh, client:
            app.state.http = client
            yield

    app = FastAPI(title="frontend", lifespan=lifespan)
    # The inbound side: mesh.yaml's `inbound:` policy, a server span and the inbound metrics, before every route.
    app.add_middleware(MeshMiddleware, mesh=the_mesh)
    # The mesh's metrics in Prometheus's text format, where Prometheus scrapes (404 while mesh.yaml turns them off).
    app.mount("/metrics", the_mesh.metrics_asgi_app())

    @app.get("/products/{product_id}", response_model=None)
    async def product(
        product_id: int, request: Request, x_user: str | None = Header(default=None)
    ) -> dict[str, Any] | JSONResponse:
        client: httpx.AsyncClient = request.app.state.http
        headers = {"x-user": x_user} if x_user else {}
        if sidecar:
            headers.update((name, value) for name in TRACE_HEADERS if (value := request.headers.get(name)))
        try:
            # 90% to reviews v1, 10% to v2 (testers: always v2); a failed try is retried, a failing version
            # is cut off by its breaker (mesh.yaml).
            reviews = await client.get(f"http://reviews/reviews/{product_id}", headers=headers)
            reviews.raise_for_status()
            body = reviews.json()
        except (httpx.HTTPError, ValueError) as exc:  # a mesh error is an httpx.HTTPError too
            return JSONResponse({"product": product_id, "error": f"reviews unavailable: {exc}"}, status_code=503)
        return {"product": product_id, "reviews": body}

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        # Who called, as the inbound policy established it (docs/security.md, "The app sees the caller").
        identity: meshlib.Identity = request.scope["meshlib.identity"]
        return {"peer": identity.peer_principal, "mtls": identity.mtls, "user": identity.request_principal}

    return app


# `uvicorn examples.fastapi_app.app:app`: MESHLIB_SIDECAR=http://HOST:PORT to send through a sidecar.
app = create_app(sidecar=os.environ.get("MESHLIB_SIDECAR") or None)
