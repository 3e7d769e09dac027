"""The daemon's reading of a plan (outbound events, usage alerts) agrees with the shipped policy's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.policies.test_decisions_table import account, decide, engine
from tiergate.catalog import load_catalog
from tiergate.sync_daemon.mirror.store import MirrorAccount
from tiergate.sync_daemon.outbound.events import plan_value, written

__all__ = ["engine"]  # the fixture: the interpreter and the compiled VM

ROOT = Path(__file__).resolve().parents[3]
CATALOG = load_catalog(ROOT / "plans" / "plans.yaml")
HELD = (("extra_storage", 2), ("audit_pack", 1))
PLANS = [
    pytest.param(
        tier, status, quantity, addons, id=f"{tier}-{status}-x{quantity}{'-addons' if addons else ''}"
    )
    for tier in ("starter", "pro", "enterprise")
    for status, quantity, addons in (("active", 2, ()), ("active", 40, HELD), ("canceled", 2, HELD))
]


def as_policy_reads(value: bool | dict[str, int]) -> tuple[bool, int | None]:
    """(allowed, limit) of a first unit, as a decision reports them."""
    if value is False:
        return False, None
    return True, value.get("limit") if isinstance(value, dict) else None


@pytest.mark.parametrize(("tier", "status", "quantity", "addons"), PLANS)
def test_every_feature_of_the_plan_reads_as_the_policy_decides(
    engine: Any, tier: str, status: str, quantity: int, addons: tuple[tuple[str, int], ...]
) -> None:
    mirrored = MirrorAccount(tenant="t_1", tier=tier, status=status, quantity=quantity, addons=addons)
    replicated = account(tier, status, quantity=quantity, addons=dict(addons))
    for feature in sorted(CATALOG.features):
        decision: dict[str, Any] = decide(engine, replicated, feature)
        expected = as_policy_reads(written(plan_value(CATALOG, mirrored, feature)))
        assert (decision["allow"], decision["limit"]) == expected, feature
