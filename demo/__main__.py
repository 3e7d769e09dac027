"""`make demo`: a sidecar over a sample replica, and a handful of decisions a newcomer can read.

Everything stays on 127.0.0.1 and under .state/demo/; Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".state" / "demo"
BIN = Path(sys.executable).parent


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def sample_replica(now: datetime) -> dict[str, Any]:
    start, end = stamp(now - timedelta(days=10)), stamp(now + timedelta(days=20))
    period = {"current_period_start": start, "current_period_end": end}
    return {
        "accounts": [
            {"tenant": "acme", "tier": "pro", "status": "active", "quantity": 12, **period},
            {
                "tenant": "globex",
                "tier": "starter",
                "status": "trialing",
                "trial_end": stamp(now + timedelta(days=5)),
                **period,
            },
            {
                "tenant": "initech",
                "tier": "pro",
                "status": "past_due",
                "past_due_since": stamp(now - timedelta(days=9)),
                **period,
            },
            {"tenant": "umbrella", "tier": "enterprise", "status": "active", **period},
        ],
        "usage": [{"tenant": "acme", "code": "api_calls", "period_start": start, "value": 99_990}],
    }


STORY: list[tuple[str, str, str, int]] = [
    ("A tenant with no subscription is on the free tier", "hooli", "dashboards", 1),
    ("...which has no reports", "hooli", "reports", 1),
    ("acme pays for pro: SSO is in the plan", "acme", "sso", 1),
    ("acme has used 99,990 of 100,000 API calls: 10 more fit", "acme", "api_calls", 10),
    ("...but 11 do not", "acme", "api_calls", 11),
    ("globex is trialing starter: reports are on during the trial", "globex", "reports", 1),
    ("initech's payment failed 9 days ago; pro's grace is 7 days", "initech", "sso", 1),
    ("umbrella is on enterprise: the audit log is included", "umbrella", "audit_log", 1),
    ("A feature the catalog has never heard of", "acme", "teleport", 1),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_ready(session: aiohttp.ClientSession, base: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit(f"the sidecar exited with {proc.returncode}; see {STATE / 'sidecar.log'}")
        try:
            async with session.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit("the sidecar did not become ready")


async def walk(base: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await wait_ready(session, base, proc)
        print(f"sidecar ready on {base} in {time.perf_counter() - started:.2f}s\n")
        for title, tenant, feature, quantity in STORY:
            params = {"tenant": tenant, "feature": feature, "quantity": str(quantity)}
            t0 = time.perf_counter()
            async with session.get(f"{base}/v1/check", params=params) as response:
                decision = await response.json()
            took_ms = (time.perf_counter() - t0) * 1000
            verdict = "ALLOW" if decision["allow"] else "DENY "
            extra = (
                f" limit={decision['limit']} used={decision['used']}" if decision["limit"] is not None else ""
            )
            print(f"  {title}")
            print(f"    GET /v1/check?tenant={tenant}&feature={feature}&quantity={quantity}")
            print(
                f"    -> {verdict} reason={decision['reason']} tier={decision['tier']}{extra}  ({took_ms:.2f} ms)\n"
            )
        headers = {
            "X-Original-URI": "/api/v1/audit/events",
            "X-Original-Method": "GET",
            "X-Tenant-Id": "acme",
        }
        async with session.get(f"{base}/v1/authz", headers=headers) as response:
            print("  The ingress hook (NGINX auth_request) for acme: GET /api/v1/audit/events")
            reason = "" if response.status == 200 else (await response.json())["reason"]
            print(f"    -> HTTP {response.status} {reason}")
        print("\nRun your own: README.md's quick start imports your tenants and starts `tiergate sidecar`.")


def main() -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    replica_json = STATE / "replica.json"
    replica_json.write_text(json.dumps(sample_replica(datetime.now(UTC)), indent=1))
    port = free_port()
    env = os.environ | {
        "TIERGATE_REPLICA_PATH": str(STATE / "replica.db"),
        "TIERGATE_PLANS": str(ROOT / "plans" / "plans.yaml"),
        "TIERGATE_POLICIES": str(ROOT / "policies"),
        "TIERGATE_SIDECAR_PORT": str(port),
        "TIERGATE_DECISION_LOG_SAMPLE": "0",
        "TIERGATE_DECISION_LOG_DENIES": "false",
    }
    print(f"Importing a sample replica ({replica_json.relative_to(ROOT)}): 4 tenants on different tiers\n")
    subprocess.run([BIN / "tiergate", "replica", "import", str(replica_json)], env=env, check=True)
    with open(STATE / "sidecar.log", "wb") as log:
        proc = subprocess.Popen([BIN / "tiergate", "sidecar"], env=env, stdout=log, stderr=log)
    try:
        asyncio.run(walk(f"http://127.0.0.1:{port}", proc))
    except KeyboardInterrupt:
        print("\ninterrupted")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        print("sidecar stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
