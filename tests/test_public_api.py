"""The public surface: ``meshlib.__all__`` and the error family's place under httpx's exceptions."""

from __future__ import annotations

import httpx
import pytest

import meshlib

PUBLIC_NAMES = [
    "AsyncHTTP1Transport",
    "AsyncMeshTransport",
    "CircuitOpenError",
    "ConfigError",
    "DiscoveryError",
    "Identity",
    "Mesh",
    "MeshConfig",
    "MeshError",
    "MeshTransport",
    "NoHealthyUpstreamError",
    "OverloadedError",
    "PeerIdentityError",
    "RateLimitedError",
    "RequestTimeoutError",
    "RetryEvent",
    "RouteNotFoundError",
    "UpstreamConnectError",
    "UpstreamResetError",
    "__version__",
    "wrap",
]


def test_all_is_the_sorted_list_of_public_names() -> None:
    assert meshlib.__all__ == sorted(meshlib.__all__)
    assert meshlib.__all__ == PUBLIC_NAMES


def test_every_public_name_is_documented() -> None:
    for name in meshlib.__all__:
        if name != "__version__":
            assert getattr(meshlib, name).__doc__, f"meshlib.{name} has no docstring"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (meshlib.MeshError, "mesh_error"),
        (meshlib.RouteNotFoundError, "route_not_found"),
        (meshlib.NoHealthyUpstreamError, "no_healthy_upstream"),
        (meshlib.RateLimitedError, "rate_limited"),
        (meshlib.CircuitOpenError, "circuit_open"),
        (meshlib.OverloadedError, "overloaded"),
        (meshlib.UpstreamConnectError, "upstream_connect_failure"),
        (meshlib.PeerIdentityError, "peer_identity_mismatch"),
        (meshlib.UpstreamResetError, "upstream_reset"),
        (meshlib.RequestTimeoutError, "timeout"),
    ],
)
def test_request_errors_are_httpx_transport_errors_with_a_code(error: type[meshlib.MeshError], code: str) -> None:
    assert issubclass(error, meshlib.MeshError)
    assert issubclass(error, httpx.TransportError)
    assert issubclass(error, httpx.RequestError)
    assert error.code == code
    request = httpx.Request("GET", "http://reviews/")
    instance = error("boom", request=request, route="r", cluster="c")
    assert (str(instance), instance.request, instance.route, instance.cluster) == ("boom", request, "r", "c")


@pytest.mark.parametrize(
    ("error", "httpx_error"),
    [
        (meshlib.UpstreamConnectError, httpx.ConnectError),
        (meshlib.UpstreamResetError, httpx.NetworkError),
        (meshlib.RequestTimeoutError, httpx.TimeoutException),
    ],
)
def test_upstream_errors_keep_their_httpx_family(error: type[meshlib.MeshError], httpx_error: type[Exception]) -> None:
    """Code that catches httpx.ConnectError or httpx.TimeoutException keeps working through the mesh."""
    assert issubclass(error, httpx_error)


def test_config_error_is_not_an_httpx_error_and_lists_field_paths() -> None:
    assert not issubclass(meshlib.ConfigError, httpx.HTTPError)
    error = meshlib.ConfigError([("routes[1].split[0].cluster", "unknown cluster 'reviews-v3'")])
    assert error.errors == [("routes[1].split[0].cluster", "unknown cluster 'reviews-v3'")]
    assert "routes[1].split[0].cluster: unknown cluster 'reviews-v3'" in str(error)


def test_retry_event_is_a_frozen_record() -> None:
    request = httpx.Request("GET", "http://reviews/")
    event = meshlib.RetryEvent(
        cluster="reviews", route="r", attempt=1, status=503, error=None, sleep=0.01, request=request
    )
    with pytest.raises(AttributeError):
        event.attempt = 2  # type: ignore[misc]


def test_version_is_a_string() -> None:
    assert isinstance(meshlib.__version__, str)
    assert meshlib.__version__
