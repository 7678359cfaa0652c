"""The xDS part of the admin's ``/config_dump``, in Envoy's layout where it fits.

One entry per resource type (``ListenersConfigDump``, ``RoutesConfigDump``,
``ClustersConfigDump``, ``EndpointsConfigDump``): each accepted resource with
its own ``version_info`` and ``last_updated``, and, when the type's last
response was NACKed, an ``error_state`` with the refused version and the
error text sent to the server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from meshlib._xds.client import CLUSTER, ENDPOINT, LISTENER, ROUTE
from meshlib._xds.protos import protos

if TYPE_CHECKING:
    from meshlib._xds.manager import Xds

__all__ = ["xds_config_dump"]

_ADMIN = "type.googleapis.com/envoy.admin.v3."
# type → (the dump's type, its list's key, the resource's key in each entry), as Envoy names them
_LAYOUT = {
    LISTENER: ("ListenersConfigDump", "dynamic_listeners", "listener"),
    ROUTE: ("RoutesConfigDump", "dynamic_route_configs", "route_config"),
    CLUSTER: ("ClustersConfigDump", "dynamic_active_clusters", "cluster"),
    ENDPOINT: ("EndpointsConfigDump", "dynamic_endpoint_configs", "endpoint_config"),
}


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def xds_config_dump(xds: Xds) -> dict[str, Any]:
    """The server, the stream, and every accepted resource by type (JSON-ready)."""
    to_dict = protos().json_format.MessageToDict
    states = xds.client.states()
    configs = []
    for type_url, (dump_type, key, field) in _LAYOUT.items():
        entries = []
        for name, accepted in sorted(xds.state.resources[type_url].items()):
            resource = {"@type": type_url, **to_dict(accepted.message, preserving_proto_field_name=True)}
            entry = {"version_info": accepted.version, field: resource, "last_updated": _time(accepted.updated)}
            entries.append({"name": name, "active_state": entry} if type_url == LISTENER else entry)
        section: dict[str, Any] = {"@type": _ADMIN + dump_type, "version_info": states[type_url].version, key: entries}
        state = states[type_url]
        if state.last_error is not None:
            section["error_state"] = {
                "version_info": state.last_error_version,
                "last_update_attempt": _time(state.last_error_time),
                "details": state.last_error,
            }
        configs.append(section)
    return {"server": xds.bootstrap.server.server_uri, "connected": xds.client.connected, "configs": configs}
