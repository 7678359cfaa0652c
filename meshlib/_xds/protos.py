"""The optional extra ``xds`` (``meshlib-http[xds]``): grpcio and Envoy's generated protos, imported on first use only.

A config with ``xds:`` on a machine without the extra fails with a
:class:`meshlib.ConfigError` that says what to install; nothing else of
meshlib imports grpc or protobuf.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from meshlib._errors import ConfigError

__all__ = ["protos"]

INSTALL = "install the xds extra (from a clone: pip install '.[xds]')"


@functools.cache
def protos() -> Any:
    """A namespace of what the xDS client needs: messages, the ADS stub, and helpers that build a channel and node."""
    try:
        import grpc
        from envoy.config.cluster.v3 import cluster_pb2
        from envoy.config.core.v3 import base_pb2
        from envoy.config.endpoint.v3 import endpoint_pb2
        from envoy.config.listener.v3 import listener_pb2
        from envoy.config.route.v3 import route_pb2
        from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
        from google.protobuf import json_format, struct_pb2
    except ImportError as exc:
        raise ConfigError([("xds", f"xDS needs grpcio and xds-protos ({exc.name} is missing): {INSTALL}")]) from None

    def node(data: Mapping[str, Any]) -> Any:
        message = base_pb2.Node(
            id=str(data.get("id", "")),
            cluster=str(data.get("cluster", "")),
            user_agent_name="meshlib",
        )
        locality = data.get("locality") or {}
        for key in ("region", "zone", "sub_zone"):
            if isinstance(locality.get(key), str):
                setattr(message.locality, key, locality[key])
        metadata = data.get("metadata")
        if metadata:
            message.metadata.CopyFrom(json_format.ParseDict(metadata, struct_pb2.Struct()))
        from meshlib.__version__ import __version__

        message.user_agent_version = __version__
        return message

    def channel(server: Any) -> Any:
        options = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]
        creds = server.creds
        if creds.type == "insecure":
            return grpc.insecure_channel(server.server_uri, options=options)
        root = _read(creds.ca_certificate_file)
        key = _read(creds.private_key_file)
        chain = _read(creds.certificate_file)
        credentials = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)
        return grpc.secure_channel(server.server_uri, credentials, options=options)

    return SimpleNamespace(
        grpc=grpc,
        DiscoveryRequest=discovery_pb2.DiscoveryRequest,
        Resource=discovery_pb2.Resource,
        AdsStub=ads_pb2_grpc.AggregatedDiscoveryServiceStub,
        Listener=listener_pb2.Listener,
        RouteConfiguration=route_pb2.RouteConfiguration,
        Cluster=cluster_pb2.Cluster,
        ClusterLoadAssignment=endpoint_pb2.ClusterLoadAssignment,
        json_format=json_format,
        node=node,
        channel=channel,
    )


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()
