"""Envoy's gRPC ext_authz (`envoy.service.auth.v3.Authorization/Check`) over the same gate as
/v1/authz: the same decisions, headers and statuses, in Envoy's CheckResponse."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web
from multidict import CIMultiDict

from tiergate.errors import BadRequestError, SettingsError
from tiergate.sidecar.api.authz import GATE
from tiergate.sidecar.ingress import envoy_protos as envoy
from tiergate.sidecar.ingress.gate import IngressGate
from tiergate.sidecar.ingress.hook import Verdict
from tiergate.sidecar.state import SETTINGS

GRPC_PORT = web.AppKey("authz_grpc_port", int)  # the bound port (TIERGATE_AUTHZ_GRPC_PORT may be 0)
# An HTTP status as the gRPC status Envoy logs and counts (the client gets the HTTP one).
GRPC_CODES = {
    200: envoy.GRPC_OK,
    400: envoy.GRPC_INVALID_ARGUMENT,
    401: envoy.GRPC_UNAUTHENTICATED,
    403: envoy.GRPC_PERMISSION_DENIED,
    429: envoy.GRPC_RESOURCE_EXHAUSTED,
    503: envoy.GRPC_UNAVAILABLE,
}


def hook_call(request: Any) -> tuple[CIMultiDict[str], str, str]:
    """(headers, method, path) for the gate. The original request is Envoy's own attributes, set
    over any X-Original-* header the client sent; no path is a malformed call (the gate's 400).

    Envoy sends a request's headers either in `header_map` (with `encode_raw_headers`, bytes as
    received) or in `headers`; should both carry a name, `header_map`'s values win. A value that
    is not UTF-8 is a BadRequestError naming the header, as on /v1/authz (two different byte
    strings must not both become the same U+FFFD tenant)."""
    http = request.attributes.request.http
    headers: CIMultiDict[str] = CIMultiDict()
    for entry in http.header_map.headers:
        headers.add(entry.key, entry.value or _utf8(entry.key, entry.raw_value))
    for name, value in http.headers.items():
        if name not in headers:
            headers[name] = value
    for name in ("X-Original-URI", "X-Original-Method", "X-Forwarded-Uri", "X-Forwarded-Method"):
        headers.popall(name, None)
    if http.path:
        headers["X-Original-URI"] = http.path
        headers["X-Original-Method"] = http.method
    return headers, http.method or "GET", "/v1/authz"


def _utf8(name: str, raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise BadRequestError(f"header {name} is not valid UTF-8", field=name) from None


def check_response(verdict: Verdict, client_headers: CIMultiDict[str]) -> Any:
    """Allow: the sidecar's X-Tiergate-* headers overwrite the client's, and any other client
    X-Tiergate-* header is removed before the upstream. Deny: the hook's status, headers and body."""
    if verdict.allow:
        forged = sorted({n.lower() for n in client_headers if n.lower().startswith("x-tiergate-")})
        ok = envoy.OkHttpResponse(
            headers=[_header(name, value) for name, value in verdict.headers.items()],
            headers_to_remove=[n for n in forged if n not in {k.lower() for k in verdict.headers}],
        )
        return envoy.CheckResponse(status=envoy.Status(code=envoy.GRPC_OK), ok_response=ok)
    headers = verdict.headers | {"Content-Type": "application/json"}
    denied = envoy.DeniedHttpResponse(
        status=envoy.HttpStatus(code=verdict.status),  # the HTTP code is the enum value
        headers=[_header(name, value) for name, value in headers.items()],
        body=json.dumps(verdict.body or {}, default=_as_json, separators=(",", ":")),
    )
    code = GRPC_CODES.get(verdict.status, envoy.GRPC_PERMISSION_DENIED)
    return envoy.CheckResponse(status=envoy.Status(code=code, message=verdict.reason), denied_response=denied)


def _header(name: str, value: str) -> Any:
    return envoy.HeaderValueOption(
        header=envoy.HeaderValue(key=name, value=value), append_action=envoy.OVERWRITE_IF_EXISTS_OR_ADD
    )


def _as_json(value: object) -> object:
    body = getattr(value, "body", None)  # a Decision
    if callable(body):
        return body()
    raise TypeError(f"{type(value).__name__} is not JSON")


class Authorization:
    """Envoy's Authorization service: its one method, Check."""

    def __init__(self, gate: IngressGate) -> None:
        self.gate = gate

    def handler(self) -> grpc.GenericRpcHandler:
        check = grpc.unary_unary_rpc_method_handler(
            self.check,
            request_deserializer=envoy.CheckRequest.FromString,
            response_serializer=envoy.CheckResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(envoy.SERVICE, {"Check": check})

    async def check(self, request: Any, context: Any) -> Any:
        try:
            headers, method, path = hook_call(request)
        except BadRequestError as exc:
            return check_response(self.gate.refuse(exc), CIMultiDict())
        verdict = await self.gate.authorize(headers, method, path)
        return check_response(verdict, headers)


async def grpc_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the ingress gate's context; serves until the app stops."""
    settings = app[SETTINGS]
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Authorization(app[GATE]).handler(),))
    address = f"{settings.authz_grpc_host}:{settings.authz_grpc_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise SettingsError(f"cannot listen on TIERGATE_AUTHZ_GRPC_HOST/PORT {address}: {exc}") from exc
    app[GRPC_PORT] = port
    await server.start()
    try:
        yield
    finally:
        await server.stop(grace=1.0)
