"""A TEST DOUBLE of the OPA REST API: the subset OpaServerEngine uses, evaluated by the real OPA library.

Not a server to run in production. It speaks OPA v1's documented contract for
`/v1/policies/{id}` (PUT raw Rego, GET, DELETE), `GET /v1/policies`, `/v1/data/{path}`
(PUT, GET, DELETE, POST with `{"input": ...}`) and `GET /health`, and evaluates with the real
OPA Go library (`opa_bindings.OpaEngine`), rebuilt from scratch whenever policies or data change.
A change that does not compile is rejected with OPA's 400 `invalid_parameter` shape and leaves
the previous state in place, as OPA does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from opa_bindings import OpaEngine, OpaError, OpaUndefinedError

# "file.rego:2: rego_parse_error: unexpected eof token" -> one entry of OPA's `errors` list
_ERROR_LINE = re.compile(r"^(?P<file>[^\s:][^:\n]*):(?P<row>\d+): (?P<code>rego_\w+): (?P<message>.*)$", re.M)


class _State:
    """Policies and data as OPA stores them, plus the engine compiled from both."""

    def __init__(self) -> None:
        self.policies: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self.engine = OpaEngine()

    def replace(self, policies: dict[str, str], data: dict[str, Any]) -> None:
        """Compile the candidate state; on success swap it in, on OpaError keep the current one."""
        engine = OpaEngine()
        try:
            for policy_id, raw in sorted(policies.items()):
                engine.add_policy(policy_id, raw)
            engine.add_data(data)
            engine.eval_query("true")  # compiles every module: type errors surface here, as in OPA
        except OpaError:
            engine.close()
            raise
        self.engine.close()
        self.engine, self.policies, self.data = engine, policies, data

    def close(self) -> None:
        self.engine.close()


STATE = web.AppKey("opa_double_state", _State)


def create_opa_double() -> web.Application:
    """The aiohttp app; serve it with `aiohttp_server(create_opa_double())` in tests."""
    app = web.Application()
    app[STATE] = _State()
    app.on_cleanup.append(_close)
    app.router.add_get("/health", _health)
    app.router.add_get("/v1/policies", _list_policies)
    app.router.add_get("/v1/policies/", _list_policies)
    app.router.add_put("/v1/policies/{id:.+}", _put_policy)
    app.router.add_get("/v1/policies/{id:.+}", _get_policy)
    app.router.add_delete("/v1/policies/{id:.+}", _delete_policy)
    app.router.add_put("/v1/data/{path:.*}", _put_data)
    app.router.add_delete("/v1/data/{path:.*}", _delete_data)
    app.router.add_get("/v1/data/{path:.*}", _get_data)
    app.router.add_post("/v1/data/{path:.*}", _post_data)
    return app


async def _close(app: web.Application) -> None:
    app[STATE].close()


async def _health(request: web.Request) -> web.Response:
    return web.json_response({})


async def _list_policies(request: web.Request) -> web.Response:
    policies = request.app[STATE].policies
    return web.json_response({"result": [_policy_doc(pid, raw) for pid, raw in sorted(policies.items())]})


async def _put_policy(request: web.Request) -> web.Response:
    state, policy_id = request.app[STATE], request.match_info["id"]
    raw = await request.text()
    try:
        state.replace({**state.policies, policy_id: raw}, state.data)
    except OpaError as exc:
        return _compile_failure(exc)
    return web.json_response({})


async def _get_policy(request: web.Request) -> web.Response:
    state, policy_id = request.app[STATE], request.match_info["id"]
    if policy_id not in state.policies:
        return _not_found(f"storage_not_found_error: policy id {policy_id!r}")
    return web.json_response({"result": _policy_doc(policy_id, state.policies[policy_id])})


async def _delete_policy(request: web.Request) -> web.Response:
    state, policy_id = request.app[STATE], request.match_info["id"]
    if policy_id not in state.policies:
        return _not_found(f"storage_not_found_error: policy id {policy_id!r}")
    remaining = {pid: raw for pid, raw in state.policies.items() if pid != policy_id}
    try:
        state.replace(remaining, state.data)
    except OpaError as exc:
        return _compile_failure(exc)
    return web.json_response({})


async def _put_data(request: web.Request) -> web.Response:
    state, parts = request.app[STATE], _parts(request)
    try:
        value = json.loads(await request.read())
    except ValueError as exc:
        return _error(400, "invalid_parameter", f"body is not JSON: {exc}")
    try:
        state.replace(state.policies, _with_value(state.data, parts, value))
    except OpaError as exc:
        return _compile_failure(exc)
    return web.Response(status=204)


async def _delete_data(request: web.Request) -> web.Response:
    state, parts = request.app[STATE], _parts(request)
    if not parts or _lookup(state.data, parts) is _MISSING:
        return _not_found(f"storage_not_found_error: {'/'.join(parts)}: document does not exist")
    data = json.loads(json.dumps(state.data))  # a deep copy: the old state stays intact on failure
    parent = _lookup(data, parts[:-1])
    assert isinstance(parent, dict)
    del parent[parts[-1]]
    state.replace(state.policies, data)
    return web.Response(status=204)


async def _get_data(request: web.Request) -> web.Response:
    return _evaluate(request.app[STATE], _parts(request), None)


async def _post_data(request: web.Request) -> web.Response:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError as exc:
        return _error(400, "invalid_parameter", f"body is not JSON: {exc}")
    if not isinstance(body, dict):
        return _error(400, "invalid_parameter", "body must be an object with an 'input' key")
    return _evaluate(request.app[STATE], _parts(request), body.get("input"))


def _evaluate(state: _State, parts: list[str], input_doc: Any) -> web.Response:
    try:
        result = state.engine.eval_document(".".join(parts), input_doc)
    except OpaUndefinedError:
        return web.json_response({})  # OPA answers an undefined document with 200 and no result
    except OpaError as exc:
        return _error(500, "internal_error", exc.message)  # OPA reports eval errors as 500
    return web.json_response({"result": result})


def _compile_failure(exc: OpaError) -> web.Response:
    errors = [
        {
            "code": m["code"],
            "message": m["message"],
            "location": {"file": m["file"], "row": int(m["row"]), "col": 1},
        }
        for m in _ERROR_LINE.finditer(exc.message)
    ] or [{"code": "rego_compile_error", "message": exc.message}]
    body = {"code": "invalid_parameter", "message": "error(s) occurred while compiling module(s)"}
    return web.json_response({**body, "errors": errors}, status=400)


def _not_found(message: str) -> web.Response:
    return _error(404, "resource_not_found", message)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


def _policy_doc(policy_id: str, raw: str) -> dict[str, Any]:
    return {"id": policy_id, "raw": raw}


def _parts(request: web.Request) -> list[str]:
    return [p for p in request.match_info["path"].split("/") if p]


class _Missing:
    pass


_MISSING = _Missing()


def _lookup(data: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(data, Mapping) or part not in data:
            return _MISSING
        data = data[part]
    return data


def _with_value(data: dict[str, Any], parts: list[str], value: Any) -> dict[str, Any]:
    """A copy of `data` with `value` at `parts`, creating missing objects like OPA's PUT does."""
    if not parts:
        if not isinstance(value, dict):
            raise OpaError("invalid_parameter", "the root data document must be an object")
        return value
    copy: dict[str, Any] = json.loads(json.dumps(data))
    node = copy
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value
    return copy
