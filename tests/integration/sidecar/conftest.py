"""A sidecar app on a temp replica filled with one tenant per interesting state, real policies."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tiergate.catalog import load_catalog
from tiergate.periods import calendar_month, rfc3339
from tiergate.sidecar.app import create_app
from tiergate.sidecar.replica.store import ReplicaWriter, open_replica, parse_replica_document
from tiergate.sidecar.settings import SidecarSettings

ROOT = Path(__file__).parents[3]
# Every feature of the sample catalog (plans/plans.yaml), which these sidecars serve.
SAMPLE_FEATURES = sorted(load_catalog(ROOT / "plans" / "plans.yaml").features)
NOW = datetime.now(UTC)


def ago(days: float) -> str:
    return rfc3339(NOW - timedelta(days=days)) or ""


def ahead(days: float) -> str:
    return rfc3339(NOW + timedelta(days=days)) or ""


PERIOD = {"current_period_start": ago(10), "current_period_end": ahead(20)}
MONTH_START = rfc3339(calendar_month(NOW)[0])

ACCOUNTS: list[dict[str, Any]] = [
    {"tenant": "pro-active", "tier": "pro", "status": "active", "quantity": 5, **PERIOD},
    {"tenant": "starter-active", "tier": "starter", "status": "active", **PERIOD},
    {"tenant": "ent-active", "tier": "enterprise", "status": "active", **PERIOD},
    {
        "tenant": "pro-trialing",
        "tier": "pro",
        "status": "trialing",
        "trial_end": ahead(3),
        **PERIOD,
    },
    {
        "tenant": "pro-trial-over",
        "tier": "pro",
        "status": "trialing",
        "trial_end": ago(1),
        **PERIOD,
    },
    {
        "tenant": "pro-canceling",
        "tier": "pro",
        "status": "active",
        "cancel_at_period_end": True,
        **PERIOD,
    },
    {
        "tenant": "pro-grace",
        "tier": "pro",
        "status": "past_due",
        "past_due_since": ago(2),
        **PERIOD,
    },
    {
        "tenant": "pro-overdue",
        "tier": "pro",
        "status": "past_due",
        "past_due_since": ago(30),
        **PERIOD,
    },
    {"tenant": "pro-unpaid", "tier": "pro", "status": "unpaid", **PERIOD},
    {"tenant": "pro-paused", "tier": "pro", "status": "paused", **PERIOD},
    {"tenant": "pro-incomplete", "tier": "pro", "status": "incomplete", **PERIOD},
    {"tenant": "pro-canceled", "tier": "pro", "status": "canceled", **PERIOD},
    {"tenant": "pro-expired", "tier": "pro", "status": "incomplete_expired", **PERIOD},
    {"tenant": "legacy-price", "tier": "price_legacy_2019", "status": "active", **PERIOD},
]
USAGE: list[dict[str, Any]] = [
    {
        "tenant": "pro-active",
        "code": "api_calls",
        "period_start": PERIOD["current_period_start"],
        "value": 99_999,
    },
    {"tenant": "free-heavy", "code": "api_calls", "period_start": MONTH_START, "value": 1000},
    {"tenant": "free-light", "code": "api_calls", "period_start": MONTH_START, "value": 10},
    # A previous period's counter must not count now.
    {"tenant": "starter-active", "code": "api_calls", "period_start": ago(40), "value": 10**6},
]


def write_replica(path: Path, accounts: list[dict[str, Any]], usage: list[dict[str, Any]]) -> None:
    import json

    document = parse_replica_document(json.dumps({"accounts": accounts, "usage": usage}))
    db = open_replica(path)
    ReplicaWriter(db).replace_all(document.accounts, document.usage, data_as_of=datetime.now(UTC))
    db.close()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A private copy of policies/ and plans/, so tests may edit them."""
    target = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", target)
    shutil.copy(ROOT / "plans" / "plans.yaml", tmp_path / "plans.yaml")
    return target


@pytest.fixture
def settings(tmp_path: Path, policy_dir: Path) -> SidecarSettings:
    replica = tmp_path / "replica.db"
    write_replica(replica, ACCOUNTS, USAGE)
    return SidecarSettings(
        replica_path=replica,
        plans=tmp_path / "plans.yaml",
        policies=policy_dir,
        decision_log_sample=0.0,
    )


SidecarClient = TestClient[web.Request, web.Application]
ClientFactory = Callable[..., Awaitable[SidecarClient]]


@pytest.fixture
async def client(aiohttp_client: ClientFactory, settings: SidecarSettings) -> SidecarClient:
    return await aiohttp_client(create_app(settings))
