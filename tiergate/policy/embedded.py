"""EmbeddedEngine: the policy-engine port on regorus, in process, on the event loop thread."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

# With RUST_BACKTRACE=1 each evaluation error costs ~0.5 ms and its message carries a huge trace
# (anyhow reads RUST_LIB_BACKTRACE first). Set before regorus first captures one; it caches the value.
os.environ["RUST_BACKTRACE"] = "0"
os.environ["RUST_LIB_BACKTRACE"] = "0"

import regorus

from tiergate.errors import EngineUnavailableError, PolicyError
from tiergate.policy.engine import DECISION_PATH, ROUTE_PATH, PolicyBundle

try:
    import orjson

    def _dumps(document: Mapping[str, Any]) -> str:
        return orjson.dumps(document).decode()

    _loads: Callable[[str], Any] = orjson.loads
except ImportError:  # orjson is a declared dependency; plain json keeps a stripped image working

    def _dumps(document: Mapping[str, Any]) -> str:
        return json.dumps(document, separators=(",", ":"))

    _loads = json.loads

# Exceptions that are not the engine's fault and must keep unwinding. Everything else from
# regorus, including a Rust panic (pyo3's PanicException derives from BaseException), becomes
# a PolicyError at this boundary.
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)

# The VM has no "undefined" value of its own on the Python side: it returns this JSON string.
_VM_UNDEFINED = '"<undefined>"'

T = TypeVar("T")


@dataclass
class _Loaded:
    """One bundle ready to answer; replaced whole, never changed in place (except the VM cache)."""

    bundle: PolicyBundle
    thread: int
    engine: regorus.Engine | None = None
    data_json: str = "{}"
    vms: dict[str, regorus.Rvm] = field(default_factory=dict)
    validator: regorus.Engine | None = None  # the interpreter that checked a compiled bundle


class _Keeper:
    """Holds every loaded bundle until it can be freed on the thread that made it.

    regorus's VM is a pyo3 `unsendable` class: freeing one on another thread panics. Python's
    cycle collector frees unreachable objects on whatever thread happens to trigger it (an
    `asyncio.to_thread` worker, a SQLite writer thread), so an engine abandoned inside a
    reference cycle (a decision service and its replica reader refer to each other) would
    panic there. So a bundle is never owned by ordinary references alone: the keeper holds it
    while it is in use, and a retired one is released only by `sweep` on its own thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, _Loaded] = {}
        self._retired: dict[int, list[_Loaded]] = {}

    def keep(self, loaded: _Loaded) -> None:
        with self._lock:
            self._live[id(loaded)] = loaded

    def retire(self, loaded: _Loaded | None) -> None:
        """Any thread may retire a bundle; it is freed at its own thread's next `sweep`."""
        if loaded is None:
            return
        with self._lock:
            if self._live.pop(id(loaded), None) is not None:
                self._retired.setdefault(loaded.thread, []).append(loaded)

    def sweep(self) -> None:
        with self._lock:
            freed = self._retired.pop(threading.get_ident(), [])
        freed.clear()  # the last references go here, on the thread that made them

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return len(self._live), sum(len(r) for r in self._retired.values())


_KEEPER = _Keeper()


@dataclass
class _Slot:
    """The engine's current bundle, reachable by its finalizer without keeping the engine alive."""

    loaded: _Loaded | None = None


class EmbeddedEngine:
    """regorus in process. Default: the interpreter (`regorus.Engine`); `compiled=True`: its VM.

    regorus objects are bound to the thread that created them (another thread gets a panic), so
    `load` and `evaluate` must both run on the event loop thread; `evaluate` runs inline
    (tens of microseconds, less than a hop to an executor would cost) and holds the GIL.

    `required` are rule paths every bundle must define: `load` rejects a bundle whose package
    for one of them is missing or whose rule fails a smoke evaluation on an empty input.

    With `compiled=True`, each rule path is compiled into an RVM program on first use (the
    required ones at load). Known VM differences, all still mapped to PolicyError: evaluation
    errors (division by zero, conflicting rule values) come back as undefined rather than as
    errors, and a rule whose value is the string "<undefined>" reads as undefined.
    """

    def __init__(
        self, *, compiled: bool = False, required: Sequence[str] = (DECISION_PATH, ROUTE_PATH)
    ) -> None:
        self.compiled = compiled
        self.required = tuple(required)
        self._loaded: _Loaded | None = None
        self._slot = _Slot()
        # An engine dropped without close() hands its bundle back to the keeper.
        weakref.finalize(self, _retire_slot, self._slot)

    @property
    def revision(self) -> str | None:
        return self._loaded.bundle.revision if self._loaded else None

    async def load(self, bundle: PolicyBundle) -> None:
        """Build a new engine for `bundle` and swap it in; on any failure keep the current one."""
        _KEEPER.sweep()
        loaded = _Loaded(bundle=bundle, thread=threading.get_ident())
        _KEEPER.keep(loaded)
        try:
            self._build(loaded)
        except BaseException:
            _KEEPER.retire(loaded)
            raise
        previous, self._slot.loaded = self._slot.loaded, loaded
        self._loaded = loaded  # the swap: one reference assignment, atomic for every caller
        _KEEPER.retire(previous)

    def _build(self, loaded: _Loaded) -> None:
        loaded.data_json = _dumps({"plans": loaded.bundle.plans})
        engine = loaded.validator = _guard(partial(_interpreter, loaded.bundle), "load")
        _check_packages(engine, self.required)
        if self.compiled:  # the interpreter above only validated the bundle
            for path in self.required:
                loaded.vms[path] = _guard(partial(_compile, loaded, path), f"compiling {path}")
        else:
            loaded.engine = engine
        for path in self.required:
            self._smoke(loaded, path)

    async def evaluate(self, path: str, document: Mapping[str, Any]) -> Any:
        loaded = self._loaded
        if loaded is None:
            raise EngineUnavailableError("no policy bundle loaded yet; see the policy reload status")
        if loaded.thread != threading.get_ident():
            raise PolicyError(f"{path}: regorus engines answer only on the thread that loaded them")
        try:
            input_json = _dumps(document)
        except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
            raise PolicyError(f"input for {path} is not JSON-serializable: {exc}") from exc
        return self._evaluate(loaded, path, input_json)

    async def ping(self) -> None:
        if self._loaded is None:
            raise EngineUnavailableError("no policy bundle loaded yet; see the policy reload status")

    async def close(self) -> None:
        previous, self._slot.loaded = self._slot.loaded, None
        self._loaded = None
        _KEEPER.retire(previous)
        _KEEPER.sweep()

    def _evaluate(self, loaded: _Loaded, path: str, input_json: str) -> Any:
        engine = loaded.engine
        if engine is not None:
            return _guard(lambda: _eval_interpreter(engine, path, input_json), path)
        return _guard(lambda: _eval_vm(loaded, path, input_json), path)

    def _smoke(self, loaded: _Loaded, path: str) -> None:
        try:
            self._evaluate(loaded, path, "{}")
        except _Undefined:  # undefined on an empty input is fine
            pass
        except PolicyError as exc:
            raise PolicyError(f"smoke evaluation of {path} on an empty input failed: {exc}") from exc


def _retire_slot(slot: _Slot) -> None:
    _KEEPER.retire(slot.loaded)
    slot.loaded = None


class _Undefined(PolicyError):
    """The document at a path is undefined for this input (or the path names no rule)."""


def _guard(call: Callable[[], T], what: str) -> T:
    try:
        return call()
    except PolicyError:
        raise
    except _PASS_THROUGH:
        raise
    except BaseException as exc:  # a regorus panic is a BaseException: see _PASS_THROUGH
        raise PolicyError(f"{what}: {str(exc).strip()}") from exc


def _interpreter(bundle: PolicyBundle) -> regorus.Engine:
    engine = regorus.Engine()
    for name, source in sorted(bundle.modules.items()):
        try:
            engine.add_policy(name, source)
        except _PASS_THROUGH:
            raise
        except BaseException as exc:  # see _PASS_THROUGH
            raise PolicyError(f"policy module {name} does not parse: {str(exc).strip()}") from exc
    # a fresh engine per bundle: regorus data merges cannot change a value already present
    engine.add_data({"plans": dict(bundle.plans)})
    return engine


def _check_packages(engine: regorus.Engine, required: Sequence[str]) -> None:
    """Every required package is defined, and every package evaluates on an empty input.

    regorus reports unknown functions and unsafe variables only when it evaluates the rule, so
    this is what stands in for OPA's compile step: each package once, with `{}` as input.
    """
    packages = _guard(engine.get_packages, "listing packages")
    for path in required:
        package = path.rsplit(".", 1)[0]
        if package not in packages:
            raise PolicyError(f"no module defines package {package} (needed for {path})")
    _guard(partial(engine.set_input_json, "{}"), "smoke input")
    for package in packages:
        _guard(partial(engine.eval_query, package), f"package {package} fails on an empty input")


def _compile(loaded: _Loaded, path: str) -> regorus.Rvm:
    modules = sorted(loaded.bundle.modules.items())
    program = regorus.Program.compile_from_modules(loaded.data_json, modules, [path])
    vm = regorus.Rvm()
    vm.load_program(program)
    vm.set_data_json(loaded.data_json)  # the program does not carry the data it was compiled with
    return vm


def _eval_interpreter(engine: regorus.Engine, path: str, input_json: str) -> Any:
    engine.set_input_json(input_json)
    try:
        value = engine.eval_rule(path)
    except RuntimeError as exc:
        if "not a valid rule path" in str(exc):
            raise _Undefined(f"{path} is undefined: no such rule") from exc
        raise
    if value is None:  # regorus returns None for undefined (and for a null value: never a decision)
        raise _Undefined(f"{path} is undefined for this input")
    return value


def _eval_vm(loaded: _Loaded, path: str, input_json: str) -> Any:
    vm = loaded.vms.get(path)
    if vm is None:
        try:
            vm = loaded.vms[path] = _compile(loaded, path)
        except RuntimeError as exc:
            raise _Undefined(f"{path} is undefined: {str(exc).strip()}") from exc
    vm.set_input_json(input_json)
    result = vm.execute_entry_point(path)
    if result == _VM_UNDEFINED:
        raise _Undefined(f"{path} is undefined for this input (or failed to evaluate)")
    return _loads(result)
