"""The replica reader is the one owner of the replica's refresh state: every change reaches every
subscriber once, whoever noticed it first (the bug of 47c103a: a handler's refresh hid an import)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tiergate.feed import FeedAccount, FeedChange
from tiergate.models import Account
from tiergate.sidecar.replica.store import ReplicaMeta, ReplicaReader, ReplicaWriter, open_replica

AS_OF = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def test_an_import_is_announced_as_everything_changed_once(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    reader = ReplicaReader(path)
    heard: list[tuple[int, set[str] | None]] = []

    def listener(meta: ReplicaMeta, tenants: set[str] | None) -> None:
        heard.append((meta.generation, tenants))

    reader.subscribe(listener)
    writer = ReplicaWriter(open_replica(path))
    writer.replace_all([Account(tenant="acme", tier="pro", status="active")], [], data_as_of=AS_OF)
    assert reader.refresh() is True  # e.g. /readyz noticing it first
    assert reader.refresh() is False
    assert heard == [(1, None)]
    assert reader.meta.data_as_of == AS_OF
    writer.db.close()
    reader.close()


def test_a_feed_batch_names_its_tenants_and_a_meta_only_change_names_none(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    reader = ReplicaReader(path)
    heard: list[set[str] | None] = []
    reader.subscribe(lambda meta, tenants: heard.append(tenants))
    writer = ReplicaWriter(open_replica(path))
    writer.mark_current(AS_OF)
    reader.refresh()
    reader.applied({"acme"})  # the follower's announcement after its commit
    assert heard == [set(), {"acme"}]
    writer.db.close()
    reader.close()


async def test_a_new_generation_loads_on_a_thread_while_the_old_one_answers(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    writer = ReplicaWriter(open_replica(path))
    writer.replace_all(
        [Account(tenant="acme", tier="free", status="active")], [], data_as_of=AS_OF, position=5
    )
    reader = ReplicaReader(path)
    heard: list[set[str] | None] = []
    reader.subscribe(lambda meta, tenants: heard.append(tenants))
    writer.replace_all(
        [Account(tenant="acme", tier="pro", status="active")], [], data_as_of=AS_OF, position=9
    )
    assert reader.refresh() is True
    row = reader.account("acme")
    assert row is not None and row.tier == "free" and reader.meta.position == 5  # old, and consistent
    # A feed batch lands during the reload: remembered, and re-read once the new index is in.
    change = FeedChange(
        seq=10, kind="account", tenant="beta", account=FeedAccount(tenant="beta", tier="pro", status="active")
    )
    writer.apply_changes([change], position=10, data_as_of=AS_OF)
    reader.applied({"beta"})
    assert reader.account("beta") is None and heard == []
    assert reader._reload_task is not None
    await reader._reload_task
    acme, beta = reader.account("acme"), reader.account("beta")
    assert acme is not None and acme.tier == "pro" and beta is not None and beta.tier == "pro"
    assert reader.meta.position == 10 and reader.meta.generation == 2
    assert heard == [None]
    writer.db.close()
    reader.close()
