"""The ``xds:`` section: take routes, clusters and endpoints from an xDS control plane (docs/xds.md).

The control plane's address and this workload's node come from a gRPC xDS
bootstrap file, as gRPC's proxyless clients read it: ``bootstrap`` names it,
or, when left out, the ``GRPC_XDS_BOOTSTRAP`` (a path) and
``GRPC_XDS_BOOTSTRAP_CONFIG`` (the JSON itself) environment variables do.
"""

from __future__ import annotations

from typing import Annotated

from meshlib._config.base import ConfigModel
from meshlib._config.durations import PositiveDuration
from meshlib._config.hosts import check_authority
from meshlib._config.pydantic_names import AfterValidator, Field

__all__ = ["XdsConfig"]

Authority = Annotated[str, AfterValidator(check_authority)]


class XdsConfig(ConfigModel):
    """Consume xDS (LDS → RDS → CDS → EDS over one ADS stream) for the authorities this workload calls."""

    bootstrap: str | None = Field(
        default=None,
        min_length=1,
        description="A gRPC xDS bootstrap JSON file; unset: GRPC_XDS_BOOTSTRAP or GRPC_XDS_BOOTSTRAP_CONFIG.",
    )
    targets: list[Authority] = Field(
        default_factory=list,
        description="Authorities (host[:port]) to subscribe to at start; others are subscribed on first use.",
    )
    initial_fetch_timeout: PositiveDuration = Field(
        default=5.0, description="How long a first request to a new authority (or the start) waits for its resources."
    )
