"""regorus's VM may only be freed on the thread that made it: an engine abandoned in a reference
cycle and collected by a garbage collection on another thread must not panic there."""

from __future__ import annotations

import gc
import sys
import threading
from pathlib import Path

from tiergate.policy import embedded
from tiergate.policy.bundle import load_bundle
from tiergate.policy.embedded import EmbeddedEngine

ROOT = Path(__file__).resolve().parents[3]


class _Holder:
    """An engine inside a reference cycle, like a decision service and its replica reader."""

    def __init__(self, engine: EmbeddedEngine) -> None:
        self.engine = engine
        self.me = self


def _collect_on_another_thread() -> list[str]:
    """What a collection on a worker thread raised (a failing drop is an "unraisable" error)."""
    raised: list[str] = []

    def unraisable(info: sys.UnraisableHookArgs) -> None:
        raised.append(repr(info.exc_value))

    def run() -> None:
        try:
            gc.collect()
        except BaseException as exc:  # a pyo3 panic is a BaseException
            raised.append(repr(exc))

    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    finally:
        sys.unraisablehook = hook
    return raised


async def test_an_abandoned_engine_is_freed_on_its_own_thread() -> None:
    bundle = load_bundle(ROOT / "policies", ROOT / "plans" / "plans.yaml")
    live_before, _ = embedded._KEEPER.counts()
    engine = EmbeddedEngine(compiled=True)
    await engine.load(bundle)
    assert engine._loaded is not None and engine._loaded.vms  # compiled at load
    _Holder(engine)
    del engine
    gc.disable()  # only the worker's collection may find the cycle
    try:
        assert _collect_on_another_thread() == []
    finally:
        gc.enable()
    live, retired = embedded._KEEPER.counts()
    assert (live, retired >= 1) == (live_before, True)
    await EmbeddedEngine(compiled=True).close()  # any close or load on this thread sweeps
    assert embedded._KEEPER.counts() == (live_before, 0)


async def test_a_replaced_bundle_is_freed_when_the_engine_next_loads() -> None:
    bundle = load_bundle(ROOT / "policies", ROOT / "plans" / "plans.yaml")
    engine = EmbeddedEngine(compiled=True)
    await engine.load(bundle)
    live, _ = embedded._KEEPER.counts()
    await engine.load(bundle)
    assert embedded._KEEPER.counts()[0] == live
    await engine.close()
    assert embedded._KEEPER.counts() == (live - 1, 0)
