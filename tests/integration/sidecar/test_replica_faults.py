"""A damaged replica is a cache, not a crash; before the first snapshot nobody is told "free"."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.fake_feed import FakeFeed
from tests.integration.sidecar.conftest import ClientFactory
from tests.integration.sidecar.test_follower import eventually, feed, feed_server, follower_settings, pro, sso
from tiergate.errors import ReplicaError
from tiergate.models import Account
from tiergate.sidecar.app import create_app
from tiergate.sidecar.replica.store import ReplicaWriter, open_replica
from tiergate.sidecar.settings import SidecarSettings

__all__ = ["feed", "feed_server"]  # fixtures shared with test_follower


def damage_header(path: Path) -> None:
    path.write_bytes(b"this is not SQLite at all" + b"\0" * 4000)


def truncate_mid_file(path: Path) -> None:
    db = open_replica(path)
    accounts = [Account.model_validate({**pro(f"old{i}"), "version": 0}) for i in range(3000)]
    ReplicaWriter(db).replace_all(accounts, [], data_as_of=datetime.now(UTC))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size // 2)


def damaged_copies(directory: Path) -> list[Path]:
    return list(directory.glob("followed.db.damaged-*"))


@pytest.mark.parametrize("damage", [damage_header, truncate_mid_file])
async def test_a_damaged_replica_is_set_aside_and_downloaded_again(
    aiohttp_client: ClientFactory,
    settings: SidecarSettings,
    tmp_path: Path,
    feed: FakeFeed,
    feed_server: TestServer,
    damage: object,
) -> None:
    feed.upsert(pro("acme"))
    config = follower_settings(settings, tmp_path, str(feed_server.make_url("/")))
    assert callable(damage)
    damage(config.replica_path)
    client = await aiohttp_client(create_app(config))  # once a crash loop: exit 1 at start

    async def allowed() -> bool:
        return bool((await sso(client, "acme"))["allow"])

    await eventually(allowed)
    kept = damaged_copies(tmp_path)
    assert kept, "the damaged file is kept for inspection"
    assert feed.snapshots_served == 1
    assert (await client.get("/readyz")).status == 200


async def test_a_damaged_replica_in_static_mode_refuses_to_start(settings: SidecarSettings) -> None:
    """No daemon to download it from: a clear refusal naming the way back (an import)."""
    damage_header(settings.replica_path)
    runner = web.AppRunner(create_app(settings))
    with pytest.raises(ReplicaError, match=r"damaged.*tiergate replica import"):
        await runner.setup()
    await runner.cleanup()


@pytest.mark.parametrize(("mode", "status"), [("deny", 200), ("unavailable", 503)])
async def test_before_the_first_snapshot_nobody_is_told_free(
    aiohttp_client: ClientFactory,
    settings: SidecarSettings,
    tmp_path: Path,
    feed: FakeFeed,
    feed_server: TestServer,
    mode: str,
    status: int,
) -> None:
    feed.upsert(pro("acme"))
    feed.fail_with = 503  # the daemon cannot be reached yet
    config = follower_settings(settings, tmp_path, str(feed_server.make_url("/")), not_ready_answer=mode)
    client = await aiohttp_client(create_app(config))
    response = await client.get("/v1/check", params={"tenant": "acme", "feature": "sso"})
    body = await response.json()
    assert response.status == status, body
    if mode == "deny":
        assert (body["allow"], body["reason"], body["tier"]) == (False, "replica_not_ready", None)
    else:
        assert body["error"]["code"] == "replica_not_ready"
    feed.fail_with = None

    async def allowed() -> bool:
        return bool((await sso(client, "acme")).get("allow"))

    await eventually(allowed)
