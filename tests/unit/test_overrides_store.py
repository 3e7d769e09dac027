"""Overrides in the mirror (migration, log, snapshot) and in the replica (feed, import/export), no HTTP."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from tests.conftest import MirrorBackend
from tiergate.catalog import Quota
from tiergate.feed import FeedChange
from tiergate.sidecar.replica.store import ReplicaReader, ReplicaWriter, open_replica, parse_replica_document
from tiergate.sync_daemon.mirror.backends import mirror_for
from tiergate.sync_daemon.mirror.overrides import Override, remove_override, set_override
from tiergate.sync_daemon.mirror.schema import MIGRATIONS

AS_OF = datetime(2026, 11, 24, tzinfo=UTC)
TRIAL_END = datetime(2026, 12, 8, tzinfo=UTC)


def test_the_change_log_rebuild_keeps_rows_and_never_reuses_a_seq(tmp_path: Path) -> None:
    db = sqlite_utils.Database(tmp_path / "mirror.db")
    MIGRATIONS.apply(db, stop_before="m006_overrides")
    for n in range(5):
        db.execute(
            "INSERT INTO changes (tenant, kind, op, body, at) VALUES (?, 'account', 'delete', NULL, 'x')",
            [f"t{n}"],
        )
    db.execute("DELETE FROM changes WHERE seq > 2")  # the newest entries trimmed: seq 5 was still used
    MIGRATIONS.apply(db)
    assert [row[0] for row in db.execute("SELECT seq FROM changes")] == [1, 2]
    db.execute(
        "INSERT INTO changes (tenant, kind, op, body, at) VALUES ('t', 'override', 'upsert', '{}', 'x')"
    )
    assert db.execute("SELECT max(seq) FROM changes").fetchone()[0] == 6


async def test_overrides_are_logged_and_in_the_snapshot(mirror_backend: MirrorBackend) -> None:
    mirror = mirror_for(mirror_backend.location)
    await mirror.open()
    try:
        grant = Override("t_1", "sso", True, TRIAL_END, "trial")
        await mirror.transact(lambda txn: set_override(txn, grant))
        limit = Override("t_1", "api_calls", Quota(limit=5), None, "deal")
        await mirror.transact(lambda txn: set_override(txn, limit))
        assert await mirror.transact(lambda txn: remove_override(txn, "t_1", "api_calls", "done", None))
        assert not await mirror.transact(lambda txn: remove_override(txn, "t_1", "api_calls", "done", None))
        batch = await mirror.changes_since(0, 100)
        changes = [FeedChange.model_validate(c) for c in batch.changes]
        assert [(c.kind, c.op, c.feature or (c.override and c.override.feature)) for c in changes] == [
            ("override", "upsert", "sso"),
            ("override", "upsert", "api_calls"),
            ("override", "delete", "api_calls"),
        ]
        assert changes[0].override is not None and changes[0].override.expires_at == TRIAL_END
        records = [r async for r in mirror.snapshot()]
        assert records[1:] == [
            {
                "type": "override",
                "override": {
                    "tenant": "t_1",
                    "feature": "sso",
                    "value": True,
                    "expires_at": "2026-12-08T00:00:00Z",
                },
            },
            {"type": "end", "accounts": 0, "usage": 0, "overrides": 1, "credits": 0},
        ]
    finally:
        await mirror.close()


def change(seq: int, kind: str, op: str = "upsert", **fields: object) -> FeedChange:
    return FeedChange.model_validate({"seq": seq, "kind": kind, "op": op, "tenant": "t_1", **fields})


def test_the_replica_applies_override_entries_and_skips_kinds_it_does_not_know(tmp_path: Path) -> None:
    db = open_replica(tmp_path / "replica.db")
    writer = ReplicaWriter(db)
    reader = ReplicaReader(tmp_path / "replica.db")
    upsert = {"tenant": "t_1", "feature": "api_calls", "value": {"limit": 9}, "expires_at": None, "future": 1}
    touched = writer.apply_changes(
        [
            change(1, "override", override=upsert),
            change(2, "override", override={**upsert, "feature": "sso", "value": True}),
            change(3, "override", "delete", feature="sso"),
            change(4, "loyalty", points=3),  # a newer daemon's kind: skipped, the position still moves
        ],
        position=4,
        data_as_of=AS_OF,
    )
    assert touched == {"t_1"}
    reader.applied(touched)  # as the follower announces its batch: the reader's index re-reads t_1
    assert reader.overrides("t_1") == {"api_calls": {"value": {"limit": 9}, "expires_at": None}}
    assert reader.overrides("t_2") == {}
    document = writer.export()
    assert document["overrides"] == [
        {"tenant": "t_1", "feature": "api_calls", "value": {"limit": 9}, "expires_at": None}
    ]

    # Export -> import round-trips; a document without overrides clears them and exports without the key.
    restored = parse_replica_document(json.dumps(document))
    writer.replace_all(restored.accounts, restored.usage, data_as_of=AS_OF, overrides=restored.overrides)
    reader.refresh()  # as the sidecar's 50 ms watch notices an import
    assert reader.overrides("t_1") == {"api_calls": {"value": {"limit": 9}, "expires_at": None}}
    writer.replace_all([], [], data_as_of=AS_OF)
    reader.refresh()
    assert "overrides" not in writer.export() and reader.overrides("t_1") == {}
    reader.close()
    db.close()
    assert sqlite3.connect(tmp_path / "replica.db").execute("SELECT count(*) FROM overrides").fetchone() == (
        0,
    )
