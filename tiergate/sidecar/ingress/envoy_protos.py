"""The part of Envoy's ext_authz v3 API the sidecar reads and writes, as protobuf messages in a
private descriptor pool (docs/adr/0029).

Only the fields the sidecar uses are declared, with Envoy's own names and numbers: the wire format
needs nothing more, and a field Envoy sends that is not declared is kept as an unknown field. The
pool is private, so these messages never clash with another copy of Envoy's protos in the same
process, and the server needs no package that installs files under `opentelemetry/proto` or
`google/rpc` (xds-protos does both). tests/unit/test_envoy_protos.py holds every declared field to
Envoy's published descriptors.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

FILE = "tiergate/envoy_ext_authz_subset.proto"
PACKAGE = "envoy.service.auth.v3"
SERVICE = f"{PACKAGE}.Authorization"  # the gRPC path Envoy calls: /envoy.service.auth.v3.Authorization/Check

STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
INT32 = descriptor_pb2.FieldDescriptorProto.TYPE_INT32  # also Envoy's enums: the same varint on the wire
MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL

# (message, [(field, number, type, message type or "", repeated, oneof or "")]); a message's name is
# its full name in Envoy's API with the package dropped, nested types written Outer.Inner.
Field = tuple[str, int, int, str, bool, str]
MESSAGES: dict[str, list[Field]] = {
    "HeaderValue": [
        ("key", 1, STRING, "", False, ""),
        ("value", 2, STRING, "", False, ""),
        ("raw_value", 3, BYTES, "", False, ""),
    ],
    "HeaderMap": [("headers", 1, MESSAGE, "HeaderValue", True, "")],
    "HeaderValueOption": [
        ("header", 1, MESSAGE, "HeaderValue", False, ""),
        ("append_action", 3, INT32, "", False, ""),
    ],
    "AttributeContext.HttpRequest.HeadersEntry": [
        ("key", 1, STRING, "", False, ""),
        ("value", 2, STRING, "", False, ""),
    ],
    "AttributeContext.HttpRequest": [
        ("method", 2, STRING, "", False, ""),
        ("headers", 3, MESSAGE, "AttributeContext.HttpRequest.HeadersEntry", True, ""),
        ("path", 4, STRING, "", False, ""),
        ("header_map", 13, MESSAGE, "HeaderMap", False, ""),
    ],
    "AttributeContext.Request": [("http", 2, MESSAGE, "AttributeContext.HttpRequest", False, "")],
    "AttributeContext": [("request", 4, MESSAGE, "AttributeContext.Request", False, "")],
    "CheckRequest": [("attributes", 1, MESSAGE, "AttributeContext", False, "")],
    "Status": [("code", 1, INT32, "", False, ""), ("message", 2, STRING, "", False, "")],
    "HttpStatus": [("code", 1, INT32, "", False, "")],
    "DeniedHttpResponse": [
        ("status", 1, MESSAGE, "HttpStatus", False, ""),
        ("headers", 2, MESSAGE, "HeaderValueOption", True, ""),
        ("body", 3, STRING, "", False, ""),
    ],
    "OkHttpResponse": [
        ("headers", 2, MESSAGE, "HeaderValueOption", True, ""),
        ("headers_to_remove", 5, STRING, "", True, ""),
    ],
    "CheckResponse": [
        ("status", 1, MESSAGE, "Status", False, ""),
        ("denied_response", 2, MESSAGE, "DeniedHttpResponse", False, "http_response"),
        ("ok_response", 3, MESSAGE, "OkHttpResponse", False, "http_response"),
    ],
}
# Where the messages declared outside Envoy's auth package live in its API (the subset flattens
# them into one package); the others keep their names.
ELSEWHERE = {
    "HeaderValue": "envoy.config.core.v3.HeaderValue",
    "HeaderMap": "envoy.config.core.v3.HeaderMap",
    "HeaderValueOption": "envoy.config.core.v3.HeaderValueOption",
    "HttpStatus": "envoy.type.v3.HttpStatus",
    "Status": "google.rpc.Status",
}


def envoy_name(message: str) -> str:
    """The full name in Envoy's published API of a message declared here."""
    return ELSEWHERE.get(message, f"{PACKAGE}.{message}")


# Envoy's HeaderValueOption.HeaderAppendAction and google.rpc.Code values the sidecar sends.
OVERWRITE_IF_EXISTS_OR_ADD = 2
GRPC_OK, GRPC_INVALID_ARGUMENT, GRPC_PERMISSION_DENIED = 0, 3, 7
GRPC_RESOURCE_EXHAUSTED, GRPC_UNAVAILABLE, GRPC_UNAUTHENTICATED = 8, 14, 16


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name=FILE, package=PACKAGE, syntax="proto3")
    by_name: dict[str, descriptor_pb2.DescriptorProto] = {}
    for name in sorted(MESSAGES, key=lambda n: n.count(".")):  # outer messages before nested ones
        outer, _, short = name.rpartition(".")
        parent = by_name[outer].nested_type if outer else proto.message_type
        message = parent.add(name=short)
        if short.endswith("Entry"):
            message.options.map_entry = True
        oneofs: list[str] = []
        for field, number, kind, type_name, repeated, oneof in MESSAGES[name]:
            declared = message.field.add(
                name=field, number=number, type=kind, label=REPEATED if repeated else OPTIONAL
            )
            if type_name:
                declared.type_name = f".{PACKAGE}.{type_name}"
            if oneof:
                if oneof not in oneofs:
                    oneofs.append(oneof)
                    message.oneof_decl.add(name=oneof)
                declared.oneof_index = oneofs.index(oneof)
        by_name[name] = message
    return proto


def _classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name in MESSAGES
    }


_CLASSES = _classes()
CheckRequest = _CLASSES["CheckRequest"]
CheckResponse = _CLASSES["CheckResponse"]
OkHttpResponse = _CLASSES["OkHttpResponse"]
DeniedHttpResponse = _CLASSES["DeniedHttpResponse"]
HttpStatus = _CLASSES["HttpStatus"]
HeaderValue = _CLASSES["HeaderValue"]
HeaderValueOption = _CLASSES["HeaderValueOption"]
Status = _CLASSES["Status"]
