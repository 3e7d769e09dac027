"""A metric with its own window (`window: minute`, leased) enforced by 2 sidecars following one
daemon, walked through 5 windows on a controlled clock (the sidecars' decision clock, which stamps
their usage events, and the daemon's lease clock): allowed per window never passes the limit, the
counters are kept per window, and an answer is valid until its window ends (docs/adr/0047)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.integration.usage.conftest import ROOT, SidecarClient, SidecarFactory, start_daemon
from tiergate.periods import rfc3339
from tiergate.sidecar.state import DECISIONS
from tiergate.sync_daemon.leases.api import LEASE_CLOCK
from tiergate.sync_daemon.mirror.store import Sql

LIMIT = 10
WINDOWS = 5


def minute_catalog(tmp_path: Path) -> Path:
    text = (ROOT / "plans" / "plans.yaml").read_text(encoding="utf-8")
    metric, limit = "  api_calls: {aggregation: count}\n", "      api_calls: {limit: 1000}\n"
    assert metric in text and limit in text
    text = text.replace(metric, "  api_calls: {aggregation: count, enforcement: leased, window: minute}\n")
    text = text.replace(limit, f"      api_calls: {{limit: {LIMIT}}}\n", 1)
    path = tmp_path / "plans-minute.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


async def reserve(client: SidecarClient, tenant: str, tid: str) -> dict[str, Any]:
    body = {"tenant": tenant, "feature": "api_calls", "reserve": True, "transaction_id": tid}
    response = await client.post("/v1/check", json=body)
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


def window_counters(sql: Sql, tenant: str) -> dict[str, int]:
    rows = sql.execute(
        "SELECT period_start, value FROM usage WHERE tenant = ? AND code = 'api_calls'", [tenant]
    )
    return {str(start): int(value) for start, value in rows.fetchall()}


async def test_a_minute_window_holds_across_two_sidecars_for_five_windows(
    tmp_path: Path, make_sidecar: SidecarFactory
) -> None:
    plans = minute_catalog(tmp_path)
    daemon = await start_daemon(tmp_path, plans=plans)
    # Ten minutes ago, on a minute's first second: every event is in the past for the daemon.
    start = datetime.fromtimestamp(time.time() - 600, UTC).replace(second=1, microsecond=0)
    clock = Clock(start.timestamp())
    daemon.server.app[LEASE_CLOCK].read = clock
    try:
        sidecars = [
            await make_sidecar(daemon.url, plans=plans, replica_path=tmp_path / f"sidecar{n}" / "replica.db")
            for n in range(2)
        ]
        for sidecar in sidecars:
            sidecar.app[DECISIONS].clock = clock  # an attribute of the service, not of the app
        tenant = "t_minute"
        allowed_per_window: dict[str, int] = {}
        for w in range(WINDOWS):
            window_start = start.replace(second=0) + timedelta(minutes=w)
            clock.at = window_start.timestamp() + 1
            answers = await asyncio.gather(
                *(reserve(sidecars[n % 2], tenant, f"w{w}-{n}") for n in range(40))
            )
            allowed = sum(a["reservation"]["reserved"] for a in answers)
            allowed_per_window[rfc3339(window_start) or ""] = allowed
            assert allowed == LIMIT  # exactly the window's limit, across both sidecars
            check = await (await sidecars[0].get(f"/v1/check?tenant={tenant}&feature=api_calls")).json()
            assert check["valid_until"] == rfc3339(
                window_start + timedelta(minutes=1)
            )  # the answer ends with its window
        counters: dict[str, int] = {}

        async def delivered() -> bool:
            counters.update(await daemon.mirror.read(lambda sql: window_counters(sql, tenant)))
            return counters == allowed_per_window

        deadline = time.monotonic() + 15
        while not await delivered():
            assert time.monotonic() < deadline, (counters, allowed_per_window)
            await asyncio.sleep(0.05)
        assert all(value <= LIMIT for value in counters.values())
    finally:
        await daemon.server.close()
