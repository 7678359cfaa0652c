"""Snapshot: everything one config compiles to. Immutable; a reload swaps in a new one whole."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshlib._clock import Clock
from meshlib._config.models import MeshConfig
from meshlib._engine.cluster_stack import CompiledCluster
from meshlib._engine.inbound_stack import InboundStack
from meshlib._engine.outbound import LateRoutes
from meshlib._observe.observers import Observers
from meshlib._snapshot.route_table import RouteTable

__all__ = ["Snapshot"]


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """The route table and clusters of one config version.

    ``passthrough`` is true under ``outbound_policy: allow_any``: requests no
    route claims go to their own host untouched. ``digest`` identifies the
    config's content: processes that load the same content get the same one,
    whatever their ``version`` (a count of reloads) says.
    """

    config: MeshConfig
    version: int
    routes: RouteTable
    clusters: Mapping[str, CompiledCluster]
    passthrough: bool
    clock: Clock
    # The inbound policy every inbound door applies (docs/security.md): normalisation, mTLS, JWT, authorization.
    inbound: InboundStack
    # What this config reports (tracing, metrics, access log); None when it turns none on.
    observers: Observers | None = None
    # xDS's gate for first requests to an authority (_xds/manager.py XdsGate); None without xDS.
    xds: LateRoutes | None = None
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", _digest(self.config))


# The last config digested, and its digest: discovery compiles the same config again at each change of endpoints.
_last: tuple[MeshConfig, str] | None = None


def _digest(config: MeshConfig) -> str:
    global _last
    last = _last
    if last is not None and last[0] is config:
        return last[1]
    canonical = json.dumps(config.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
    digest = hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()
    _last = (config, digest)
    return digest
