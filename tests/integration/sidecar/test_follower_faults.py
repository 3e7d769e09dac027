"""The follower never dies silently: a full disk, a locked replica, an import on a running sidecar."""

from __future__ import annotations

import asyncio
import errno
import json
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from click.testing import CliRunner

from tests.fake_feed import FakeFeed
from tests.integration.sidecar.conftest import SidecarClient
from tests.integration.sidecar.test_follower import (
    Follow,
    eventually,
    feed,
    feed_server,
    follow,
    pro,
    sso,
    until_allowed,
)
from tiergate.cli import main
from tiergate.sidecar.state import DECISIONS, SETTINGS

__all__ = ["feed", "feed_server", "follow"]  # fixtures shared with test_follower


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that can really fill up (root only; skipped where mount is refused)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs to fill (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


async def status(client: SidecarClient) -> dict[str, Any]:
    body: dict[str, Any] = await (await client.get("/v1/status")).json()
    return body


async def metric(client: SidecarClient, sample: str) -> float:
    text = await (await client.get("/metrics")).text()
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert found, f"{sample} not exported"
    return float(found.group(1))


def many(feed: FakeFeed, prefix: str, n: int) -> None:
    for i in range(n):
        feed.upsert(pro(f"{prefix}{i}"))


async def test_a_full_disk_is_shown_and_the_follower_recovers(
    small_disk: Path, feed: FakeFeed, follow: Follow
) -> None:
    feed.upsert(pro("acme"))
    client = await follow(small_disk, follower_backoff_max_s=0.3)
    await until_allowed(client, "acme")
    filler = fill(small_disk)
    many(feed, "full", 3000)  # far more pages than the replica's write-ahead log holds

    async def failing_loudly() -> bool:
        daemon = (await status(client))["daemon"]
        return daemon["failing"] == "replica" and not daemon["connected"]

    await eventually(failing_loudly)
    daemon = (await status(client))["daemon"]
    assert "full" in daemon["last_error"], daemon
    # Answers come from memory: a full volume must not take the pod out of its Service. The body
    # and a metric say so; the staleness budget still bounds how old the answers may get.
    ready = await client.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and "follower" not in body["failing"], body
    assert "disk is full" in body["warnings"]["disk_full"], body
    assert await metric(client, "tiergate_replica_disk_full") == 1
    assert await metric(client, 'tiergate_follower_failures_total{kind="replica"}') >= 1
    assert await metric(client, "tiergate_follower_connected") == 0
    assert (await sso(client, "acme"))["allow"] is True  # still answering from what it has

    filler.unlink()  # space comes back: the follower catches up on its own
    await until_allowed(client, "full2999")
    assert (await client.get("/readyz")).status == 200
    assert (await status(client))["daemon"]["failing"] is None
    assert await metric(client, "tiergate_follower_connected") == 1
    assert await metric(client, "tiergate_replica_disk_full") == 0


async def test_a_locked_replica_and_an_import_on_a_running_sidecar(
    tmp_path: Path, feed: FakeFeed, follow: Follow, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed.upsert(pro("acme"))
    crashed = tmp_path / ".snapshot-crashed"  # a download a crash left behind
    crashed.mkdir()
    (crashed / "snapshot.ndjson").write_bytes(b"{}" * 1000)
    client = await follow(follower_backoff_max_s=0.3, replica_busy_timeout_s=0.1)
    config = client.app[SETTINGS]
    await until_allowed(client, "acme")
    assert not crashed.exists()

    other = sqlite3.connect(config.replica_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock longer than the busy timeout
    feed.upsert(pro("globex"))

    async def locked_out() -> bool:
        daemon = (await status(client))["daemon"]
        return daemon["failing"] == "replica" and "locked" in (daemon["last_error"] or "")

    await eventually(locked_out)
    other.execute("ROLLBACK")
    other.close()
    await until_allowed(client, "globex")

    # `tiergate replica import` (documented) while the follower keeps writing
    document = tmp_path / "import.json"
    accounts = [{**pro(f"imp{i}"), "version": 0} for i in range(2000)]
    document.write_text(
        json.dumps({"accounts": [{k: v for k, v in a.items() if k != "version"} for a in accounts]})
    )
    monkeypatch.setenv("TIERGATE_REPLICA_PATH", str(config.replica_path))
    importing = asyncio.to_thread(CliRunner().invoke, main, ["replica", "import", str(document)])
    many(feed, "during", 200)
    result = await importing
    assert result.exit_code == 0, result.output
    feed.upsert(pro("after"))
    await until_allowed(client, "after")
    assert (await status(client))["daemon"]["failing"] is None


async def test_staleness_follows_the_monotonic_clock_not_the_wall_clock(
    feed: FakeFeed, feed_server: TestServer, follow: Follow
) -> None:
    """With the daemon down and the wall clock set back an hour, the sidecar once said
    `stale: false`, age 0, for the whole hour."""
    feed.upsert(pro("acme"))
    client = await follow(staleness_budget_s=0.5)
    await until_allowed(client, "acme")
    service = client.app[DECISIONS]
    wall = service.clock
    service.clock = lambda: wall() - 3600  # someone set the clock back an hour
    await feed_server.close()

    async def stale() -> bool:
        decision = await sso(client, "acme")
        return bool(decision["stale"] and decision["allow"])

    await eventually(stale)
    body = await status(client)
    assert body["stale"] is True and body["replica"]["age_seconds"] > 0.5
    assert await metric(client, "tiergate_replica_age_seconds") > 0.5
