"""The replica feed: GET /v1/feed/snapshot (NDJSON, one read transaction) and /v1/feed/changes (long-poll)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import TypeVar

import orjson
from aiohttp import web

from tiergate.errors import BadRequestError, FeedGapError
from tiergate.feed import FOLLOWER_HEADER, MIRROR_LAG_FIELD
from tiergate.periods import utc_now_text
from tiergate.sync_daemon.state import FLEET, MIRROR, RECONCILER, SETTINGS
from tiergate.web import json_response, query_params, require_bearer

MAX_CHANGES = 1000
N = TypeVar("N", int, float)
_FLUSH_BYTES = 1 << 16


def _authorize(request: web.Request) -> None:
    require_bearer(request, request.app[SETTINGS].feed_token.get_secret_value())


async def feed_snapshot(request: web.Request) -> web.StreamResponse:
    _authorize(request)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    buffer = bytearray()
    # Past this point an error can only cut the stream short: the follower sees no "end" line.
    async for record in request.app[MIRROR].snapshot():
        if record.get("type") == "snapshot":
            record = {**record, MIRROR_LAG_FIELD: _mirror_lag(request)}
        buffer += orjson.dumps(record) + b"\n"
        if len(buffer) >= _FLUSH_BYTES:
            await response.write(bytes(buffer))
            buffer.clear()
    await response.write(bytes(buffer))
    await response.write_eof()
    return response


MAX_QUERY_NUMBER = 2**63 - 1  # SQLite's largest integer


async def feed_changes(request: web.Request) -> web.Response:
    _authorize(request)
    since = _number(request, "since", int, None)
    wait = min(_number(request, "wait", float, 0.0), request.app[SETTINGS].feed_max_wait_s)
    mirror = request.app[MIRROR]
    deadline = time.monotonic() + wait
    while True:
        tick = mirror.watch()  # before the read: a commit in between still wakes us
        batch = await mirror.changes_since(since, MAX_CHANGES)
        if since < batch.oldest_seq - 1 or since > batch.last_seq:
            raise FeedGapError(
                f"since={since} is outside the retained change log (seq {batch.oldest_seq}..{batch.last_seq}); "
                "take a new snapshot"
            )
        remaining = deadline - time.monotonic()
        if batch.changes or remaining <= 0:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tick.wait(), remaining)
    # A follower names the kinds it applies; one that names none predates overrides. Entries it
    # cannot apply are left out (its position still moves past them), so an older sidecar keeps
    # following a newer daemon.
    kinds = _kinds(request.query.get("kinds"))
    changes = [c for c in batch.changes if c["kind"] in kinds]
    request.app[FLEET].saw(
        request.headers.get(FOLLOWER_HEADER) or str(request.remote), str(request.remote), since
    )
    body = {
        "changes": changes,
        "last_seq": batch.last_seq,
        "data_as_of": utc_now_text(),
        MIRROR_LAG_FIELD: _mirror_lag(request),
    }
    return json_response(body)


def _mirror_lag(request: web.Request) -> float:
    """How far this daemon's mirror may be behind Stripe (see MirrorLag), for the followers."""
    return round(request.app[RECONCILER].lag.seconds(), 3)


ORIGINAL_KINDS = frozenset({"account", "usage"})


def _kinds(text: str | None) -> frozenset[str]:
    if text is None:
        return ORIGINAL_KINDS
    if len(text) > 200:
        raise BadRequestError("kinds: at most 200 characters", field="kinds")
    return frozenset(kind.strip() for kind in text.split(",") if kind.strip())


def _number(request: web.Request, name: str, kind: type[N], default: N | None) -> N:
    text = query_params(request).get(name)
    if text is None:
        if default is None:
            raise BadRequestError(f"query parameter {name!r} is required", field=name)
        return default
    try:
        value = kind(text)
    except ValueError:
        raise BadRequestError(f"{name}={text!r} is not a {kind.__name__}", field=name) from None
    # nan compares false with everything (a wait that never ends); a seq past SQLite's integers
    # cannot be looked up (it overflowed into a 500).
    if not math.isfinite(value) or not 0 <= value <= MAX_QUERY_NUMBER:
        raise BadRequestError(
            f"{name}={text!r} must be a number between 0 and {MAX_QUERY_NUMBER}", field=name
        )
    return value
