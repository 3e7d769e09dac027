"""Per-tenant overrides: the daemon's API and audit, then a following sidecar's decisions and entitlements."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.integration.billing.conftest import (
    API_TOKEN,
    AUTH,
    Billing,
    Client,
    decision,
    eventually,
    follower,
)
from tests.integration.daemon.conftest import FEED_TOKEN
from tiergate.cli import main
from tiergate.periods import rfc3339

PATH = "/v1/tenants/t_acme/overrides"


async def put(billing: Billing, feature: str, body: dict[str, Any]) -> tuple[int, Any]:
    response = await billing.client.put(f"{PATH}/{feature}", json=body, headers=AUTH)
    return response.status, await response.json()


async def get(client: Client, path: str) -> tuple[int, Any]:
    response = await client.get(path, headers=AUTH)
    return response.status, await response.json()


def later(seconds: float) -> str:
    return rfc3339(datetime.now(UTC) + timedelta(seconds=seconds)) or ""


async def test_set_list_and_remove_keep_an_audit_trail(billing: Billing) -> None:
    expires = later(14 * 86400)
    body = {"value": True, "expires_at": expires, "reason": "SSO trial for the pilot", "actor": "ana@support"}
    status, stored = await put(billing, "sso", body)
    assert status == 200, stored
    assert {
        k: stored[k] for k in ("tenant", "feature", "value", "expires_at", "reason", "actor", "active")
    } == {
        "tenant": "t_acme",
        "feature": "sso",
        "value": True,
        "expires_at": expires,
        "reason": "SSO trial for the pilot",
        "actor": "ana@support",
        "active": True,
    }
    status, _ = await put(billing, "api_calls", {"value": {"limit": 5_000_000}, "reason": "deal #42"})
    assert status == 200
    status, _ = await put(
        billing, "api_calls", {"value": {"limit": 6_000_000}, "reason": "deal #42, amended"}
    )
    assert status == 200

    status, listed = await get(billing.client, PATH)
    assert status == 200
    assert [(o["feature"], o["value"]) for o in listed["overrides"]] == [
        ("api_calls", {"limit": 6_000_000}),
        ("sso", True),
    ]
    status, one = await get(billing.client, f"{PATH}/api_calls")
    assert (status, one["expires_at"], one["reason"]) == (200, None, "deal #42, amended")

    response = await billing.client.delete(f"{PATH}/sso?reason=trial+converted&actor=ana", headers=AUTH)
    assert response.status == 200 and (await response.json())["removed"] is True
    response = await billing.client.delete(f"{PATH}/sso", headers=AUTH)
    assert response.status == 404 and "no override for 'sso'" in (await response.json())["error"]["message"]
    assert (await get(billing.client, f"{PATH}/sso"))[0] == 404

    _, listed = await get(billing.client, PATH)
    assert [o["feature"] for o in listed["overrides"]] == ["api_calls"]
    audit = [(a["feature"], a["action"], a["value"], a["reason"], a["actor"]) for a in listed["audit"]]
    assert audit == [  # newest first
        ("sso", "remove", None, "trial converted", "ana"),
        ("api_calls", "set", {"limit": 6_000_000}, "deal #42, amended", None),
        ("api_calls", "set", {"limit": 5_000_000}, "deal #42", None),
        ("sso", "set", True, "SSO trial for the pilot", "ana@support"),
    ]
    assert all(a["at"].endswith("Z") for a in listed["audit"])


@pytest.mark.parametrize(
    ("feature", "body", "field", "says"),
    [
        ("teleport", {"value": True, "reason": "x"}, "feature", "known: ['api_calls'"),
        ("sso", {"value": "yes", "reason": "x"}, "value", "true, false, {limit: N} or {}"),
        ("api_calls", {"value": {"limit": -1}, "reason": "x"}, "value.limit", "greater than or equal to 0"),
        ("sso", {"value": True}, "reason", "Field required"),
        ("sso", {"value": True, "reason": ""}, "reason", "at least 1 character"),
        (
            "sso",
            {"value": True, "reason": "x", "expires_at": "2020-01-01T00:00:00Z"},
            "expires_at",
            "not in the future",
        ),
        (
            "sso",
            {"value": True, "reason": "x", "expires_at": "2030-01-01T00:00:00"},
            "expires_at",
            "timezone",
        ),
        ("sso", {"value": True, "reason": "x", "colour": "red"}, "colour", "Extra inputs"),
    ],
)
async def test_bad_overrides_are_400_naming_the_field(
    billing: Billing, feature: str, body: dict[str, Any], field: str, says: str
) -> None:
    status, answer = await put(billing, feature, body)
    assert (status, answer["error"]["field"]) == (400, field), answer
    assert says in answer["error"]["message"]
    _, listed = await get(billing.client, PATH)
    assert listed == {"tenant": "t_acme", "overrides": [], "audit": []}


async def test_the_api_token_is_required(billing: Billing) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = await billing.client.request(method, f"{PATH}/sso", json={"value": True, "reason": "x"})
        assert response.status == 401, method
    response = await billing.client.get(PATH, headers={"Authorization": "Bearer wrong"})
    assert response.status == 401


async def test_a_following_sidecar_applies_an_override_and_drops_it_when_it_expires(
    aiohttp_client: Any, tmp_path: Path, billing: Billing
) -> None:
    await billing.seed(tier="starter")  # starter: no sso, 20000 api_calls
    sidecar = await follower(aiohttp_client, tmp_path, billing.client)

    async def reason(feature: str) -> str:
        return str((await decision(sidecar, "t_acme", feature))["reason"])

    await eventually(lambda: _is(reason("sso"), "not_in_plan"))
    # Expiring at the start of a second a little ahead: the answer must flip then, not before.
    expires = datetime.fromtimestamp(int(time.time()) + 3, UTC)
    status, _ = await put(billing, "sso", {"value": True, "reason": "trial", "expires_at": rfc3339(expires)})
    assert status == 200
    await eventually(lambda: _is(reason("sso"), "ok"))
    granted = await decision(sidecar, "t_acme", "sso")
    assert granted["valid_until"] == rfc3339(expires)  # the cache holds it until the expiry, no longer
    response = await sidecar.get("/v1/entitlements/t_acme")
    features = (await response.json())["features"]
    assert (features["sso"]["source"], features["reports"]["source"]) == ("override", "plan")

    await eventually(lambda: _is(reason("sso"), "not_in_plan"))
    assert datetime.now(UTC) >= expires  # never denied early
    response = await sidecar.get("/v1/entitlements/t_acme")
    assert (await response.json())["features"]["sso"]["source"] == "plan"

    # A limit override, then its removal, reach the sidecar through the feed.
    await put(billing, "api_calls", {"value": {"limit": 5_000_000}, "reason": "deal"})
    await eventually(lambda: _limit(sidecar, 5_000_000))
    await billing.client.delete(f"{PATH}/api_calls", headers=AUTH)
    await eventually(lambda: _limit(sidecar, 20_000))


async def test_a_sidecar_that_starts_later_gets_overrides_in_its_snapshot(
    aiohttp_client: Any, tmp_path: Path, billing: Billing
) -> None:
    await put(billing, "audit_log", {"value": True, "reason": "compliance pilot"})
    await put(billing, "sso", {"value": True, "reason": "soon removed"})
    await billing.client.delete(f"{PATH}/sso", headers=AUTH)
    sidecar = await follower(aiohttp_client, tmp_path, billing.client)
    await eventually(lambda: _is(_reason(sidecar, "audit_log"), "ok"))
    assert (await decision(sidecar, "t_acme", "sso"))["reason"] == "not_in_plan"


async def _is(value: Awaitable[str], expected: str) -> bool:
    return await value == expected


async def _reason(sidecar: Client, feature: str) -> str:
    return str((await decision(sidecar, "t_acme", feature))["reason"])


async def _limit(sidecar: Client, limit: int) -> bool:
    return bool((await decision(sidecar, "t_acme", "api_calls"))["limit"] == limit)


async def test_the_cli_sets_lists_and_removes_through_the_daemon(billing: Billing) -> None:
    env = {
        "TIERGATE_DAEMON_URL": str(billing.client.make_url("/")),
        "TIERGATE_API_TOKEN": API_TOKEN,
        "TIERGATE_ACTOR": "ops-bot",  # who the audit trail names when --actor is not given
    }

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, ["overrides", *args], env=env)

    def printed(result: Result) -> list[str]:  # the daemon's own log lines share the test's stdout
        return [line for line in result.output.splitlines() if "[info" not in line]

    done = await asyncio.to_thread(
        run, "set", "t_acme", "api_calls", "5000000", "--reason", "deal #42", "--for", "14d"
    )
    assert done.exit_code == 0, done.output
    assert 't_acme: api_calls = {"limit": 5000000} until 20' in done.output
    done = await asyncio.to_thread(run, "set", "t_acme", "sso", "true", "--reason", "pilot", "--actor", "ana")
    assert done.exit_code == 0, done.output
    listed = await asyncio.to_thread(run, "ls", "t_acme", "--audit")
    assert listed.exit_code == 0
    lines = printed(listed)
    assert lines[0].startswith('api_calls = {"limit": 5000000} until ') and lines[0].endswith(
        "# deal #42 (ops-bot)"
    )
    assert lines[1] == "sso = true  # pilot (ana)"
    assert lines[2].endswith("set sso true: pilot (ana)")
    removed = await asyncio.to_thread(run, "rm", "t_acme", "sso", "--reason", "pilot over")
    assert (removed.exit_code, printed(removed)) == (0, ["t_acme: sso override removed"])

    refused = await asyncio.to_thread(run, "rm", "t_acme", "sso")
    assert (
        refused.exit_code == 1
        and "the daemon answered 404: tenant 't_acme' has no override for 'sso'" in refused.output
    )
    refused = await asyncio.to_thread(run, "set", "t_acme", "teleport", "true", "--reason", "x")
    assert refused.exit_code == 1 and "400" in refused.output and "known:" in refused.output
    refused = await asyncio.to_thread(run, "set", "t_acme", "sso", "maybe", "--reason", "x")
    assert refused.exit_code == 2 and "give true, false, unlimited or a limit" in refused.output
    refused = await asyncio.to_thread(run, "set", "t_acme", "sso", "true", "--reason", "x", "--for", "soon")
    assert refused.exit_code == 2 and "30m, 12h, 14d or 2w" in refused.output
    unreachable = CliRunner().invoke(
        main, ["overrides", "ls", "t_acme"], env={**env, "TIERGATE_DAEMON_URL": "http://127.0.0.1:9"}
    )
    assert (
        unreachable.exit_code == 1 and "cannot reach the daemon at http://127.0.0.1:9" in unreachable.output
    )


async def test_a_follower_that_names_no_kinds_gets_no_override_entries_but_moves_past_them(
    billing: Billing,
) -> None:
    """What a sidecar from before overrides sees: it keeps following a newer daemon."""
    await put(billing, "sso", {"value": True, "reason": "pilot"})
    feed = {"Authorization": f"Bearer {FEED_TOKEN}"}
    response = await billing.client.get("/v1/feed/changes", params={"since": "0"}, headers=feed)
    old = await response.json()
    assert (old["changes"], old["last_seq"]) == ([], 1)
    response = await billing.client.get(
        "/v1/feed/changes", params={"since": "0", "kinds": "account,usage,override"}, headers=feed
    )
    new = await response.json()
    assert [(c["kind"], c["override"]["feature"]) for c in new["changes"]] == [("override", "sso")]
    response = await billing.client.get(
        "/v1/feed/changes", params={"since": "0", "kinds": "x" * 201}, headers=feed
    )
    assert response.status == 400 and (await response.json())["error"]["field"] == "kinds"
