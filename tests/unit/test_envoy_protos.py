"""The sidecar's subset of Envoy's ext_authz API against Envoy's published descriptors (xds-protos,
a dev dependency only): every declared field has Envoy's name, number, wire type and cardinality,
and a message round-trips between the two."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import descriptor, descriptor_pool
from google.rpc import status_pb2

from tiergate.sidecar.ingress import envoy_protos as envoy

# Envoy's modules, imported so the default pool holds their descriptors.
PUBLISHED = (base_pb2, attribute_context_pb2, external_auth_pb2, http_status_pb2, status_pb2)
WIRE_EQUAL = {descriptor.FieldDescriptor.TYPE_ENUM: descriptor.FieldDescriptor.TYPE_INT32}


def published(message: str) -> descriptor.Descriptor:
    return descriptor_pool.Default().FindMessageTypeByName(envoy.envoy_name(message))


@pytest.mark.parametrize("message", sorted(envoy.MESSAGES))
def test_every_declared_field_is_envoys(message: str) -> None:
    theirs = published(message).fields_by_name
    for name, number, kind, type_name, repeated, oneof in envoy.MESSAGES[message]:
        field = theirs[name]
        assert field.number == number, f"{message}.{name}"
        assert WIRE_EQUAL.get(field.type, field.type) == kind, f"{message}.{name}"
        assert field.is_repeated == repeated, f"{message}.{name}"
        assert (field.containing_oneof.name if field.containing_oneof else "") == oneof, f"{message}.{name}"
        if type_name:
            assert field.message_type.full_name == envoy.envoy_name(type_name), f"{message}.{name}"


def test_envoys_request_reads_here_and_our_response_reads_there() -> None:
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        method="POST",
        path="/v1/things?x=1",
        host="api.example.com",  # a field the subset leaves out: kept as unknown, never an error
        headers={"x-tenant": "acme"},
        header_map=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key="x-raw", raw_value=b"\xff")]),
    )
    request = external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=http)
        )
    )
    ours = envoy.CheckRequest.FromString(request.SerializeToString())
    assert (ours.attributes.request.http.method, ours.attributes.request.http.path) == (
        "POST",
        "/v1/things?x=1",
    )
    assert dict(ours.attributes.request.http.headers) == {"x-tenant": "acme"}
    assert ours.attributes.request.http.header_map.headers[0].raw_value == b"\xff"

    denied = envoy.CheckResponse(
        status=envoy.Status(code=envoy.GRPC_RESOURCE_EXHAUSTED, message="limit_reached"),
        denied_response=envoy.DeniedHttpResponse(
            status=envoy.HttpStatus(code=429),
            headers=[
                envoy.HeaderValueOption(
                    header=envoy.HeaderValue(key="Retry-After", value="60"),
                    append_action=envoy.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            ],
            body="{}",
        ),
    )
    theirs = external_auth_pb2.CheckResponse.FromString(denied.SerializeToString())
    assert theirs.WhichOneof("http_response") == "denied_response"
    assert theirs.denied_response.status.code == http_status_pb2.TooManyRequests
    assert (
        theirs.denied_response.headers[0].append_action
        == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    )
    assert (theirs.status.code, theirs.status.message) == (8, "limit_reached")
