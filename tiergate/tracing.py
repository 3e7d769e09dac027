"""Optional OpenTelemetry tracing: W3C `traceparent` in and out, spans exported over OTLP/HTTP.

Off unless an endpoint is configured (TIERGATE_OTEL_EXPORTER_OTLP_ENDPOINT, else the standard
OTEL_EXPORTER_OTLP_ENDPOINT). Only then is the `tiergate[otel]` extra imported, so the default
install stays small and a process without an endpoint never touches it on any request path.
Each process keeps its own TracerProvider (no global one): two apps in one process stay apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from tiergate.errors import SettingsError

TRACEPARENT = "traceparent"
SpanKind = Literal["server", "client", "internal"]


def otlp_traces_url(configured: str | None, environ: Mapping[str, str]) -> str | None:
    """The OTLP/HTTP traces URL: the endpoint's base (ours, else the standard variable) + /v1/traces."""
    base = configured or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    return None if base is None else base.rstrip("/") + "/v1/traces"


class Tracing:
    """The spans of one process, batched to one OTLP/HTTP endpoint."""

    def __init__(self, service: str, traces_url: str) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise SettingsError(
                f"an OTLP endpoint is set ({traces_url}) but OpenTelemetry is not installed: "
                "pip install 'tiergate[otel]', or unset TIERGATE_OTEL_EXPORTER_OTLP_ENDPOINT "
                "and OTEL_EXPORTER_OTLP_ENDPOINT"
            ) from exc
        self.traces_url = traces_url
        self._trace = trace
        self._kinds = {
            "server": trace.SpanKind.SERVER,
            "client": trace.SpanKind.CLIENT,
            "internal": trace.SpanKind.INTERNAL,
        }
        self._provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self._provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url, timeout=5))
        )
        self._tracer = self._provider.get_tracer("tiergate")
        self._propagator = TraceContextTextMapPropagator()

    @contextmanager
    def span(
        self,
        name: str,
        *,
        parent: str | None = None,
        links: Sequence[str] = (),
        kind: SpanKind = "internal",
        attributes: Mapping[str, str | int | float | bool] | None = None,
    ) -> Iterator[str]:
        """A span, child of the `traceparent` given (a new trace without a valid one), linked to
        the others; yields its own traceparent, to send on."""
        context = self._propagator.extract({TRACEPARENT: parent}) if parent else None
        linked = [self._trace.Link(c) for c in (self._span_context(t) for t in links) if c.is_valid]
        with self._tracer.start_as_current_span(
            name, context=context, kind=self._kinds[kind], links=linked, attributes=dict(attributes or {})
        ) as span:
            carrier: dict[str, str] = {}
            self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
            yield carrier[TRACEPARENT]

    def _span_context(self, traceparent: str) -> Any:
        context = self._propagator.extract({TRACEPARENT: traceparent})
        return self._trace.get_current_span(context).get_span_context()

    def flush(self) -> None:
        self._provider.force_flush(timeout_millis=5000)

    def shutdown(self) -> None:
        """Export what is left and stop (bounded by the exporter's timeout)."""
        self._provider.shutdown()


def tracing_for(service: str, endpoint: object | None, environ: Mapping[str, str]) -> Tracing | None:
    """The process's Tracing when an endpoint is configured (a setting, else the standard variable)."""
    traces_url = otlp_traces_url(None if endpoint is None else str(endpoint), environ)
    return None if traces_url is None else Tracing(service, traces_url)
