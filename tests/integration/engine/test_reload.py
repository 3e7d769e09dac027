"""PolicyReloader on real files: edits are picked up, a broken push keeps the last good bundle."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.integration.engine.conftest import PLANS_YAML
from tiergate.errors import CatalogError, PolicyError
from tiergate.policy.embedded import EmbeddedEngine
from tiergate.policy.engine import DECISION_PATH
from tiergate.sidecar.policy.reload import PolicyReloader

# The watcher reacts in ~0.2 s (100 ms debounce); this is only the point where a test gives up.
GIVE_UP_S = 5.0


def decision_rego(reason: str) -> str:
    return f'package tiergate.entitlements\n\ndecision := {{"allow": true, "reason": "{reason}"}}\n'


class Recorder:
    def __init__(self) -> None:
        self.reloads: list[str] = []
        self.failures: list[str] = []


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    policies, plans = tmp_path / "policies", tmp_path / "plans" / "plans.yaml"
    policies.mkdir()
    plans.parent.mkdir()
    (policies / "entitlements.rego").write_text(decision_rego("v1"))
    plans.write_text(PLANS_YAML)
    return policies, plans


@pytest.fixture
async def engine() -> AsyncIterator[EmbeddedEngine]:
    adapter = EmbeddedEngine(required=(DECISION_PATH,))
    yield adapter
    await adapter.close()


@pytest.fixture
async def reloader(
    engine: EmbeddedEngine, tree: tuple[Path, Path], recorder: Recorder
) -> AsyncIterator[PolicyReloader]:
    policies, plans = tree
    watcher = PolicyReloader(
        engine, policies, plans, on_reload=recorder.reloads.append, on_failure=recorder.failures.append
    )
    await watcher.start()
    yield watcher
    await watcher.stop()


async def test_start_loads_the_bundle(
    reloader: PolicyReloader, engine: EmbeddedEngine, recorder: Recorder
) -> None:
    status = reloader.status()

    assert (await engine.evaluate(DECISION_PATH, {}))["reason"] == "v1"
    assert status["revision"] == engine.revision == recorder.reloads[0]
    assert (status["reloads_ok"], status["reloads_failed"], status["last_error"]) == (1, 0, None)
    assert status["loaded_at"] is not None and reloader.healthy_bundle


async def test_an_edited_policy_is_served_without_a_restart(
    reloader: PolicyReloader, engine: EmbeddedEngine, tree: tuple[Path, Path], recorder: Recorder
) -> None:
    (tree[0] / "entitlements.rego").write_text(decision_rego("v2"))

    await _until(lambda: _reason(engine), "v2")

    assert recorder.reloads == [recorder.reloads[0], engine.revision]
    assert reloader.status()["reloads_ok"] == 2


async def test_a_broken_policy_keeps_the_last_good_one_until_it_is_fixed(
    reloader: PolicyReloader, engine: EmbeddedEngine, tree: tuple[Path, Path], recorder: Recorder
) -> None:
    good_revision = engine.revision
    with capture_logs() as logs:
        (tree[0] / "entitlements.rego").write_text("package tiergate.entitlements\n\ndecision := {\n")
        await _until(lambda: reloader.status()["reloads_failed"], 1)

    status = reloader.status()
    assert "entitlements.rego" in status["last_error"] and status["last_error_at"] is not None
    assert not reloader.healthy_bundle
    assert engine.revision == good_revision and await _reason(engine) == "v1"
    assert recorder.failures == [status["last_error"]]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["policy_reload_failed"]

    (tree[0] / "entitlements.rego").write_text(decision_rego("v3"))
    await _until(lambda: _reason(engine), "v3")

    assert reloader.healthy_bundle and reloader.status()["last_error"] is None


async def test_a_broken_catalog_keeps_the_last_good_bundle(
    reloader: PolicyReloader, engine: EmbeddedEngine, tree: tuple[Path, Path]
) -> None:
    good_revision = engine.revision

    tree[1].write_text("default_tier: nope\ntiers: {}\n")
    await _until(lambda: reloader.status()["reloads_failed"], 1)

    assert "plans.yaml" in reloader.status()["last_error"]
    assert engine.revision == good_revision


async def test_a_configmap_style_symlink_swap_is_picked_up(tmp_path: Path, engine: EmbeddedEngine) -> None:
    # Kubernetes mounts a ConfigMap as name -> ..data/name, ..data -> ..<timestamp>/, and swaps ..data.
    mount, plans = tmp_path / "mount", tmp_path / "plans.yaml"
    plans.write_text(PLANS_YAML)
    _configmap_version(mount, "..v1", decision_rego("v1"))
    (mount / "entitlements.rego").symlink_to("..data/entitlements.rego")
    watcher = PolicyReloader(engine, mount, plans)
    await watcher.start()
    try:
        _configmap_version(mount, "..v2", decision_rego("v2"))
        await _until(lambda: _reason(engine), "v2")
        assert list(watcher.bundle.modules if watcher.bundle else []) == ["entitlements.rego"]
    finally:
        await watcher.stop()


async def test_start_raises_when_the_first_load_fails(
    engine: EmbeddedEngine, tree: tuple[Path, Path], recorder: Recorder
) -> None:
    (tree[0] / "entitlements.rego").write_text("package tiergate.entitlements\n\ndecision := {\n")
    watcher = PolicyReloader(engine, *tree, on_failure=recorder.failures.append)

    with pytest.raises(PolicyError, match=r"entitlements\.rego"):
        await watcher.start()

    assert engine.revision is None and watcher.status()["reloads_failed"] == 1
    await watcher.stop()


async def test_reload_now_reports_failure_and_skips_unchanged_bundles(
    engine: EmbeddedEngine, tree: tuple[Path, Path], recorder: Recorder
) -> None:
    watcher = PolicyReloader(engine, *tree, on_reload=recorder.reloads.append)
    with pytest.raises(CatalogError):
        await PolicyReloader(engine, tree[0], tree[1].with_name("missing.yaml")).start()

    assert await watcher.reload_now() is True
    assert await watcher.reload_now() is True  # same revision: no second swap

    assert len(recorder.reloads) == 1


def _configmap_version(mount: Path, version: str, source: str) -> None:
    (mount / version).mkdir(parents=True)
    (mount / version / "entitlements.rego").write_text(source)
    (mount / "..data_tmp").symlink_to(version)
    os.replace(mount / "..data_tmp", mount / "..data")  # the atomic swap kubelet does


async def _reason(engine: EmbeddedEngine) -> Any:
    return (await engine.evaluate(DECISION_PATH, {}))["reason"]


async def _until(probe: Callable[[], Any], expected: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GIVE_UP_S
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value == expected or loop.time() > deadline:
            assert value == expected
            return
        await asyncio.sleep(0.02)
