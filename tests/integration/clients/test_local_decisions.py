"""LocalDecisions answers as the sidecar does: 10k random checks over every status, with pending usage."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.clients.conftest import ROOT, RunningSidecar
from tests.integration.sidecar.conftest import ACCOUNTS, SAMPLE_FEATURES, USAGE, write_replica
from tiergate.client import AsyncTiergateClient, Decision
from tiergate.errors import ReplicaError
from tiergate.sidecar.local import LocalDecisions
from tiergate.sidecar.replica.store import ReplicaWriter, open_replica, parse_replica_document

FEATURES = [*SAMPLE_FEATURES, "teleport"]  # and one the catalog lacks
QUANTITIES = [1, 1, 1, 2, 3, 10, 100, 990, 1000, 99_999, 1_000_000]
COMPARED = ("allow", "reason", "tier", "limit", "used", "remaining", "valid_until", "stale")


def answer(decision: Decision) -> tuple[object, ...]:
    return tuple(getattr(decision, name) for name in COMPARED)


@pytest.fixture
async def local(sidecar: RunningSidecar) -> AsyncIterator[LocalDecisions]:
    async with LocalDecisions(
        replica_path=sidecar.home / "replica.db",
        plans=ROOT / "plans" / "plans.yaml",
        policies=sidecar.home / "policies",
    ) as local:
        yield local


async def test_ten_thousand_random_checks_agree_with_the_sidecar(
    sidecar: RunningSidecar, local: LocalDecisions
) -> None:
    rng = random.Random(16)
    pending = [f"local-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    tenants = [a["tenant"] for a in ACCOUNTS] + ["nobody", "free-heavy", "free-light", *pending]
    disagreements: list[tuple[tuple[str, str, int], tuple[object, ...], tuple[object, ...]]] = []
    async with AsyncTiergateClient(sidecar.url, timeout_s=30) as client:
        for _ in range(10):
            # Usage this round, through the sidecar: local decisions must count it at once.
            events = [
                {"external_customer_id": rng.choice(pending), "code": rng.choice(["api_calls", "exports"])}
                for _ in range(rng.randint(1, 50))
            ]
            await client.record_usage(events)
            await client.reserve(rng.choice(pending), "storage_gb", rng.randint(1, 2))
            checks = [
                (rng.choice(tenants), rng.choice(FEATURES), rng.choice(QUANTITIES)) for _ in range(1000)
            ]
            remote = await client.check_batch(checks)
            mine = await local.check_batch(checks)
            disagreements += [
                (c, answer(r), answer(m))
                for c, r, m in zip(checks, remote, mine, strict=True)
                if answer(r) != answer(m)
            ]
    assert disagreements == [], disagreements[:5]
    reasons = {r.reason for r in remote}
    assert {"ok", "limit_exceeded", "not_in_plan", "unknown_feature"} <= reasons


async def test_read_your_writes_through_the_sidecar(sidecar: RunningSidecar, local: LocalDecisions) -> None:
    tenant = f"local-{uuid.uuid4().hex[:8]}"
    assert (await local.check(tenant, "exports")).used == 0
    async with AsyncTiergateClient(sidecar.url, timeout_s=10) as client:
        await client.reserve(tenant, "exports", 3)
        assert (await local.check(tenant, "exports")).used == 3
        await client.record_usage({"external_customer_id": tenant, "code": "exports"})
    decision = await local.check(tenant, "exports", 7)
    assert (decision.used, decision.allow, decision.reason) == (4, False, "limit_exceeded")


async def test_follows_the_replica_and_never_writes_it(tmp_path: Path) -> None:
    replica = tmp_path / "replica.db"
    write_replica(replica, ACCOUNTS, USAGE)
    replica.chmod(0o444)  # what a read-only mount looks like (root ignores it: the URI mode=ro enforces it)
    async with LocalDecisions(
        replica_path=replica, plans=ROOT / "plans" / "plans.yaml", policies=ROOT / "policies"
    ) as local:
        assert (await local.check("starter-active", "sso")).reason == "not_in_plan"
        replica.chmod(0o644)
        upgraded = [dict(a, tier="pro") if a["tenant"] == "starter-active" else a for a in ACCOUNTS]
        document = parse_replica_document(json.dumps({"accounts": upgraded, "usage": USAGE}))
        db = open_replica(replica)
        ReplicaWriter(db).replace_all(document.accounts, document.usage, data_as_of=datetime.now(UTC))
        db.close()
        decision = await local.check("starter-active", "sso")
        assert (decision.allow, decision.tier) == (True, "pro")
    with pytest.raises(ReplicaError, match="does not exist"):
        await LocalDecisions(
            replica_path=tmp_path / "none.db", plans=ROOT / "plans" / "plans.yaml", policies=ROOT / "policies"
        ).open()
