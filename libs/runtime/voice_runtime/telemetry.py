"""OpenTelemetry tracer setup and W3C trace-context propagation through NATS headers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_provider: TracerProvider | None = None


def setup_tracing(service: str, otlp_endpoint: str | None, extra: SpanProcessor | None = None) -> TracerProvider:
    """Install the tracer provider once per process. OTLP/HTTP export when an endpoint is set."""
    global _provider
    if _provider is None:
        _provider = TracerProvider(resource=Resource.create({"service.name": service}))
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = otlp_endpoint.rstrip("/")
            if not endpoint.endswith("/v1/traces"):
                endpoint += "/v1/traces"
            _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        trace.set_tracer_provider(_provider)
    if extra is not None:
        _provider.add_span_processor(extra)
    return _provider


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject(headers: dict[str, str], ctx: otel_context.Context | None = None) -> dict[str, str]:
    """Write ``traceparent`` (and ``tracestate``) of the current or given context into headers."""
    propagate.inject(headers, context=ctx)
    return headers


def extract(headers: Mapping[str, Any] | None) -> otel_context.Context:
    return propagate.extract(dict(headers or {}))
