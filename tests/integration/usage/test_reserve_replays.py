"""A reservation's transaction id stands for that reservation only: the same request again gets the
original outcome, counted once; another feature or quantity under the id is a 409 that counts nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from tests.integration.usage.conftest import (
    DaemonServer,
    SidecarFactory,
    eventually,
    settled,
    usage_status,
    used,
)
from tiergate.sidecar.api.usage import OUTBOX
from tiergate.sidecar.state import READER

SidecarClient = Any


async def reserve(sidecar: SidecarClient, **fields: Any) -> tuple[int, dict[str, Any]]:
    body = {"tenant": "t_rp", "feature": "exports", "quantity": 1, "reserve": True, **fields}
    response = await sidecar.post("/v1/check", json=body)
    answer: dict[str, Any] = await response.json()
    return response.status, answer


async def test_a_true_replay_answers_the_original_outcome_and_counts_once(
    make_sidecar: SidecarFactory,
) -> None:
    sidecar = await make_sidecar(None)  # free tier: exports limit 10 (a count metric)
    first = await reserve(sidecar, quantity=3, transaction_id="job-1")
    again = await reserve(sidecar, quantity=3, transaction_id="job-1")
    assert first[0] == again[0] == 200
    assert first[1]["reservation"] == {"transaction_id": "job-1", "reserved": True, "replayed": False}
    assert again[1]["allow"] is True
    assert again[1]["reservation"] == {"transaction_id": "job-1", "reserved": True, "replayed": True}
    assert await used(sidecar, "t_rp", "exports") == 3
    assert (await usage_status(sidecar))["backlog"] == 3


async def test_an_old_id_replayed_for_another_feature_is_a_conflict(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(None)
    assert (await reserve(sidecar, transaction_id="job-2"))[1]["allow"] is True
    status, answer = await reserve(
        sidecar, feature="storage_gb", quantity=1, transaction_id="job-2"
    )  # storage_gb: a sum metric
    assert status == 409
    assert answer["error"]["code"] == "conflict" and answer["error"]["field"] == "transaction_id"
    assert "'exports'" in answer["error"]["message"] and "'storage_gb'" in answer["error"]["message"]
    assert await used(sidecar, "t_rp", "storage_gb") == 0
    assert await used(sidecar, "t_rp", "exports") == 1
    assert (await usage_status(sidecar))["backlog"] == 1


async def test_an_old_id_replayed_with_a_larger_quantity_is_a_conflict(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(None)
    assert (await reserve(sidecar, quantity=2, transaction_id="job-3"))[1]["allow"] is True
    for quantity in (9, 1):  # more (what a cheat would ask) and less: both name the stored quantity
        status, answer = await reserve(sidecar, quantity=quantity, transaction_id="job-3")
        assert status == 409 and "already reserved 2 of 'exports'" in answer["error"]["message"]
    assert await used(sidecar, "t_rp", "exports") == 2
    assert (await usage_status(sidecar))["backlog"] == 2


async def test_a_sum_metric_replay_compares_the_quantity(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(None)  # free tier: storage_gb limit 1
    fields = {"feature": "storage_gb", "transaction_id": "gb-1"}
    assert (await reserve(sidecar, **fields))[1]["allow"] is True
    assert (await reserve(sidecar, **fields))[1]["reservation"]["replayed"] is True
    assert (await reserve(sidecar, **fields, quantity=5))[0] == 409
    assert await used(sidecar, "t_rp", "storage_gb") == 1


async def test_concurrent_requests_under_one_id_reserve_once(make_sidecar: SidecarFactory) -> None:
    """Racing requests that both find the id absent: the outbox writes one reservation whole (a
    count metric's further events included), the other is a replay or a conflict, never counted."""
    sidecar = await make_sidecar(None)
    answers = await asyncio.gather(
        *(
            reserve(sidecar, quantity=q, transaction_id="race") for q in (1, 2, 1, 2, 3, 1)
        )  # 10 in all: the limit
    )
    reserved = [a for s, a in answers if s == 200 and not a["reservation"]["replayed"]]
    assert len(reserved) == 1
    winner = reserved[0]["quantity"]
    for status, answer in answers:
        if status == 200:
            assert answer["quantity"] == winner and answer["allow"] is True
        else:
            assert status == 409 and answer["error"]["field"] == "transaction_id"
    assert await used(sidecar, "t_rp", "exports") == winner
    assert (await usage_status(sidecar))["backlog"] == winner


async def test_a_replay_after_the_rows_were_pruned_is_still_recognised(
    daemon: DaemonServer, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    """The outbox forgets delivered rows after TIERGATE_OUTBOX_RETENTION_S; a reservation's own
    id outlives them (a compact record), so a late replay counts nothing and a changed one is a 409."""
    sidecar = await make_sidecar(daemon.url)
    assert (await reserve(sidecar, quantity=3, transaction_id="late-1"))[1]["allow"] is True
    assert (await reserve(sidecar, quantity=2))[1]["reservation"]["reserved"] is True  # a generated id
    await eventually(lambda: settled(sidecar))
    app = sidecar.app
    assert await app[OUTBOX].prune(app[READER].meta.position, 0) == 5  # every row, at once
    outbox = sqlite3.connect(tmp_path / "sidecar" / "outbox.db")
    try:
        assert outbox.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
        kept = outbox.execute("SELECT transaction_id, code, quantity FROM pruned_reservations").fetchall()
        assert kept == [("late-1", "exports", 3)]  # generated ids are never replayed: not kept
    finally:
        outbox.close()

    status, again = await reserve(sidecar, quantity=3, transaction_id="late-1")
    assert status == 200 and again["allow"] is True
    assert again["reservation"] == {"transaction_id": "late-1", "reserved": True, "replayed": True}
    status, changed = await reserve(sidecar, quantity=4, transaction_id="late-1")
    assert status == 409 and "already reserved 3 of 'exports'" in changed["error"]["message"]
    assert (await usage_status(sidecar))["backlog"] == 0  # nothing new to deliver
    assert await used(sidecar, "t_rp", "exports") == 5
    assert await daemon.used("t_rp", "exports") == 5
