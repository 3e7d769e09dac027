"""Bad usage input at the sidecar is a 400 naming the event and field, and records nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.usage.conftest import SidecarFactory, events, usage_status, used

GOOD = {"transaction_id": "ok-1", "external_customer_id": "t_bad", "code": "api_calls"}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({**GOOD, "code": "made_up"}, "events[3].code"),
        ({k: v for k, v in GOOD.items() if k != "code"}, "events[3].code"),
        ({**GOOD, "code": "storage_gb"}, "events[3].properties.gb"),
        ({**GOOD, "code": "storage_gb", "properties": {"gb": "0.1234567"}}, "events[3].properties.gb"),
        ({**GOOD, "external_customer_id": None}, "events[3].external_customer_id"),
        ({**GOOD, "transaction_id": ""}, "events[3].transaction_id"),
        ({**GOOD, "timestamp": "next tuesday"}, "events[3].timestamp"),
        ("not an event", "events[3].event"),
        ({**GOOD, "properties": {"blob": "x" * 5000}}, "events[3].properties"),
    ],
)
async def test_a_bad_event_rejects_the_whole_batch(
    make_sidecar: SidecarFactory, bad: object, field: str
) -> None:
    sidecar = await make_sidecar(None)
    batch: list[Any] = [*events("t_bad", 3), bad]
    response = await sidecar.post("/v1/usage/batch", json={"events": batch})
    body = await response.json()
    assert response.status == 400 and body["error"]["field"] == field, body
    assert await used(sidecar, "t_bad") == 0 and (await usage_status(sidecar))["backlog"] == 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/usage/batch", {"events": events("t", 101)}, "events"),
        ("/v1/usage/batch", {"events": []}, "events"),
        ("/v1/usage/batch", {"event": GOOD}, "events"),
        ("/v1/usage", {"event": {**GOOD, "code": "sso"}}, "event.code"),
        ("/v1/usage", {"events": [GOOD]}, "event"),
        ("/v1/check", {"tenant": "t", "feature": "sso", "reserve": True}, "feature"),
        ("/v1/check", {"tenant": "t", "feature": "api_calls", "quantity": 101, "reserve": True}, "quantity"),
        ("/v1/check", {"tenant": "t", "feature": "api_calls", "reserve": "yes"}, "reserve"),
        ("/v1/check", {"tenant": "t", "feature": "api_calls", "reserve": True, "bogus": 1}, "bogus"),
    ],
)
async def test_bad_requests(
    make_sidecar: SidecarFactory, path: str, body: dict[str, Any], field: str
) -> None:
    sidecar = await make_sidecar(None)
    response = await sidecar.post(path, json=body)
    answer = await response.json()
    assert response.status == 400 and answer["error"]["field"] == field, answer


async def test_not_json(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(None)
    response = await sidecar.post("/v1/usage", data=b"{nope")
    assert response.status == 400 and (await response.json())["error"]["field"] == "body"


async def test_without_a_daemon_usage_counts_locally(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(None)
    assert (await sidecar.post("/v1/usage/batch", json={"events": events("t_local", 4)})).status == 202
    assert await used(sidecar, "t_local") == 4
    assert (await usage_status(sidecar))["delivery"] is None


async def test_deeply_nested_properties_are_refused_at_intake(make_sidecar: SidecarFactory) -> None:
    """980 levels once got a 202 and then broke delivery for every tenant, across restarts."""
    sidecar = await make_sidecar(None)
    deep = '{"a":' * 979 + "{}" + "}" * 979
    body = '{"event": {"transaction_id": "deep", "external_customer_id": "t_bad", "code": "api_calls",'
    body += f' "properties": {deep}}}}}'
    response = await sidecar.post("/v1/usage", data=body, headers={"Content-Type": "application/json"})
    answer = await response.json()
    assert response.status == 400 and answer["error"]["field"] == "event.properties", answer
    assert "32 levels" in answer["error"]["message"]
    assert (await usage_status(sidecar))["backlog"] == 0
