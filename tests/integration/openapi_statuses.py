"""The HTTP statuses a route's handler can answer, read from the code (not from a list to keep).

Starting at the handler, the analysis follows every call it can resolve exactly: module-level
functions, methods of the objects the handler takes from `request.app[KEY]` (an `AppKey` knows
its type), and `self.` calls inside those methods, through the project's own packages. It
collects:

* `raise SomeError(...)` of a `tiergate.errors.TierError` class: the class's `status`;
* `raise web.HTTPSomething(...)`: that exception's status;
* `json_response(body, N)` / `web.Response(status=N)` with N a literal, a literal `a if c else b`,
  or a local name assigned such literals;
* reading the body directly (`request.read()`, `.text()`, `.json()`, `.post()`): aiohttp's 413
  over the app's `client_max_size` (`tiergate.web.read_json_object` turns it into a 400 instead).

It over-approximates (an error caught on the way still counts) and cannot see calls through
values it cannot type; what it finds is a floor the documents must cover, never a ceiling.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from aiohttp import web

from tiergate.errors import TierError

PACKAGES = ("tiergate.",)
BODY_READERS = frozenset({"read", "text", "json", "post", "multipart"})
RESPONSE_BUILDERS = frozenset({"json_response", "Response", "StreamResponse"})
DEFAULT_STATUS = 200  # what each of those answers when given no status
# The check listener's own: `response(status, body, ...)` and `RequestRefused(status, code, ...)`.
STATUS_FIRST_BUILDERS = frozenset({"response", "RequestRefused"})


def handler_statuses(handler: Callable[..., Any]) -> set[int]:
    """Every status the analysis finds below `handler` (2xx and 3xx included), and below each
    wrapper around it (the sidecar's `guarded`: listener refusals, header checks)."""
    found: set[int] = set()
    layer: Callable[..., Any] | None = handler
    while layer is not None:
        found |= _statuses(layer, None)
        layer = getattr(layer, "__wrapped__", None)
    return found


def module_statuses(module: ModuleType) -> set[int]:
    """Every status the functions and methods of MODULE answer: for a listener that is not an
    aiohttp app (the sidecar's check listener speaks HTTP/1.1 itself)."""
    found: set[int] = set()
    for value in vars(module).values():
        if inspect.isfunction(value) and value.__module__ == module.__name__:
            found |= _statuses(value, None)
        elif inspect.isclass(value) and value.__module__ == module.__name__:
            for member in vars(value).values():
                if inspect.isfunction(member):
                    found |= _statuses(member, value)
    return found


def middleware_statuses(app: web.Application) -> set[int]:
    """What the app's middlewares answer on their own, for every route (a header that is not
    UTF-8 is a 400 before any handler runs)."""
    found: set[int] = set()
    for middleware in app.middlewares:
        found |= handler_statuses(middleware)
    return found


def _ours(obj: object) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module.startswith(PACKAGES) or module == "tiergate"


_found: dict[tuple[Any, Any], frozenset[int]] = {}
_visiting: set[tuple[Any, Any]] = set()


def _statuses(fn: Callable[..., Any], owner: type | None) -> frozenset[int]:
    key = (fn, owner)
    if key in _found:
        return _found[key]
    if key in _visiting:  # a cycle: the outer visit collects what this one would
        return frozenset()
    _visiting.add(key)
    try:
        walker = _Walker(fn, owner)
        found: set[int] = set()
        for node in ast.walk(walker.tree):
            found |= walker.visit(node)
    finally:
        _visiting.discard(key)
    _found[key] = frozenset(found)
    return _found[key]


class _Walker:
    def __init__(self, fn: Callable[..., Any], owner: type | None) -> None:
        self.fn = fn
        self.owner = owner
        self.globals: dict[str, Any] = getattr(fn, "__globals__", {})
        self.types: dict[str, type] = {}  # local names bound to `request.app[KEY]`
        self.literals: dict[str, set[int]] = {}  # local names bound to literal ints
        try:
            # The code's own source: `getsource(fn)` would follow `__wrapped__` past a wrapper.
            self.tree: ast.AST = ast.parse(textwrap.dedent(inspect.getsource(getattr(fn, "__code__", fn))))
        except (OSError, TypeError):  # no source (a builtin, a C extension)
            self.tree = ast.Module(body=[], type_ignores=[])
        self.caught = _caught_inside_try(self.tree, self._resolve)
        for node in ast.walk(self.tree):
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
            ):
                name = node.targets[0].id
                typed = self._type_of(node.value)
                if typed is not None:
                    self.types[name] = typed
                ints = _int_literals(node.value)
                if ints:
                    self.literals.setdefault(name, set()).update(ints)

    def visit(self, node: ast.AST) -> set[int]:
        if isinstance(node, ast.Raise) and node.exc is not None:
            return self._raised(node.exc)
        if isinstance(node, ast.Call):
            return self._called(node)
        return set()

    def _raised(self, exc: ast.expr) -> set[int]:
        target = exc.func if isinstance(exc, ast.Call) else exc
        cls = self._resolve(target)
        if isinstance(cls, type) and issubclass(cls, TierError):
            return {cls.status} if isinstance(cls.status, int) else set()
        if isinstance(cls, type) and issubclass(cls, web.HTTPException):
            return {cls.status_code}
        return set()

    def _called(self, call: ast.Call) -> set[int]:
        found: set[int] = set()
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in RESPONSE_BUILDERS:
            found |= self._response_status(call)
        if name in STATUS_FIRST_BUILDERS and call.args:
            found |= _int_literals(call.args[0])
        if self._reads_the_body(call):
            found.add(web.HTTPRequestEntityTooLarge.status_code)
        for target, owner in self._callees(func):
            found |= _statuses(target, owner)
        return found

    def _reads_the_body(self, call: ast.Call) -> bool:
        """`request.read()` and the like, unless a surrounding `try` handles aiohttp's 413."""
        func = call.func
        if not (isinstance(func, ast.Attribute) and func.attr in BODY_READERS and _is_request(func.value)):
            return False
        caught = self.caught.get(id(call), ())
        return not any(issubclass(web.HTTPRequestEntityTooLarge, c) for c in caught)

    def _response_status(self, call: ast.Call) -> set[int]:
        exprs = [kw.value for kw in call.keywords if kw.arg == "status"]
        if len(call.args) >= 2:
            exprs.append(call.args[1])
        if not exprs and not any(kw.arg is None for kw in call.keywords):
            return {DEFAULT_STATUS}  # no status given (nor **kwargs that could hold one): 200
        found: set[int] = set()
        for expr in exprs:
            found |= _int_literals(expr)
            if isinstance(expr, ast.Name):
                found |= self.literals.get(expr.id, set())
        return found

    def _callees(self, func: ast.expr) -> Iterator[tuple[Callable[..., Any], type | None]]:
        """The project functions (and their owner class) a call may reach, resolved exactly."""
        if isinstance(func, ast.Attribute):
            owner = self._type_of(func.value)
            if owner is not None:
                method = inspect.getattr_static(owner, func.attr, None)
                method = getattr(method, "__func__", method)
                if callable(method) and _ours(method):
                    yield method, owner
                return
        target = self._resolve(func)
        if inspect.isfunction(target) and _ours(target):
            yield target, None

    def _type_of(self, expr: ast.expr) -> type | None:
        """The class of `request.app[KEY]`, `self` (inside a method) or a local bound to either."""
        if (
            isinstance(expr, ast.Subscript)
            and isinstance(expr.value, ast.Attribute)
            and expr.value.attr == "app"
        ):
            key = self._resolve(expr.slice)
            found = getattr(key, "_t", None)
            return found if isinstance(found, type) else None
        if isinstance(expr, ast.Name):
            if expr.id == "self" and self.owner is not None:
                return self.owner
            return self.types.get(expr.id)
        return None

    def _resolve(self, expr: ast.expr) -> Any:
        if isinstance(expr, ast.Name):
            return self.globals.get(expr.id)
        if isinstance(expr, ast.Attribute):
            base = self._resolve(expr.value)
            return getattr(base, expr.attr, None) if base is not None else None
        return None


def _caught_inside_try(tree: ast.AST, resolve: Callable[[ast.expr], Any]) -> dict[int, list[type]]:
    """id(call) -> the exception classes a surrounding `try` catches (to drop what it handles)."""
    caught: dict[int, list[type]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        classes: list[type] = []
        for handler in node.handlers:
            if _answers_as_its_own_status(handler):
                continue  # `except Exception as exc: return error_response(...)` hides no status
            names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            classes += [c for c in (resolve(n) for n in names if n is not None) if isinstance(c, type)]
        for statement in node.body:
            for inner in ast.walk(statement):
                if isinstance(inner, ast.Call):
                    caught.setdefault(id(inner), []).extend(classes)
    return caught


def _answers_as_its_own_status(handler: ast.ExceptHandler) -> bool:
    """The handler renders what it caught with `tiergate.web.error_response` (what a guarded
    route, or GET /v1/check inline, does instead of a middleware): each status still reaches the
    client."""
    return any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "error_response"
        for statement in handler.body
        for node in ast.walk(statement)
    )


def _is_request(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Name) and expr.id == "request"


def _int_literals(expr: ast.expr) -> set[int]:
    if isinstance(expr, ast.Constant) and type(expr.value) is int and 100 <= expr.value <= 599:
        return {expr.value}
    if isinstance(expr, ast.IfExp):
        return _int_literals(expr.body) | _int_literals(expr.orelse)
    return set()
