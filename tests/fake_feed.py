"""FakeFeed: the sync daemon's feed contract (snapshot + long-poll changes) served from memory.

A test double for the sidecar follower's tests; the real daemon is tested against the same
contract in tests/integration/daemon/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web

from tiergate.periods import utc_now_text

TOKEN = "feed-token-for-tests"


class FakeFeed:
    def __init__(self) -> None:
        self.accounts: dict[str, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        self.oldest_retained = 1
        self.snapshots_served = 0
        self.changes_served = 0
        self.fail_with: int | None = None
        self._changed = asyncio.Event()
        self._seq = 0

    @property
    def seq(self) -> int:
        return self._seq

    def upsert(self, account: dict[str, Any]) -> None:
        self.accounts[account["tenant"]] = account
        self._append({"kind": "account", "op": "upsert", "tenant": account["tenant"], "account": account})

    def delete(self, tenant: str) -> None:
        self.accounts.pop(tenant, None)
        self._append({"kind": "account", "op": "delete", "tenant": tenant})

    def trim(self) -> None:
        """Forget the change log, as retention would: followers behind it get 410."""
        self.oldest_retained = self.seq + 1
        self.log.clear()

    def _append(self, change: dict[str, Any]) -> None:
        self._seq += 1
        self.log.append({"seq": self._seq, **change})
        self._changed.set()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/v1/feed/snapshot", self.snapshot)
        app.router.add_get("/v1/feed/changes", self.changes)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.fail_with is not None:
            return web.json_response({"error": {"code": "down"}}, status=self.fail_with)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": {"code": "unauthorized"}}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        self.snapshots_served += 1
        lines = [{"type": "snapshot", "seq": self.seq, "data_as_of": utc_now_text()}]
        lines += [{"type": "account", "account": a} for a in self.accounts.values()]
        lines.append({"type": "end", "accounts": len(self.accounts), "usage": 0})
        return web.Response(
            body="".join(json.dumps(line) + "\n" for line in lines), content_type="application/x-ndjson"
        )

    async def changes(self, request: web.Request) -> web.Response:
        since = int(request.query["since"])
        wait = float(request.query.get("wait", "0"))
        if not self._pending(since) and wait > 0:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(wait, 1.0))
        if since < self.oldest_retained - 1:
            return web.json_response({"error": {"code": "feed_gap"}}, status=410)
        self.changes_served += 1
        pending = self._pending(since)
        return web.json_response(
            {"changes": pending, "last_seq": max(since, self.seq), "data_as_of": utc_now_text()}
        )

    def _pending(self, since: int) -> list[dict[str, Any]]:
        return [c for c in self.log if c["seq"] > since]
