"""A replica damaged under a running sidecar: found by a read, set aside, downloaded again.

A real daemon (mirror on disk, HTTP on 127.0.0.1) and a sidecar following it, in process. The
test damages the replica file's pages on disk while the sidecar runs, makes the daemon send a
change, and shows: no check and no status answer is a 500 meanwhile, the damage is in
/v1/status, /metrics and the log, the damaged file is kept, a new snapshot replaces it, and the
change reaches the answers.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.integration.sidecar.conftest import ClientFactory, SidecarClient
from tests.integration.usage.conftest import DaemonServer, eventually, sidecar_settings, start_daemon
from tiergate.errors import ReplicaNotReadyError
from tiergate.models import Account
from tiergate.sidecar.app import create_app
from tiergate.sidecar.replica import damage
from tiergate.sidecar.replica.store import ReplicaReader, ReplicaWriter, open_replica
from tiergate.sync_daemon.mirror.store import MirrorAccount

TENANTS = 400  # enough rows for the accounts table to span many pages under an interior root
START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


def account(tenant: str, tier: str = "pro") -> MirrorAccount:
    return MirrorAccount(
        tenant=tenant,
        tier=tier,
        status="active",
        current_period_start=START,
        current_period_end=START + timedelta(days=30),
    )


async def seed(daemon: DaemonServer) -> None:
    def put_all(txn: Any) -> None:
        for i in range(TENANTS):
            txn.put_account(account(f"t{i:03}"))

    await daemon.mirror.transact(put_all)


def checkpoint(path: Path) -> None:
    """Move every committed page from the write-ahead log into the file, so the file is what a
    reader reads (a replica that has run a while looks like this)."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] != 0:
            pass  # busy: a reader held a snapshot; try again
    finally:
        conn.close()


def damage_pages(path: Path) -> None:
    """Overwrite every page after the first (header and schema stay) with bytes no page holds."""
    with path.open("r+b") as handle:
        page_size = int.from_bytes(handle.read(100)[16:18], "big")
        size = handle.seek(0, 2)
        handle.seek(page_size)
        handle.write(b"\xde\xad\xbe\xef" * ((size - page_size) // 4))


async def status(client: SidecarClient) -> dict[str, Any]:
    response = await client.get("/v1/status")
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def metric(client: SidecarClient, name: str) -> float:
    text = await (await client.get("/metrics")).text()
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


async def keep_checking(client: SidecarClient, stop: asyncio.Event) -> Counter[int]:
    """Checks of every tenant, round after round, until told to stop: their statuses."""
    statuses: Counter[int] = Counter()
    i = 0
    while not stop.is_set():
        response = await client.get("/v1/check", params={"tenant": f"t{i % TENANTS:03}", "feature": "sso"})
        statuses[response.status] += 1
        i += 1
        await asyncio.sleep(0.005)
    return statuses


async def test_a_replica_damaged_at_run_time_is_set_aside_and_downloaded_again(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    daemon = await start_daemon(tmp_path)
    try:
        await seed(daemon)
        config = sidecar_settings(tmp_path, daemon.url, staleness_budget_s=2.0)
        client = await aiohttp_client(create_app(config))

        async def all_loaded() -> bool:
            return bool((await status(client))["replica"]["accounts"] == TENANTS)

        await eventually(all_loaded, within=30.0)
        checkpoint(config.replica_path)
        damage_pages(config.replica_path)
        stop = asyncio.Event()
        with capture_logs() as logs:
            checking = asyncio.create_task(keep_checking(client, stop))
            await daemon.put(account("t000", tier="starter"))  # a change to apply to a file it cannot read

            async def recovered() -> bool:
                found = (await status(client))["replica"]["damage"]
                return bool(found["recoveries"] == 1 and found["state"] == "ok")

            await eventually(recovered, within=60.0)
            stop.set()
            statuses = await checking

        assert set(statuses) == {200}, f"every check answered from memory meanwhile: {statuses}"
        found = (await status(client))["replica"]["damage"]
        assert found["detections"] == 1
        assert found["detected_by"] in {"refresh", "apply", "reload", "follower"}
        assert "malformed" in found["problem"] or "not a database" in found["problem"]
        kept = sorted(config.replica_path.parent.glob("replica.db.damaged-*"))
        assert [str(p) for p in kept if not p.name.endswith(damage.SIDE_FILES)] == [found["moved_to"]]
        assert damage.problem(config.replica_path) is None, "the new file is whole"
        events = [entry["event"] for entry in logs]
        assert "replica_damaged_at_run_time" in events and "replica_damage_recovered" in events
        assert await metric(client, "tiergate_replica_damage_detected_total") == 1.0
        assert await metric(client, "tiergate_replica_damage_recovered_total") == 1.0
        assert await metric(client, "tiergate_replica_damaged") == 0.0

        async def change_arrived() -> bool:
            response = await client.get("/v1/check", params={"tenant": "t000", "feature": "sso"})
            return bool((await response.json())["tier"] == "starter")

        await eventually(change_arrived)
        assert (await status(client))["replica"]["accounts"] == TENANTS

        async def ready() -> bool:
            return (await client.get("/readyz")).status == 200

        await eventually(ready)
    finally:
        await daemon.server.close()


def write_accounts(path: Path, tenants: list[str]) -> None:
    db = open_replica(path)
    rows = [Account.model_validate({"tenant": t, "tier": "pro", "status": "active"}) for t in tenants]
    ReplicaWriter(db).replace_all(rows, [], data_as_of=datetime.now(UTC))
    db.close()


def test_a_read_only_reader_follows_the_file_its_owner_downloaded_again(tmp_path: Path) -> None:
    """An app's LocalDecisions reads the sidecar's file: once the sidecar has set a damaged file
    aside and a new snapshot is in place, the app reads the new file (not the renamed one)."""
    path = tmp_path / "replica.db"
    write_accounts(path, ["old"])
    reader = ReplicaReader(path, read_only=True)
    try:
        assert reader.account("old") is not None
        damage_pages(path)  # pages the reader has not cached
        with pytest.raises(ReplicaNotReadyError, match="damaged"):  # read from the file: damage met,
            reader.tenant_of_subscription("sub_x")  # recorded, and said (a 503), never a 500
        assert reader.damage.state == "damaged"
        moved = damage.move_aside(path, "test")
        open_replica(path).close()  # the owner's new, still empty file: keep the old one meanwhile
        assert reader.refresh() is False and reader.damage.state == "damaged"
        write_accounts(path, ["new"])  # the snapshot is in
        assert reader.refresh() is True
        assert reader.account("new") is not None and reader.account("old") is None
        assert (reader.damage.state, reader.damage.recoveries) == ("ok", 1)
        assert moved.exists()
    finally:
        reader.close()
