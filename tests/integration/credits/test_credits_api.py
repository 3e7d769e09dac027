"""The daemon's credits API on both mirror backends: grant once per key, debits from usage, ledger, void."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.credits.conftest import AUTH, CreditsDaemon
from tiergate.periods import rfc3339


def later(days: float) -> str:
    return rfc3339(datetime.now(UTC) + timedelta(days=days)) or ""


GRANT = {"credit_type": "ai_credits", "amount": "50.5", "reason": "launch promo", "actor": "ana@support"}


async def test_a_grant_with_an_idempotency_key_grants_once(credits_daemon: CreditsDaemon) -> None:
    status, first = await credits_daemon.grant("t_1", GRANT, key="promo-1")
    assert status == 201, first
    assert first["balance"] == "50.5" and first["grant"]["remaining"] == "50.5"
    assert first["grant"]["category"] == "promotional" and first["grant"]["source"] == "manual"
    status, again = await credits_daemon.grant("t_1", GRANT, key="promo-1")
    assert status == 200 and again["grant"]["id"] == first["grant"]["id"]
    status, other = await credits_daemon.grant("t_1", {**GRANT, "amount": 60}, key="promo-1")
    assert status == 409 and "another body" in other["error"]["message"]
    assert await credits_daemon.balance("t_1") == "50.5"
    status, _ = await credits_daemon.grant("t_1", GRANT)  # no key: every request is a grant
    assert status == 201 and await credits_daemon.balance("t_1") == 101


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"credit_type": "gems"}, "credit_type", "not in the catalog"),
        ({"amount": "0.0001"}, "amount", "more than 3 digits"),
        ({"amount": 0}, "amount", "more than 0"),
        ({"amount": "1e400"}, "amount", "between"),
        ({"amount": 1.5}, "amount", None),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at", "not after"),
        ({"priority": 101}, "priority", None),
        ({"category": "free"}, "category", None),
        ({"reason": ""}, "reason", None),
        ({"surprise": 1}, "surprise", None),
    ],
)
async def test_a_bad_grant_is_a_400_naming_the_field_and_grants_nothing(
    credits_daemon: CreditsDaemon, change: dict[str, object], field: str, fragment: str | None
) -> None:
    status, body = await credits_daemon.grant("t_1", {**GRANT, **change})
    assert status == 400, body
    assert field in (body["error"].get("field") or "") + body["error"]["message"]
    if fragment:
        assert fragment in body["error"]["message"]
    assert (await credits_daemon.credits("t_1"))["credits"] == []


async def test_usage_of_a_credit_priced_feature_debits_once_per_transaction(
    credits_daemon: CreditsDaemon,
) -> None:
    await credits_daemon.grant("t_1", {**GRANT, "amount": 10})
    tokens = [
        {
            "transaction_id": f"tok-{n}",
            "external_customer_id": "t_1",
            "code": "gpt4_tokens",
            "properties": {"tokens": 100},
        }
        for n in range(5)
    ]
    first = await credits_daemon.usage(tokens)
    assert first["ingested"] == 5
    assert await credits_daemon.balance("t_1") == "8.5"  # 5 x 100 x 0.003
    replay = await credits_daemon.usage(
        [*tokens, {"transaction_id": "api-1", "external_customer_id": "t_1", "code": "api_calls"}]
    )
    assert replay["duplicate"] == 5
    assert await credits_daemon.balance("t_1") == "8.5"  # api_calls is not credit-priced


async def test_the_ledger_pages_and_the_void_takes_only_what_is_left(credits_daemon: CreditsDaemon) -> None:
    status, made = await credits_daemon.grant("t_1", {**GRANT, "amount": 3, "expires_at": later(30)})
    assert status == 201
    images = [
        {"transaction_id": f"img-{n}", "external_customer_id": "t_1", "code": "images"} for n in range(1)
    ]
    await credits_daemon.usage(images)  # one image: 2 credits on free
    grant_id = made["grant"]["id"]
    response = await credits_daemon.client.post(
        f"/v1/tenants/t_1/credits/grants/{grant_id}/void", json={"reason": "refund"}, headers=AUTH
    )
    body = await response.json()
    assert response.status == 200 and body["voided"] == 1 and body["grant"]["state"] == "voided"
    assert await credits_daemon.balance("t_1") == 0
    page1 = await (
        await credits_daemon.client.get("/v1/tenants/t_1/credits/ledger?limit=2", headers=AUTH)
    ).json()
    assert [(e["kind"], e["amount"]) for e in page1["entries"]] == [("grant", 3), ("debit", -2)]
    after = page1["next_after"]
    page2 = await (
        await credits_daemon.client.get(f"/v1/tenants/t_1/credits/ledger?after={after}", headers=AUTH)
    ).json()
    assert [(e["kind"], e["amount"]) for e in page2["entries"]] == [("void", -1)] and page2[
        "next_after"
    ] is None
    missing = await credits_daemon.client.post("/v1/tenants/t_1/credits/grants/cg_nope/void", headers=AUTH)
    assert missing.status == 404
    bad = await credits_daemon.client.get("/v1/tenants/t_1/credits/ledger?limit=100000", headers=AUTH)
    assert bad.status == 400 and "limit" in (await bad.json())["error"]["message"]


async def test_the_api_token_is_required(credits_daemon: CreditsDaemon) -> None:
    response = await credits_daemon.client.get("/v1/tenants/t_1/credits")
    assert response.status == 401
    response = await credits_daemon.client.post("/v1/tenants/t_1/credits/grants", json=GRANT)
    assert response.status == 401


async def test_concurrent_retries_with_one_key_grant_once(credits_daemon: CreditsDaemon) -> None:
    answers = await asyncio.gather(*(credits_daemon.grant("t_1", GRANT, key="race") for _ in range(12)))
    assert sorted(status for status, _ in answers) == [200] * 11 + [201]
    assert len({body["grant"]["id"] for _, body in answers}) == 1
    assert await credits_daemon.balance("t_1") == "50.5"


async def test_concurrent_usage_batches_debit_each_event_once(credits_daemon: CreditsDaemon) -> None:
    await credits_daemon.grant("t_1", {**GRANT, "amount": 1000})
    events = [
        {"transaction_id": f"c-{i}", "external_customer_id": "t_1", "code": "images"} for i in range(60)
    ]
    batches = [events[i : i + 10] for i in range(0, 60, 10)] * 2  # every batch twice, all at once
    await asyncio.gather(*(credits_daemon.usage(batch) for batch in batches))
    assert await credits_daemon.balance("t_1") == 880  # 60 images x 2 credits
