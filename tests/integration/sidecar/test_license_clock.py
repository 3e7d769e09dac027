"""A signed license in the sidecar's own pieces (the license source, the replica, the decision
service with its materialised answers, the real policies on the embedded engine) with the clock
in the test's hands: validity, grace, expiry, a clock set before the license's issue time, and an
import that tries to replace the licensed account."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tiergate.license import LicenseClaims, issue, load_private_key, write_key_pair
from tiergate.models import Account, Decision
from tiergate.policy.bundle import load_bundle
from tiergate.policy.embedded import EmbeddedEngine
from tiergate.sidecar.decisions.cache import DecisionCache
from tiergate.sidecar.decisions.service import DecisionService
from tiergate.sidecar.metrics import SidecarMetrics
from tiergate.sidecar.replica.license_source import LicenseSource
from tiergate.sidecar.replica.store import ReplicaReader, ReplicaWriter, open_replica
from tiergate.sidecar.usage.ledger import UsageLedger

ROOT = Path(__file__).parents[3]
ISSUED = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
NOT_AFTER = datetime(2027, 1, 1, tzinfo=UTC)
GRACE_UNTIL = NOT_AFTER + timedelta(days=14)


class Clock:
    def __init__(self, moment: datetime) -> None:
        self.now = moment.timestamp()

    def set(self, moment: datetime) -> None:
        self.now = moment.timestamp()

    def __call__(self) -> float:
        return self.now


class Licensed:
    """The license installed in a replica and decided on, all on one clock."""

    def __init__(self, source: LicenseSource, service: DecisionService, reader: ReplicaReader) -> None:
        self.source = source
        self.service = service
        self.reader = reader

    async def check(self, feature: str, quantity: int = 1) -> Decision:
        # Off the loop, a new generation is read at once (on it, a background reload would be).
        await asyncio.to_thread(self.reader.refresh)
        return await self.service.decide("acme", feature, quantity)


@pytest.fixture
async def licensed(tmp_path: Path) -> AsyncIterator[tuple[Licensed, Clock]]:
    write_key_pair(tmp_path / "keys")
    claims = LicenseClaims(
        lid="lic_clock",
        sub="acme",
        tier="pro",
        seats=5,
        iat=int(ISSUED.timestamp()),
        exp=int(NOT_AFTER.timestamp()),
        grace=14 * 86400,
    )
    license = tmp_path / "license.jwt"
    license.write_text(issue(claims, load_private_key(tmp_path / "keys" / "license.key")))
    clock = Clock(ISSUED + timedelta(days=30))
    replica = tmp_path / "replica.db"
    source = LicenseSource(license, [tmp_path / "keys" / "license.pub"], replica, clock=clock)
    source.start()
    reader = ReplicaReader(replica)
    engine = EmbeddedEngine(compiled=True)
    await engine.load(load_bundle(ROOT / "policies", ROOT / "plans" / "plans.yaml"))
    service = DecisionService(
        reader,
        engine,
        SidecarMetrics(replica_age=lambda: 0.0),
        cache=DecisionCache(10_000, ttl_s=0.0),  # materialised answers: time alone must expire them
        ledger=UsageLedger(),
        log_sample=0.0,
        log_denies=False,
        clock=clock,
    )
    yield Licensed(source, service, reader), clock
    reader.close()
    await engine.close()


async def test_valid_then_grace_then_expired_as_the_clock_moves(licensed: tuple[Licensed, Clock]) -> None:
    it, clock = licensed
    valid = await it.check("sso")
    assert (valid.allow, valid.reason, valid.tier, valid.license_grace_until) == (True, "ok", "pro", None)
    assert it.source.state() == "valid"
    clock.set(NOT_AFTER - timedelta(seconds=1))  # the last second of validity
    assert (await it.check("sso")).license_grace_until is None
    clock.set(NOT_AFTER)  # a cached answer must not outlive the not-after instant
    grace = await it.check("sso")
    assert (grace.allow, grace.reason, grace.license_grace_until) == (True, "ok", "2027-01-15T00:00:00Z")
    assert grace.valid_until == "2027-01-15T00:00:00Z"
    assert it.source.state() == "grace"
    clock.set(GRACE_UNTIL - timedelta(seconds=1))
    assert (await it.check("sso")).allow is True
    clock.set(GRACE_UNTIL)
    for feature in ("sso", "dashboards", "api_calls", "no_such_feature"):
        expired = await it.check(feature)
        assert (expired.allow, expired.reason, expired.tier) == (False, "license_expired", "pro"), feature
    assert it.source.state() == "expired"


async def test_a_clock_before_the_issue_time_is_reported_and_extends_nothing(
    licensed: tuple[Licensed, Clock],
) -> None:
    it, clock = licensed
    clock.set(ISSUED)
    at_issue = await it.check("api_calls")
    clock.set(ISSUED - timedelta(days=400))  # set back more than a year, into an earlier usage period
    with capture_logs() as logs:
        it.source.poll()
        it.source.poll()  # said once, not at every poll
    behind = await it.check("api_calls")
    assert [e["event"] for e in logs] == ["license_clock_behind"]
    assert it.source.status.clock_behind is True
    assert it.source.as_dict()["clock_behind"] is True
    assert "license_clock" in it.source.warnings()
    # decided as at the issue time: the same usage period, limits and expiry, nothing more
    assert (behind.allow, behind.limit, behind.valid_until) == (
        at_issue.allow,
        at_issue.limit,
        at_issue.valid_until,
    )
    assert behind.valid_until == "2026-04-01T00:00:00Z"  # the issue month's end, not an older month's
    clock.set(ISSUED + timedelta(days=1))
    it.source.poll()
    assert it.source.status.clock_behind is False


async def test_an_import_over_a_licensed_replica_is_undone_at_the_next_poll(
    licensed: tuple[Licensed, Clock], tmp_path: Path
) -> None:
    it, _ = licensed
    db = open_replica(tmp_path / "replica.db")
    ReplicaWriter(db).replace_all(  # what `tiergate replica import` of an edited account does
        [Account(tenant="acme", tier="enterprise", status="active", quantity=500)], [], data_as_of=ISSUED
    )
    db.close()
    assert (await it.check("audit_log")).allow is True  # enterprise, and no license dates any more
    with capture_logs() as logs:
        assert it.source.poll() is True
    assert [e["event"] for e in logs] == ["license_reinstalled", "license_renewed"]
    back = await it.check("audit_log")
    assert (back.allow, back.tier) == (False, "pro")
    assert it.reader.meta.license is not None and it.reader.meta.license["id"] == "lic_clock"
    assert it.source.poll() is False  # nothing changed since
