"""Config models of the resilience policies: retries, timeouts, breakers, ejection, health, limits, faults.

Set on a cluster they are that cluster's defaults; the same keys on a route
(``timeout``, ``retry``, ``rate_limit``, ``hedge``) replace the cluster's for
requests that route sends there (a route's ``retry`` may take the cluster's
``retriable_status_codes``: :meth:`RetryConfig.inheriting_codes`). Each key maps
to one module in ``_policies/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal, Self

from meshlib._config.base import (
    CheckError,
    ConfigModel,
    NonNegativeInt,
    Percent,
    PositiveInt,
    StatusCode,
    check,
    check_path,
    field_of,
)
from meshlib._config.durations import Duration, PositiveDuration
from meshlib._config.pydantic_names import Field, field_validator
from meshlib._config.storage_url import StorageUrl

__all__ = [
    "DEFAULT_RETRY_ON",
    "BackoffConfig",
    "CircuitBreakerConfig",
    "FaultAbortConfig",
    "FaultConfig",
    "FaultDelayConfig",
    "HealthCheckConfig",
    "HedgeConfig",
    "MirrorConfig",
    "OutlierDetectionConfig",
    "RateLimitConfig",
    "RetryBudgetConfig",
    "RetryConfig",
    "RetryOn",
    "needs_codes",
]

RetryOn = Literal["connect-failure", "reset", "5xx", "gateway-error", "retriable-status-codes", "per-try-timeout"]
# Conditions where a retry cannot make things worse for an idempotent request (Istio's default set, minus 503).
DEFAULT_RETRY_ON: tuple[RetryOn, ...] = ("connect-failure", "reset", "gateway-error")


class BackoffConfig(ConfigModel):
    """Exponential backoff with full jitter: try n waits a random time in [0, min(max, base × 2ⁿ⁻¹)]."""

    base: Duration = 0.025
    max: Duration = 0.25

    @check("base", "max")
    def _order(self) -> Iterator[CheckError]:
        if self.max < self.base:
            yield ("max",), "must be at least backoff.base", self.max


class RetryBudgetConfig(ConfigModel):
    """Retries may add at most ``ratio`` of recent requests, plus ``min_retries_per_second``."""

    ratio: float = Field(default=0.2, ge=0, le=1, allow_inf_nan=False)
    min_retries_per_second: NonNegativeInt = 10
    window: PositiveDuration = 10.0


class RetryConfig(ConfigModel):
    """When and how often to try a request again.

    ``retry_on: [retriable-status-codes]`` needs codes: this retry's own
    ``retriable_status_codes`` or, for a route's retry that names none, those of
    the retry of each cluster the route sends to (checked on MeshConfig).
    """

    attempts: PositiveInt = 2
    per_try_timeout: PositiveDuration | None = None
    retry_on: list[RetryOn] = Field(default_factory=lambda: list(DEFAULT_RETRY_ON))
    # Listing codes is enough to retry them (as if retry_on had retriable-status-codes).
    retriable_status_codes: list[StatusCode] = Field(default_factory=list)
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)
    budget: RetryBudgetConfig | None = Field(default_factory=RetryBudgetConfig)
    # Methods retried on any condition, besides the idempotent ones (RFC 9110 §9.2.2).
    methods: list[str] = Field(default_factory=list)
    # Request bodies up to this size are kept for replay; larger or streamed bodies are sent once.
    buffer_limit_bytes: NonNegativeInt = 65536

    @field_validator("methods")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [m.upper() for m in value]

    def inheriting_codes(self, cluster: RetryConfig | None) -> Self:
        """This route-level retry, with the codes of the cluster's ``retry`` when it needs codes and names none."""
        if needs_codes(self) and cluster is not None and cluster.retriable_status_codes:
            return self.model_copy(update={"retriable_status_codes": list(cluster.retriable_status_codes)})
        return self


def needs_codes(retry: object) -> bool:
    """Whether a retry (a RetryConfig, or its raw mapping) lists retriable-status-codes but names no code."""
    retry_on = field_of(retry, "retry_on")
    return (
        isinstance(retry_on, list | tuple)
        and "retriable-status-codes" in retry_on
        and field_of(retry, "retriable_status_codes") in (None, [])
    )


class CircuitBreakerConfig(ConfigModel):
    """Opens after consecutive failures; fails fast while open; one trial request after recovery_timeout.

    ``failure_threshold: null`` never opens: only ``max_concurrent_requests`` applies (Envoy's circuit
    breakers are such limits; xDS clusters translate to this).
    """

    failure_threshold: PositiveInt | None = 5
    recovery_timeout: PositiveDuration = 30.0
    max_concurrent_requests: PositiveInt | None = 1024
    # redis://HOST:PORT[/DB] shares the breaker's state between processes (pybreaker's Redis storage).
    storage: StorageUrl | None = None


class OutlierDetectionConfig(ConfigModel):
    """Ejects an endpoint after consecutive 5xx/connect failures, for base_ejection_time × times ejected."""

    consecutive_5xx: PositiveInt = 5
    interval: PositiveDuration = 10.0
    base_ejection_time: PositiveDuration = 30.0
    max_ejection_time: PositiveDuration = 300.0
    max_ejection_percent: Percent = 10.0


class HealthCheckConfig(ConfigModel):
    """Probes each endpoint in the background; unhealthy ones leave the load balancer."""

    path: str = "/healthz"
    interval: PositiveDuration = 5.0
    timeout: PositiveDuration = 1.0
    unhealthy_threshold: PositiveInt = 3
    healthy_threshold: PositiveInt = 2
    expected_statuses: list[StatusCode] = Field(default_factory=lambda: [200])

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return check_path(value)


class RateLimitConfig(ConfigModel):
    """A request rate in the ``limits`` notation (``100/second``, ``10 per minute``), in memory or in Redis."""

    rate: str
    storage: StorageUrl | None = None
    strategy: Literal["moving-window", "fixed-window", "sliding-window-counter"] = "moving-window"

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        import limits  # here: only a config with rate limits loads the library

        try:
            limits.parse_many(value)
        except ValueError:
            raise ValueError(f"invalid rate {value!r}: use the limits notation, e.g. '100/second'") from None
        return value


class HedgeConfig(ConfigModel):
    """Sends another try of an idempotent request that has not answered after ``after``."""

    after: PositiveDuration
    max_extra: PositiveInt = 1


class FaultDelayConfig(ConfigModel):
    duration: PositiveDuration
    percent: Percent = 100.0


class FaultAbortConfig(ConfigModel):
    status: Annotated[int, Field(strict=True, ge=200, le=599)]
    percent: Percent = 100.0


class FaultConfig(ConfigModel):
    """Injected delays and aborts, each for a percentage of the route's requests."""

    delay: FaultDelayConfig | None = None
    abort: FaultAbortConfig | None = None

    @check()
    def _something(self) -> Iterator[CheckError]:
        if self.delay is None and self.abort is None:
            yield (), "set delay, abort, or both", None


class MirrorConfig(ConfigModel):
    """Sends a copy of a percentage of the route's requests to a shadow cluster, ignoring its answers."""

    cluster: str
    percent: Percent = 100.0
