"""mesh_error: httpx errors that reach the sidecar's listener outside the engine (passthrough) still say what."""

from __future__ import annotations

import httpx
import pytest

from meshlib._engine.errors import mesh_error
from meshlib._errors import MeshError, RequestTimeoutError, UpstreamConnectError, UpstreamResetError

REQUEST = httpx.Request("GET", "http://example.com:8080/x")


@pytest.mark.parametrize(
    ("error", "cls", "message"),
    [
        (httpx.ReadError(""), UpstreamResetError, "connection failed while reading the response"),
        (httpx.ConnectTimeout(""), UpstreamConnectError, "connect timed out"),
        (httpx.ReadTimeout(""), RequestTimeoutError, "read timed out"),
        (httpx.ConnectError("[Errno 111] Connection refused"), UpstreamConnectError, "connection refused"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_a_passthrough_error_names_what_happened_and_where(
    error: httpx.TransportError, cls: type[MeshError], message: str
) -> None:
    mapped = mesh_error(error, REQUEST)
    assert type(mapped) is cls
    assert str(mapped) == f"{message} (endpoint http://example.com:8080)"


def test_an_unexpected_exception_is_not_a_mesh_error() -> None:
    assert mesh_error(ValueError("bug"), REQUEST) is None
