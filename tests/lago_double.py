"""A recording double of Lago's events API, built from its documented contract (a Lago server
cannot run here): lago-openapi `events_batch` / `events` and lago-api's `Events::CreateBatchService`.

* `POST /api/v1/events/batch` `{"events": [...]}`: bearer key, else 401. No events: 422
  `no_events`; over 100: 422 `too_many_events`. Every event is validated first; any error refuses
  the whole batch with 422 `validation_errors` and `error_details` keyed by the event's index
  (`{"3": {"transaction_id": ["value_already_exist"]}}`). Uniqueness is `transaction_id` per
  `external_subscription_id`. Accepted: 200 `{"events": [...]}` echoing each event.
* Faults for tests: `fail_next(n, status)` answers the next n calls with that status; `delay_s`
  holds every answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

API_KEY = "lago-test-key"
MAX_BATCH = 100


@dataclass
class LagoDouble:
    events: dict[tuple[str, str], dict[str, Any]] = field(
        default_factory=dict
    )  # (subscription, tid) -> event
    calls: list[list[dict[str, Any]]] = field(default_factory=list)  # every batch received, as sent
    bodies: list[bytes] = field(default_factory=list)  # every batch's JSON text (numbers as written)
    accepted: list[str] = field(default_factory=list)  # every transaction id Lago stored, in order
    already_there: int = 0  # value_already_exist answers given
    delay_s: float = 0.0
    _failures: list[int] = field(default_factory=list)
    _grew: asyncio.Event = field(default_factory=asyncio.Event)

    def fail_next(self, n: int, status: int = 500) -> None:
        self._failures.extend([status] * n)

    def resume(self) -> None:
        """Drop the failures still queued: the next call is answered normally."""
        self._failures.clear()

    async def wait_accepted(self, n: int) -> None:
        """Until Lago has stored `n` events."""
        while len(self.accepted) < n:
            self._grew.clear()
            await self._grew.wait()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v1/events/batch", self.create_batch)
        app.router.add_post("/api/v1/events", self.create_one)
        return app

    async def create_batch(self, request: web.Request) -> web.Response:
        refusal = await self._gate(request)
        if refusal is not None:
            return refusal
        self.bodies.append(await request.read())
        body = await request.json()
        events = body.get("events") if isinstance(body, Mapping) else None
        if not isinstance(events, list):
            return _error(400, "bad_request", "events must be a list")
        self.calls.append(events)
        if not events:
            return _validation({"events": ["no_events"]})
        if len(events) > MAX_BATCH:
            return _validation({"events": ["too_many_events"]})
        errors: dict[str, dict[str, list[str]]] = {}
        seen: set[tuple[str, str]] = set()
        for index, event in enumerate(events):
            problems = self._problems(event, seen)
            if problems:
                errors[str(index)] = problems
        if errors:
            self.already_there += sum(
                e == {"transaction_id": ["value_already_exist"]} for e in errors.values()
            )
            return _validation(errors)
        for event in events:
            self.events[(event["external_subscription_id"], event["transaction_id"])] = event
            self.accepted.append(event["transaction_id"])
        self._grew.set()
        return web.json_response({"events": [_created(e) for e in events]})

    async def create_one(self, request: web.Request) -> web.Response:
        refusal = await self._gate(request)
        if refusal is not None:
            return refusal
        body = await request.json()
        event = body.get("event") if isinstance(body, Mapping) else None
        if not isinstance(event, Mapping):
            return _error(400, "bad_request", "event must be an object")
        problems = self._problems(event, set())
        if problems:
            return _validation(problems)
        self.events[(event["external_subscription_id"], event["transaction_id"])] = dict(event)
        self.accepted.append(event["transaction_id"])
        self._grew.set()
        return web.json_response({"event": _created(event)})

    async def _gate(self, request: web.Request) -> web.Response | None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return web.json_response({"status": 401, "error": "Unauthorized"}, status=401)
        if self._failures:
            status = self._failures.pop(0)
            return _error(status, "internal_error", "injected failure")
        return None

    def _problems(self, event: object, seen: set[tuple[str, str]]) -> dict[str, list[str]]:
        if not isinstance(event, Mapping):
            return {"event": ["invalid_value"]}
        problems: dict[str, list[str]] = {}
        for name in ("transaction_id", "external_subscription_id", "code"):
            if not isinstance(event.get(name), str) or not event[name].strip():
                problems[name] = ["value_is_mandatory"]
        if problems:
            return problems
        key = (event["external_subscription_id"], event["transaction_id"])
        if key in self.events or key in seen:
            return {"transaction_id": ["value_already_exist"]}
        seen.add(key)
        timestamp = event.get("timestamp")
        if timestamp is not None:
            try:
                float(timestamp)
            except (TypeError, ValueError):
                return {"timestamp": ["invalid_format"]}
        return {}


def _created(event: Mapping[str, Any]) -> dict[str, Any]:
    return {**event, "lago_id": None, "lago_customer_id": None, "lago_subscription_id": None}


def _validation(details: Mapping[str, Any]) -> web.Response:
    body = {
        "status": 422,
        "error": "Unprocessable Entity",
        "code": "validation_errors",
        "error_details": details,
    }
    return web.json_response(body, status=422)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"status": status, "error": message, "code": code}, status=status)


async def start_lago(double: LagoDouble) -> TestServer:
    server = TestServer(double.app(), host="127.0.0.1", port=0)
    await server.start_server()
    return server
