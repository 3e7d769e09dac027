"""Fault run: each failure mode of docs/troubleshooting.md against real processes, expected vs observed.

A sync daemon and sidecars run as `tiergate` processes on 127.0.0.1 (free ports, a temporary
directory). Each scenario breaks something (the daemon away, a lowered body limit, a locked or
damaged replica, hostile input), then prints what should happen and what did. Exit status 1 when
any scenario differs.

    .venv/bin/python bench/faults.py
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from harness import REPO

from demo.processes import Process, free_port, tiergate_command

TOKEN = "bench-faults-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RESULTS = REPO / "bench" / "results" / "faults.json"
COMMON = {
    "TIERGATE_PLANS": str(REPO / "plans" / "plans.yaml"),
    "TIERGATE_POLICIES": str(REPO / "policies"),
    "TIERGATE_LOG_LEVEL": "warning",
    "TIERGATE_FEED_TOKEN": TOKEN,
}


class Stack:
    """One daemon (restartable with other settings, same mirror and port) and its sidecars."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.daemon_port = free_port()
        self.daemon_url = f"http://127.0.0.1:{self.daemon_port}"
        self.daemon: Process | None = None
        self.sidecars: dict[str, tuple[str, Process]] = {}

    def start_daemon(self, **env: str) -> None:
        self.stop_daemon()
        settings = COMMON | {
            "TIERGATE_STRIPE_API_KEY": "sk_test_bench",
            "TIERGATE_STRIPE_WEBHOOK_SECRET": "whsec_bench_0123456789",
            "TIERGATE_STRIPE_API_BASE": "http://127.0.0.1:9",
            "TIERGATE_RECONCILE_AT_START": "false",
            "TIERGATE_MIRROR_PATH": str(self.work / "mirror.db"),
            "TIERGATE_DAEMON_PORT": str(self.daemon_port),
        }
        self.daemon = Process(
            "daemon", tiergate_command("sync-daemon"), settings | env, self.work / "daemon.log", REPO
        )
        self.daemon.start()
        self.daemon.wait_http(self.daemon_url + "/readyz", lambda status: status == 200)

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def start_sidecar(self, name: str, *, wait_ready: bool = True, **env: str) -> str:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        settings = COMMON | {
            "TIERGATE_SIDECAR_PORT": str(port),
            "TIERGATE_REPLICA_PATH": str(self.replica(name)),
            "TIERGATE_DAEMON_URL": self.daemon_url,
            "TIERGATE_DECISION_LOG_SAMPLE": "0",
            "TIERGATE_DECISION_LOG_DENIES": "false",
            "TIERGATE_DELIVERY_BACKOFF_MAX_S": "0.5",
            "TIERGATE_FOLLOWER_BACKOFF_MAX_S": "0.5",
        }
        process = Process(name, tiergate_command("sidecar"), settings | env, self.work / f"{name}.log", REPO)
        process.start()
        self.sidecars[name] = (base, process)
        process.wait_http(base + "/healthz", lambda status: status == 200)
        if wait_ready:
            process.wait_http(base + "/readyz", lambda status: status == 200)
        return base

    def stop_sidecar(self, name: str) -> None:
        self.sidecars.pop(name)[1].stop()

    def replica(self, name: str) -> Path:
        return self.work / name / "replica.db"

    def stop(self) -> None:
        for name in list(self.sidecars):
            self.stop_sidecar(name)
        self.stop_daemon()


async def get(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.get(url, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def post(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with session.post(url, json=body) as response:
        return response.status, await response.json(content_type=None)


async def until(probe: Callable[[], Awaitable[bool]], within_s: float = 60.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await probe():
            return True
        await asyncio.sleep(0.1)
    return False


def events(tenant: str, n: int, pad: int = 0) -> list[dict[str, Any]]:
    prefix = uuid.uuid4().hex[:8]
    props = {"note": "x" * pad} if pad else {}
    return [
        {
            "transaction_id": f"{prefix}-{i}",
            "external_customer_id": tenant,
            "code": "api_calls",
            "properties": props,
        }
        for i in range(n)
    ]


async def counted(session: aiohttp.ClientSession, stack: Stack, tenant: str) -> int:
    status, body = await get(session, f"{stack.daemon_url}/v1/usage/{tenant}", headers=AUTH)
    return int(body["usage"].get("api_calls", 0)) if status == 200 else -1


async def sidecar_status(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    status: dict[str, Any] = (await get(session, base + "/v1/status"))[1]
    return status


async def raw_status(port: int, head: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + b"Host: bench\r\nConnection: close\r\n\r\n")
    await writer.drain()
    line = await reader.readline()
    writer.close()
    return int(line.split()[1])


Row = tuple[str, str, str]


async def backlog_over_the_body_limit(session: aiohttp.ClientSession, stack: Stack, base: str) -> Row:
    stack.stop_daemon()
    for _ in range(5):
        await post(session, base + "/v1/usage/batch", {"events": events("f_backlog", 100, pad=2400)})
    stack.start_daemon()
    done = await until(lambda: _equals(counted(session, stack, "f_backlog"), 500))
    usage = (await sidecar_status(session, base))["usage"]
    observed = f"{await counted(session, stack, 'f_backlog')} counted, {usage['quarantined']} quarantined"
    return (
        "500 events of 2.4 KB gathered while the daemon was away",
        "500 counted, 0 quarantined",
        observed if done else f"stuck: {observed}",
    )


async def event_no_batch_can_carry(session: aiohttp.ClientSession, stack: Stack, base: str) -> Row:
    stack.start_daemon(TIERGATE_MAX_BODY_BYTES="2048")
    batch = [*events("f_quarantine", 40), *events("f_quarantine", 1, pad=3000)]
    await post(session, base + "/v1/usage/batch", {"events": batch})

    async def set_aside() -> bool:
        usage = (await sidecar_status(session, base))["usage"]
        return bool(usage["quarantined"] == 1 and usage["backlog"] == 0)

    await until(set_aside)
    before = await counted(session, stack, "f_quarantine")
    quarantined = (await sidecar_status(session, base))["usage"]["quarantined"]
    stack.start_daemon()  # the operator raises the limit, then re-delivers
    await post(session, base + "/v1/usage/quarantine/redeliver", {"all": True})
    await until(lambda: _equals(counted(session, stack, "f_quarantine"), 41))
    after = await counted(session, stack, "f_quarantine")
    return (
        "one event larger than the daemon's body limit",
        "40 counted, 1 quarantined; 41 after redeliver",
        f"{before} counted, {quarantined} quarantined; {after} after redeliver",
    )


async def deep_properties(session: aiohttp.ClientSession, base: str) -> Row:
    deep = '{"a":' * 979 + "{}" + "}" * 979
    body = '{"event": {"transaction_id": "deep", "external_customer_id": "f_deep", "code": "api_calls", '
    body += f'"properties": {deep}}}}}'
    async with session.post(
        base + "/v1/usage", data=body, headers={"Content-Type": "application/json"}
    ) as response:
        answer = await response.json()
    return (
        "an event nested 980 deep",
        "400 event.properties",
        f"{response.status} {answer['error']['field'] if response.status == 400 else ''}".strip(),
    )


async def locked_replica(session: aiohttp.ClientSession, stack: Stack) -> Row:
    base = stack.start_sidecar("locked", TIERGATE_REPLICA_BUSY_TIMEOUT_S="0.2")
    other = sqlite3.connect(stack.replica("locked"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    await post(session, base + "/v1/usage", {"event": events("f_lock", 1)[0]})

    async def failing() -> bool:
        return bool((await sidecar_status(session, base))["daemon"]["failing"] == "replica")

    shown = await until(failing, 30)
    ready_while_locked = (await get(session, base + "/readyz"))[0]
    other.execute("ROLLBACK")
    other.close()

    async def recovered() -> bool:
        daemon = (await sidecar_status(session, base))["daemon"]
        return bool(daemon["failing"] is None and daemon["connected"])

    back = await until(recovered, 30)
    stack.stop_sidecar("locked")
    return (
        "the replica locked by another writer",
        "failing=replica, /readyz 503, recovers",
        f"failing={'replica' if shown else 'none'}, /readyz {ready_while_locked}, {'recovers' if back else 'stays broken'}",
    )


async def damaged_replica(session: aiohttp.ClientSession, stack: Stack) -> Row:
    stack.start_sidecar("damaged")
    stack.stop_sidecar("damaged")
    path = stack.replica("damaged")
    path.write_bytes(b"garbage, not SQLite" + b"\0" * 4000)
    for side in ("-wal", "-shm"):
        path.with_name(path.name + side).unlink(missing_ok=True)
    try:
        stack.start_sidecar("damaged")
        started = "starts, ready"
    except Exception as exc:
        started = f"does not start: {exc}"[:80]
    kept = len(list(path.parent.glob("replica.db.damaged-*")))
    if "damaged" in stack.sidecars:
        stack.stop_sidecar("damaged")
    return (
        "a replica with a garbage header",
        "starts, ready; 1 copy kept aside",
        f"{started}; {kept} copy kept aside",
    )


def damage_pages(path: Path) -> None:
    """Checkpoint the write-ahead log into the file, then overwrite every page after the first
    (the header and schema stay) with bytes no SQLite page holds: damage under a running process."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] != 0:
            time.sleep(0.01)
    finally:
        conn.close()
    with path.open("r+b") as handle:
        page_size = int.from_bytes(handle.read(100)[16:18], "big")
        size = handle.seek(0, 2)
        handle.seek(page_size)
        handle.write(b"\xde\xad\xbe\xef" * ((size - page_size) // 4))


async def replica_damaged_at_run_time(session: aiohttp.ClientSession, stack: Stack) -> Row:
    base = stack.start_sidecar("rundamage", TIERGATE_STALENESS_BUDGET_S="2")
    damage_pages(stack.replica("rundamage"))
    # a change for the follower to apply and the reader to load: usage, delivered and fed back
    await post(session, base + "/v1/usage", {"event": events("f_rundamage", 1)[0]})
    statuses: set[int] = set()

    async def recovered() -> bool:
        for tenant in ("acme", "globex"):
            statuses.add(
                (await get(session, base + "/v1/check", params={"tenant": tenant, "feature": "sso"}))[0]
            )
        status, body = await get(session, base + "/v1/status")
        statuses.add(status)
        damage = body["replica"]["damage"] if status == 200 else {}
        return bool(damage.get("recoveries") == 1 and damage.get("state") == "ok")

    back = await until(recovered, 60)
    kept = len(
        [
            p
            for p in stack.replica("rundamage").parent.glob("replica.db.damaged-*")
            if not p.name.endswith(("-wal", "-shm"))
        ]
    )
    ready = (await get(session, base + "/readyz"))[0]
    stack.stop_sidecar("rundamage")
    return (
        "the replica file damaged under a running sidecar",
        "answers 200 throughout; set aside (1 copy), downloaded again, /readyz 200",
        f"answers {','.join(str(s) for s in sorted(statuses))} throughout; "
        f"{'set aside' if back else 'not recovered'} ({kept} {'copy' if kept == 1 else 'copies'}), "
        f"{'downloaded again' if back else 'not downloaded'}, /readyz {ready}",
    )


async def daemon_mirror_lag(session: aiohttp.ClientSession, stack: Stack) -> Row:
    # Stripe's API unreachable (the bench's Stripe base is a closed port): every reconcile fails.
    stack.start_daemon(
        TIERGATE_RECONCILE_AT_START="true",
        TIERGATE_RECONCILE_INTERVAL_S="1",
        TIERGATE_STRIPE_MAX_NETWORK_RETRIES="0",
    )
    base = stack.start_sidecar("lagging", TIERGATE_STALENESS_BUDGET_S="1")

    async def stale_while_connected() -> bool:
        body = await sidecar_status(session, base)
        return bool(
            body["stale"] and body["daemon"]["connected"] and body["replica"]["daemon_lag_seconds"] > 1
        )

    became = await until(stale_while_connected, 60)
    body = await sidecar_status(session, base)
    ready = (await get(session, base + "/readyz"))[0]
    stack.stop_sidecar("lagging")
    stack.start_daemon()
    lag = body["replica"]["daemon_lag_seconds"] or 0.0
    return (
        "the daemon answers but cannot reconcile with Stripe for longer than the budget (1 s)",
        "stale=true, connected=true, daemon lag > 1 s, /readyz 200",
        f"stale={str(became).lower()}, connected={str(body['daemon']['connected']).lower()}, "
        f"daemon lag {'>' if lag > 1 else '<='} 1 s, /readyz {ready}",
    )


async def before_first_snapshot(session: aiohttp.ClientSession, stack: Stack) -> Row:
    dead = f"http://127.0.0.1:{free_port()}"
    base = stack.start_sidecar("fresh", wait_ready=False, TIERGATE_DAEMON_URL=dead)
    _, decision = await get(session, base + "/v1/check", params={"tenant": "acme", "feature": "sso"})
    ready = (await get(session, base + "/readyz"))[0]
    stack.stop_sidecar("fresh")
    return (
        "a fresh sidecar whose daemon is unreachable",
        "allow=false replica_not_ready, /readyz 503",
        f"allow={str(decision.get('allow')).lower()} {decision.get('reason')}, /readyz {ready}",
    )


async def daemon_away_staleness(session: aiohttp.ClientSession, stack: Stack) -> Row:
    base = stack.start_sidecar("stale", TIERGATE_STALENESS_BUDGET_S="1")
    stack.stop_daemon()

    async def stale() -> bool:
        return bool((await sidecar_status(session, base))["stale"])

    became = await until(stale, 30)
    status = await sidecar_status(session, base)
    ready = (await get(session, base + "/readyz"))[0]
    stack.stop_sidecar("stale")
    stack.start_daemon()
    return (
        "the daemon away longer than the staleness budget (1 s)",
        "stale=true, connected=false, /readyz 200",
        f"stale={str(became).lower()}, connected={str(status['daemon']['connected']).lower()}, /readyz {ready}",
    )


async def hostile_input(session: aiohttp.ClientSession, stack: Stack, base: str) -> list[Row]:
    rows: list[Row] = []
    for query, label in (
        ("since=9223372036854775808", "since past 2^63-1"),
        ("since=0&wait=nan", "wait=nan"),
    ):
        try:
            async with asyncio.timeout(10):
                status, _ = await get(session, f"{stack.daemon_url}/v1/feed/changes?{query}", headers=AUTH)
            rows.append((f"feed {label}", "400", str(status)))
        except TimeoutError:
            rows.append((f"feed {label}", "400", "no answer in 10 s"))
    port = int(base.rsplit(":", 1)[1])
    status = await raw_status(port, b"GET /v1/authz HTTP/1.1\r\nX-Tenant-Id: t\xff\xfe\r\n")
    rows.append(("non-UTF-8 bytes in X-Tenant-Id", "400", str(status)))
    async with session.delete(base + "/v1/check") as response:
        rows.append(
            (
                "DELETE /v1/check",
                "405 with Allow",
                f"{response.status} {'with' if 'Allow' in response.headers else 'without'} Allow",
            )
        )
    return rows


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def run(work: Path) -> list[Row]:
    stack = Stack(work)
    rows: list[Row] = []
    try:
        stack.start_daemon()
        base = stack.start_sidecar("main")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            rows.append(await backlog_over_the_body_limit(session, stack, base))
            rows.append(await event_no_batch_can_carry(session, stack, base))
            rows.append(await deep_properties(session, base))
            rows.append(await locked_replica(session, stack))
            rows.append(await damaged_replica(session, stack))
            rows.append(await replica_damaged_at_run_time(session, stack))
            rows.append(await before_first_snapshot(session, stack))
            rows += await hostile_input(session, stack, base)
            rows.append(await daemon_away_staleness(session, stack))
            rows.append(await daemon_mirror_lag(session, stack))
    finally:
        stack.stop()
    return rows


def main() -> None:
    socket.setdefaulttimeout(30)
    with tempfile.TemporaryDirectory(prefix="tiergate-faults-") as tmp:
        rows = asyncio.run(run(Path(tmp)))
    print("| scenario | expected | observed | |")
    print("| --- | --- | --- | --- |")
    differ = 0
    for scenario, expected, observed in rows:
        same = expected == observed
        differ += not same
        print(f"| {scenario} | {expected} | {observed} | {'ok' if same else 'DIFFERS'} |")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps([{"scenario": s, "expected": e, "observed": o} for s, e, o in rows], indent=1) + "\n"
    )
    print(f"{len(rows) - differ}/{len(rows)} as expected; wrote {RESULTS.relative_to(REPO)}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
