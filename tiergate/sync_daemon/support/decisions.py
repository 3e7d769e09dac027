"""Deny records from sidecars (`POST /v1/decisions/batch`, feed token) and their explanation with
billing lineage (`GET /v1/decisions/{decision_id}`, API or console token).

The explanation joins a record to what the mirror knows: the account version its input was built
from and the Stripe event (or action) behind that version, the overrides in force, the counter's
newest usage events; and it asks today's policy whether it would answer the same, on the same
input and on today's state.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiohttp import web

from tiergate.errors import BadRequestError, NotFoundError, TierError
from tiergate.periods import utc_now_text
from tiergate.policy.document import PolicyAnswerError, parse_answer
from tiergate.policy.engine import DECISION_PATH, rule_that_decided
from tiergate.sync_daemon.mirror.lookup import TenantRecord, read_tenant, version_at
from tiergate.sync_daemon.mirror.schema import DECISION_RECORDS, USAGE_EVENTS
from tiergate.sync_daemon.mirror.store import MirrorTxn, Sql
from tiergate.sync_daemon.state import MIRROR, SETTINGS
from tiergate.sync_daemon.support.answers import PolicyAnswers, answer_body, tenant_input
from tiergate.sync_daemon.support.api import ANSWERS, authorize_read
from tiergate.web import json_response, require_bearer

log = structlog.get_logger("tiergate.decisions")

MAX_RECORDS = 1000  # per POST from a sidecar
USAGE_EVENTS_SHOWN = 5


def valid_record(item: object) -> dict[str, Any] | None:
    """A record as a sidecar ships it, or None when it is not one (never stored)."""
    if not isinstance(item, dict):
        return None
    decision = item.get("decision")
    decision_id = item.get("decision_id")
    if not isinstance(decision, dict) or not isinstance(decision_id, str) or not 0 < len(decision_id) <= 100:
        return None
    tenant, feature = decision.get("tenant"), decision.get("feature")
    if not isinstance(tenant, str) or not 0 < len(tenant) <= 200:
        return None
    if not isinstance(feature, str) or not 0 < len(feature) <= 100:
        return None
    if not isinstance(decision.get("allow"), bool) or not isinstance(decision.get("reason"), str):
        return None
    if not isinstance(item.get("at"), str) or not isinstance(item.get("input"), dict):
        return None
    return item


def store_records(txn: MirrorTxn, records: list[dict[str, Any]]) -> None:
    received = utc_now_text()
    for record in records:
        decision = record["decision"]
        txn.write(
            f"INSERT INTO {DECISION_RECORDS} (decision_id, tenant, feature, allow, reason, body, at, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (decision_id) DO NOTHING",
            [
                record["decision_id"],
                decision["tenant"],
                decision["feature"],
                int(decision["allow"]),
                decision["reason"][:100],
                json.dumps(record),
                record["at"][:40],
                received,
            ],
        )


async def receive_records(request: web.Request) -> web.Response:
    require_bearer(request, request.app[SETTINGS].feed_token.get_secret_value())
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"body is not JSON: {exc}", field="body") from None
    items = body.get("decisions") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise BadRequestError('body must be {"decisions": [...]}', field="decisions")
    if len(items) > MAX_RECORDS:
        raise BadRequestError(f"{len(items)} records exceed the limit of {MAX_RECORDS}", field="decisions")
    records = [r for r in map(valid_record, items) if r is not None]
    await request.app[MIRROR].transact(lambda txn: store_records(txn, records))
    rejected = len(items) - len(records)
    if rejected:
        log.warning("decision_records_rejected", rejected=rejected)
    return json_response({"stored": len(records), "rejected": rejected})


def read_record(sql: Sql, decision_id: str) -> dict[str, Any] | None:
    found = sql.execute(
        f"SELECT body FROM {DECISION_RECORDS} WHERE decision_id = ?", [decision_id]
    ).fetchone()
    return json.loads(found[0]) if found else None


def read_lineage(sql: Sql, record: dict[str, Any]) -> dict[str, Any]:
    """What the mirror knows behind a record: the account version, its cause, the counter's events."""
    decision = record["decision"]
    tenant = decision["tenant"]
    version = record.get("account_version")
    account = version_at(sql, tenant, version) if isinstance(version, int) else None
    events = sql.execute(
        f"SELECT transaction_id, timestamp, value, received_at FROM {USAGE_EVENTS} "
        "WHERE tenant = ? AND code = ? ORDER BY received_at DESC, transaction_id LIMIT ?",
        [tenant, decision["feature"], USAGE_EVENTS_SHOWN],
    ).fetchall()
    names = ("transaction_id", "timestamp", "value", "received_at")
    return {
        "account_version": account,
        "stripe_event": _event_of(account),
        "overrides_in_force": _overrides_in_force(record["input"]),
        "usage_events": [dict(zip(names, row, strict=True)) for row in events],
    }


def _event_of(version: dict[str, Any] | None) -> dict[str, Any] | None:
    if version is None or version["event_id"] is None:
        return None
    return {"id": version["event_id"], "type": version["event_type"], "created": version["event_at"]}


def _overrides_in_force(document: dict[str, Any]) -> dict[str, Any]:
    now = str(document.get("now") or "")
    overrides = document.get("overrides") or {}
    return {
        feature: found
        for feature, found in overrides.items()
        if isinstance(found, dict) and (found.get("expires_at") is None or now < str(found["expires_at"]))
    }


async def today(answers: PolicyAnswers, record: dict[str, Any], state: TenantRecord) -> dict[str, Any]:
    """Would today's policy answer the same: on the recorded input, and on today's state."""
    decision = record["decision"]
    if answers.bundle is None:
        return {"policy_revision": None, "error": answers.error}
    try:
        replay = parse_answer(await answers.engine.evaluate(DECISION_PATH, record["input"]))
    except (TierError, PolicyAnswerError) as exc:
        return {"policy_revision": answers.revision, "error": str(exc)}
    facts = tenant_input(state, datetime.now(UTC).replace(microsecond=0))
    current = await answers.decide(facts, decision["feature"], int(decision.get("quantity") or 1))
    return {
        "policy_revision": answers.revision,
        "same_policy": answers.revision == record.get("policy_revision"),
        # Asked of today's policy on the recorded input: the rule of the decision when same_policy.
        "decided_by": await rule_that_decided(answers.engine, record["input"], decision),
        "same_input": {**answer_body(replay), "same": _same(replay.allow, replay.reason, decision)},
        "current_state": {**answer_body(current), "same": _same(current.allow, current.reason, decision)},
    }


def _same(allow: bool, reason: str, decision: dict[str, Any]) -> bool:
    return bool(allow == decision["allow"] and reason == decision["reason"])


async def explain(app: web.Application, decision_id: str) -> dict[str, Any]:
    """The record, its lineage and today's answers (the API's answer and the console's page)."""
    mirror = app[MIRROR]
    record = await mirror.read(lambda sql: read_record(sql, decision_id))
    if record is None:
        raise NotFoundError(
            f"no decision record {decision_id[:100]!r}: the daemon keeps the denies sidecars ship "
            "(TIERGATE_DECISION_RECORD_RETENTION_DAYS); an allow is only on its sidecar, if sampled"
        )
    tenant = record["decision"]["tenant"]
    lineage = await mirror.read(lambda sql: read_lineage(sql, record))
    state = await mirror.read(lambda sql: read_tenant(sql, tenant))
    return {
        "decision_id": decision_id,
        "record": record,
        "lineage": lineage,
        "today": await today(app[ANSWERS], record, state),
    }


async def get_decision(request: web.Request) -> web.Response:
    authorize_read(request)
    return json_response(await explain(request.app, request.match_info["decision_id"]))


def add_decision_routes(app: web.Application) -> None:
    app.router.add_post("/v1/decisions/batch", receive_records)
    app.router.add_get("/v1/decisions/{decision_id}", get_decision)
