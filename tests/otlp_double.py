"""An OTLP/HTTP trace receiver double on 127.0.0.1: POST /v1/traces (protobuf), decoded with
opentelemetry-proto, every span kept with its service, trace id, parent and links."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

TRACES = "/v1/traces"


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    links: tuple[str, ...]  # the linked spans' trace ids
    attributes: dict[str, object]


@dataclass
class OtlpReceiver:
    spans: list[ReceivedSpan] = field(default_factory=list)
    posts: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(TRACES, self._receive)
        return app

    async def _receive(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        assert request.content_type == "application/x-protobuf", request.content_type
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        self.posts += 1
        for resource_spans in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            service = attributes.get("service.name", "")
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            links=tuple(link.trace_id.hex() for link in span.links),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]


def _value(value: object) -> object:
    kind = value.WhichOneof("value")  # type: ignore[attr-defined]  # a protobuf AnyValue
    return getattr(value, kind) if kind else None
