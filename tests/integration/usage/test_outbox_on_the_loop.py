"""With synchronous=normal the outbox commits on the event loop's thread, unless another writer
holds the lock: then the reserve waits on the writer thread (the loop keeps answering), commits
once the lock is free, and is counted once; the deferral shows in /v1/status."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from tests.integration.usage.conftest import SidecarClient, SidecarFactory, eventually, usage_status, used


async def reserve(sidecar: SidecarClient, tid: str) -> dict[str, Any]:
    body = {"tenant": "t_lk", "feature": "api_calls", "reserve": True, "transaction_id": tid}
    response = await sidecar.post("/v1/check", json=body)
    assert response.status == 200
    answer: dict[str, Any] = await response.json()
    return answer


async def test_a_held_write_lock_defers_to_the_thread_and_loses_nothing(
    make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    sidecar = await make_sidecar(None, outbox_sync="normal")
    assert (await reserve(sidecar, "on-the-loop"))["reservation"]["reserved"] is True
    status = await usage_status(sidecar)
    assert status["sync"] == "normal" and status["commits_deferred"] == 0

    blocker = sqlite3.connect(tmp_path / "sidecar" / "outbox.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # e.g. an operator's CLI writing the outbox
    try:
        waiting = asyncio.create_task(reserve(sidecar, "behind-the-lock"))

        async def deferred() -> bool:
            return bool((await usage_status(sidecar))["commits_deferred"] == 1)

        await eventually(deferred)
        assert not waiting.done()  # not answered before its commit
        assert await used(sidecar, "t_lk", "exports") == 0  # the loop answers meanwhile
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    answer = await asyncio.wait_for(waiting, 30)
    assert answer["reservation"] == {"transaction_id": "behind-the-lock", "reserved": True, "replayed": False}
    assert await used(sidecar, "t_lk") == 2
    assert (await usage_status(sidecar))["backlog"] == 2
    again = await reserve(sidecar, "behind-the-lock")
    assert again["reservation"]["replayed"] is True and await used(sidecar, "t_lk") == 2
