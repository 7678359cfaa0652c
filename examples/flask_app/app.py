"""The "reviews" service of the bookinfo example: a Flask app that calls ``ratings`` through meshlib.

Two versions run side by side: the same code, told its version by ``REVIEWS_VERSION`` (v1 by default); v2
also draws the ratings as stars. Run it from the repository root, with the upstreams of mesh.yaml listening
(``meshlib demo --serve``):

    REVIEWS_VERSION=v2 flask --app examples.flask_app.app run --port 8001
"""

from __future__ import annotations

import atexit
import itertools
import os
import threading
from pathlib import Path
from typing import Any

import httpx
from flask import Flask, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import meshlib
from meshlib.wsgi import MeshMiddleware

CONFIG = Path(os.environ.get("MESH_CONFIG", Path(__file__).with_name("mesh.yaml")))
VERSIONS = ("v1", "v2")
REVIEWS = (
    ("Reviewer1", "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"),
    ("Reviewer2", "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays."),
)
# Behind a sidecar the mesh cannot see which request a call belongs to: the app passes these on (as Istio's
# bookinfo does). In process, the mesh's tracing joins the call to the request itself.
TRACE_HEADERS = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled")


def stars(count: int) -> str:
    """``★★★★☆`` for 4 out of 5."""
    count = max(0, min(5, count))
    return "★" * count + "☆" * (5 - count)


def create_app(
    mesh: meshlib.Mesh | None = None,
    *,
    version: str | None = None,
    sidecar: str | None = None,
    fail_every: int = 0,
) -> Flask:
    """Build the app; the bookinfo runner and the tests pass their own mesh.

    ``version``: ``v1`` (the default) or ``v2``. ``sidecar``: the URL of a ``meshlib proxy`` to send through
    instead of the mesh in process. ``fail_every``: answer every Nth request with 503, for the bookinfo demo's
    flaky instance (0: never); the retry of a request it failed is served.
    """
    the_mesh = mesh or meshlib.Mesh.from_file(CONFIG)
    version = version or "v1"
    if version not in VERSIONS:
        raise ValueError(f"reviews version must be one of {VERSIONS}, not {version!r}")
    # The one line that differs between the two modes. httpx.Client is thread-safe: one pooled client
    # serves every Flask worker thread.
    client = the_mesh.client(mode="sidecar", sidecar=sidecar, timeout=5.0) if sidecar else the_mesh.client(timeout=5.0)
    atexit.register(client.close)
    counter = itertools.count(1)
    # The requests whose last answer was the deliberate 503, by trace id (a retry carries its request's): their
    # retry is served, and not counted. Else a retry that happened to come Nth too would fail again, and a
    # request could run out of tries by chance.
    failed: set[str] = set()
    failing = threading.Lock()
    app = Flask("reviews")
    # The mesh's metrics in Prometheus's text format at /metrics (404 while mesh.yaml turns them off), and the
    # inbound side: mesh.yaml's `inbound:` policy, a server span and the inbound metrics, before every view.
    metrics = DispatcherMiddleware(app.wsgi_app, {"/metrics": the_mesh.metrics_wsgi_app()})
    app.wsgi_app = MeshMiddleware(metrics, mesh=the_mesh)  # type: ignore[method-assign]

    @app.get("/reviews/<int:product_id>")
    def reviews(product_id: int) -> tuple[dict[str, Any], int]:
        if fail_every:
            trace_id = request.headers.get("traceparent", "")[3:35] or f"product {product_id}"
            with failing:
                if trace_id in failed:
                    failed.discard(trace_id)
                elif next(counter) % fail_every == 0:
                    failed.add(trace_id)
                    return {"service": "reviews", "version": version, "error": "failing on purpose"}, 503
        headers = {name: value for name in TRACE_HEADERS if (value := request.headers.get(name))} if sidecar else {}
        ratings: dict[str, Any] = {}
        ratings_error = None
        try:
            response = client.get(f"http://ratings/ratings/{product_id}", headers=headers)
            response.raise_for_status()
            found = response.json()
            ratings = (found.get("ratings") or {}) if isinstance(found, dict) else {}
        except (httpx.HTTPError, ValueError) as exc:  # a mesh error is an httpx.HTTPError too
            # The reviews still show without their ratings, as bookinfo's do.
            ratings_error = f"ratings unavailable: {exc}"
        shown = []
        for reviewer, text in REVIEWS:
            review: dict[str, Any] = {"reviewer": reviewer, "text": text}
            rating = ratings.get(reviewer)
            if isinstance(rating, int):
                review["rating"] = rating
                if version == "v2":
                    review["stars"] = stars(rating)
            shown.append(review)
        body: dict[str, Any] = {"service": "reviews", "version": version, "product": product_id, "reviews": shown}
        if ratings_error:
            body["ratings_error"] = ratings_error
        return body, 200

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        # Who called, as the inbound policy established it (docs/security.md, "The app sees the caller").
        identity: meshlib.Identity = request.environ["meshlib.identity"]
        return {"peer": identity.peer_principal, "mtls": identity.mtls, "user": identity.request_principal}

    return app


# `flask --app examples.flask_app.app run`: REVIEWS_VERSION=v2 for v2; MESHLIB_SIDECAR=http://HOST:PORT: via a sidecar.
app = create_app(version=os.environ.get("REVIEWS_VERSION"), sidecar=os.environ.get("MESHLIB_SIDECAR") or None)
