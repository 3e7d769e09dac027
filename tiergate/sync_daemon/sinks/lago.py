"""The Lago sink: stored events to Lago's `POST /api/v1/events/batch`, 100 per call, as sent.

Built on Lago's HTTP contract (lago-openapi `events_batch`, lago-api `Events::CreateBatchService`):
a batch is all or nothing; a 422 names each bad event by its index in `error_details`, and
`value_already_exist` on `transaction_id` means Lago has that event already, which counts as
delivered. The rest of such a batch is sent again without the events Lago refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from tiergate import exact_json
from tiergate.sync_daemon.sinks.runner import SinkUnavailableError
from tiergate.sync_daemon.sinks.store import SinkEvent

MAX_BATCH = 100  # Lago's LAGO_EVENTS_BATCH_MAX_LENGTH default
ALREADY_THERE = "value_already_exist"


def lago_document(event: SinkEvent) -> dict[str, Any]:
    """The stored document as sent; Lago needs a subscription, so the tenant's is added when absent."""
    document = dict(event.document)
    if "external_subscription_id" not in document and event.subscription_id is not None:
        document["external_subscription_id"] = event.subscription_id
    return document


def read_422(body: object, size: int) -> tuple[set[int], dict[int, str]]:
    """(indexes Lago already has, indexes refused with the reason) from a 422's `error_details`."""
    details = body.get("error_details") if isinstance(body, Mapping) else None
    if not isinstance(details, Mapping):
        return set(), {}
    there: set[int] = set()
    refused: dict[int, str] = {}
    for key, errors in details.items():
        index = int(key) if str(key).isdigit() else -1
        if not 0 <= index < size or not isinstance(errors, Mapping):
            continue  # a batch-level error (no_events, too_many_events): handled by the caller
        codes = {str(f): [str(c) for c in (v if isinstance(v, list) else [v])] for f, v in errors.items()}
        if codes == {"transaction_id": [ALREADY_THERE]}:
            there.add(index)
        else:
            refused[index] = "lago 422: " + orjson.dumps(codes).decode()
    return there, refused


class LagoSink:
    """`Sink` over Lago's events API; `session` is the daemon's, with its own timeout."""

    name = "lago"

    def __init__(
        self, session: aiohttp.ClientSession, api_url: str, api_key: str, batch_size: int = MAX_BATCH
    ):
        self._session = session
        self._url = api_url.rstrip("/") + "/api/v1/events/batch"
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self.batch_size = min(batch_size, MAX_BATCH)

    def __repr__(self) -> str:
        return f"LagoSink({self._url!r})"  # never the key

    async def send(self, events: Sequence[SinkEvent]) -> dict[int, str]:
        refused: dict[int, str] = {}
        pending = list(events)
        while pending:
            status, body = await self._post([lago_document(e) for e in pending])
            if status < 300:
                return refused
            if status != 422:
                raise SinkUnavailableError(f"Lago answered {status}: {_short(body)}")
            there, bad = read_422(body, len(pending))
            if not there and not bad:
                raise SinkUnavailableError(f"Lago answered 422 without per-event details: {_short(body)}")
            refused.update({pending[i].seq: reason for i, reason in bad.items()})
            pending = [e for i, e in enumerate(pending) if i not in there and i not in bad]
        return refused

    async def _post(self, documents: list[dict[str, Any]]) -> tuple[int, object]:
        try:
            async with self._session.post(
                self._url, data=exact_json.dumps({"events": documents}), headers=self._headers
            ) as response:
                text = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SinkUnavailableError(
                f"Lago at {self._url} unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            return status, orjson.loads(text) if text else None
        except orjson.JSONDecodeError:
            return status, text[:200].decode(errors="replace")


def _short(body: object) -> str:
    return orjson.dumps(body).decode()[:300] if not isinstance(body, str) else body[:300]
