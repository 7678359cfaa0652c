"""The Zipkin v2 JSON encoding of the spans the tracing observer exports, at a fraction of the stock encoder's CPU.

OpenTelemetry's ``JsonV2Encoder`` rebuilds the tags every span shares (the
resource's attributes and the instrumentation scope's four) for each span, and
reads each attribute through ``collections.abc``'s Python mapping views: 25
to 55 µs per span here, by the hour. The export thread runs beside the
requests, on the same core when the process is pinned to one, so that is CPU
the requests lose (``benchmarks/bench_zipkin_encoder.py`` compares both in the
same run).

This encoder writes the same JSON, key for key and value for value, with one
difference: no ``"debug": true``. The stock encoder sets it on every sampled
span, but Zipkin's debug flag asks the collector to keep the trace whatever
its own sampling says (it is what ``X-B3-Flags: 1`` carries); a span sampled
at a ratio is not a forced trace. Tag values keep the stock rules (booleans as
``true``/``false``, numbers with ``str``, sequences as a JSON list, all cut at
the tag length limit); anything but a plain ``str``, ``bool``, ``int`` or
``float`` goes through the stock encoder's own conversion.

The JSON is written by orjson, as UTF-8 bytes that the exporter posts as they
are: ``json.dumps``, escaping every string to ASCII, took about 7 µs of a
span's export by itself, orjson about 0.6 (``bench_zipkin_encoder.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from opentelemetry.exporter.zipkin.encoder import DEFAULT_MAX_TAG_VALUE_LENGTH, NAME_KEY, VERSION_KEY
from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder
from opentelemetry.exporter.zipkin.node_endpoint import NodeEndpoint
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import StatusCode

__all__ = ["ZipkinJsonEncoder"]

_SCOPE_NAME_KEY = "otel.scope.name"
_SCOPE_VERSION_KEY = "otel.scope.version"
_KINDS = JsonV2Encoder.SPAN_KIND_MAP
_UNSET = StatusCode.UNSET
_ERROR = StatusCode.ERROR


class ZipkinJsonEncoder(JsonV2Encoder):
    """``JsonV2Encoder``'s output without ``"debug"``, the shared tags encoded once per resource and scope."""

    def __init__(self, max_tag_value_length: int | None = DEFAULT_MAX_TAG_VALUE_LENGTH) -> None:
        # None: no limit, as the stock encoder the exporter makes (it passes its own default, None, on).
        super().__init__(max_tag_value_length)  # type: ignore[arg-type]  # the stock annotation says int
        # The last resource and scope seen, and their tags: one tracer provider's spans all share them.
        self._shared: tuple[Resource | None, InstrumentationScope | None, dict[str, Any]] = (None, None, {})

    def serialize(self, spans: Sequence[Any], local_endpoint: NodeEndpoint) -> bytes:  # type: ignore[override]
        # Bytes, which requests posts as they are (a str body it would encode as Latin-1).
        endpoint = self._encode_local_endpoint(local_endpoint)
        return orjson.dumps([self._encode_span(span, endpoint) for span in spans])

    def _encode_span(self, span: Any, encoded_local_endpoint: Any) -> dict[str, Any]:
        readable: ReadableSpan = span
        context = readable.context
        start = readable.start_time or 0
        end = readable.end_time or 0
        encoded: dict[str, Any] = {
            "traceId": format(context.trace_id, "032x"),
            "id": format(context.span_id, "016x"),
            "name": readable.name,
            "timestamp": (start + 500) // 1000,
            "duration": (end - start + 500) // 1000,
            "localEndpoint": encoded_local_endpoint,
            "kind": _KINDS[readable.kind],
        }
        tags = self._tags(readable)
        if tags:
            encoded["tags"] = tags
        events = readable.events
        if events:
            encoded["annotations"] = self._extract_annotations_from_events(list(events))
        parent = readable.parent
        if parent is not None:
            encoded["parentId"] = format(parent.span_id, "016x")
        return encoded

    def _tags(self, span: ReadableSpan) -> dict[str, Any]:
        # The SDK's read-only view of its BoundedAttributes; copy() gives a plain dict (iterated in C, not through
        # collections.abc's Python views).
        attributes: Any = span.attributes
        tags = self._values(attributes.copy() if attributes else {})
        tags.update(self._shared_tags(span.resource, span.instrumentation_scope))
        status = span.status
        if status.status_code is not _UNSET:
            tags["otel.status_code"] = status.status_code.name
            if status.status_code is _ERROR:
                tags["error"] = status.description or ""
        if span.dropped_attributes:
            tags["otel.dropped_attributes_count"] = str(span.dropped_attributes)
        if span.dropped_events:
            tags["otel.dropped_events_count"] = str(span.dropped_events)
        if span.dropped_links:
            tags["otel.dropped_links_count"] = str(span.dropped_links)
        return tags

    def _shared_tags(self, resource: Resource | None, scope: InstrumentationScope | None) -> dict[str, Any]:
        last_resource, last_scope, tags = self._shared
        if resource is last_resource and scope is last_scope and last_resource is not None:
            return tags
        tags = self._values(dict(resource.attributes)) if resource else {}
        if scope is not None:
            tags.update(
                {
                    NAME_KEY: scope.name,
                    VERSION_KEY: scope.version,
                    _SCOPE_NAME_KEY: scope.name,
                    _SCOPE_VERSION_KEY: scope.version,
                }
            )
        self._shared = (resource, scope, tags)
        return tags

    def _values(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        """The stock encoder's tag values: the plain types here, anything else through its own conversion."""
        # None (no limit) where the stock annotation says int: read untyped, which compiled code would check.
        limit: int | None = getattr(self, "max_tag_value_length", None)
        cut = limit is not None and limit > 0
        tags: dict[str, Any] = {}
        odd: dict[str, Any] = {}
        for key, value in attributes.items():
            kind = type(value)
            if kind is str:
                tags[key] = value[:limit] if cut else value
            elif kind is bool or kind is int or kind is float:
                text = ("true" if value else "false") if kind is bool else str(value)
                tags[key] = text[:limit] if cut else text
            else:
                odd[key] = value
                tags[key] = ""  # keeps the key's place; replaced (or dropped, as the stock encoder drops it) below
        if odd:
            converted = self._extract_tags_from_dict(odd)
            for key in odd:
                if key in converted:
                    tags[key] = converted[key]
                else:
                    del tags[key]
        return tags
