"""The observability contract: top-level ``tracing:``, ``metrics:`` and ``access_log:``.

Each section is off when absent. They describe what a mesh reports, never
what it routes, so a reload that changes them swaps the reporting of new
requests only; in-flight requests finish with the reporting they started with.
"""

from __future__ import annotations

from typing import Annotated, Literal

import httpx

from meshlib._config.base import ConfigModel
from meshlib._config.durations import PositiveDuration
from meshlib._config.pydantic_names import AfterValidator, Field, field_validator

__all__ = ["AccessLogConfig", "MetricsConfig", "TracingConfig", "ZipkinConfig"]

Propagator = Literal["tracecontext", "b3", "b3multi"]
_DEFAULT_PROPAGATION: tuple[Propagator, ...] = ("tracecontext", "b3")


def _http_url(value: str) -> str:
    url = httpx.URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
    return value


class ZipkinConfig(ConfigModel):
    """Where spans go: a Zipkin v2 JSON endpoint (Zipkin, Jaeger's or the OpenTelemetry Collector's Zipkin receiver)."""

    endpoint: Annotated[str, AfterValidator(_http_url)] = Field(
        description="The collector's span endpoint, e.g. http://127.0.0.1:9411/api/v2/spans."
    )
    timeout: PositiveDuration = Field(default=5.0, description="How long one export may take before it is dropped.")


class TracingConfig(ConfigModel):
    """Spans for every request, exported to Zipkin off the request path (OpenTelemetry SDK, per-Mesh provider).

    ``sampling`` is the ratio of new traces to record; a request that arrives
    with a sampled (or unsampled) parent follows its parent's decision, as
    OpenTelemetry's ``ParentBased(TraceIdRatioBased)`` does. ``propagation``
    lists the header formats injected on outbound requests, all of them; on
    inbound, the first listed format present in the request is extracted.
    """

    zipkin: ZipkinConfig | None = Field(
        default=None, description="The exporter; without it spans are made (and propagated) but not exported."
    )
    sampling: float = Field(default=1.0, ge=0.0, le=1.0, description="Parent-based ratio of traces to record.")
    propagation: list[Propagator] = Field(
        default_factory=lambda: list(_DEFAULT_PROPAGATION),
        min_length=1,
        description="tracecontext (W3C traceparent), b3 (single header), b3multi (X-B3-* headers).",
    )
    service_name: str | None = Field(
        default=None, min_length=1, description="The service.name of the spans; the config's service by default."
    )
    max_queue_size: int = Field(default=2048, ge=1, description="Spans kept waiting for export; beyond it, dropped.")

    @field_validator("propagation")
    @classmethod
    def _unique(cls, value: list[Propagator]) -> list[Propagator]:
        if len(set(value)) != len(value):
            raise ValueError("each propagation format may be listed once")
        return value


class MetricsConfig(ConfigModel):
    """Prometheus metrics: the golden signals per route, cluster and endpoint, and the inbound side's."""

    enabled: bool = Field(default=True, description="Collect and expose metrics.")


class AccessLogConfig(ConfigModel):
    """One JSON line per request (fields modelled on Envoy's default access log), written off the request path."""

    path: str = Field(default="-", min_length=1, description='"-" for standard output, else a file (appended to).')
    format: Literal["json"] = Field(default="json", description="json: one object per line.")
