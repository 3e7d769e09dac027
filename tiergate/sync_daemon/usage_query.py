"""GET /v1/usage/events (pure): its query parameters, validated, and the opaque page cursor."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from tiergate.errors import BadRequestError

DEFAULT_LIMIT = 100  # Lago's per_page default
MAX_LIMIT = 1000
MAX_TEXT = 255
KNOWN = frozenset({"tenant", "code", "from", "to", "cursor", "limit"})


@dataclass(frozen=True)
class EventQuery:
    """Which stored events, in ingest order (`seq`), after the cursor's position."""

    tenant: str | None = None
    code: str | None = None
    occurred_from: str | None = None  # RFC 3339 `Z` with microseconds: compares as text
    occurred_to: str | None = None  # exclusive
    after_seq: int = 0
    limit: int = DEFAULT_LIMIT


def parse_query(params: Mapping[str, str]) -> EventQuery:
    unknown = sorted(set(params) - KNOWN)
    if unknown:
        raise BadRequestError(
            f"unknown query parameter {unknown[0]!r} (known: {sorted(KNOWN)})", field=unknown[0]
        )
    query = EventQuery(
        tenant=_text(params, "tenant"),
        code=_text(params, "code"),
        occurred_from=_time(params, "from"),
        occurred_to=_time(params, "to"),
        after_seq=decode_cursor(params["cursor"]) if "cursor" in params else 0,
        limit=_limit(params.get("limit")),
    )
    if query.occurred_from and query.occurred_to and query.occurred_from >= query.occurred_to:
        raise BadRequestError(f"from={params['from']!r} is not before to={params['to']!r}", field="from")
    return query


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(text: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        kind, _, number = raw.partition(":")
        seq = int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequestError(
            f"cursor {text[:40]!r} is not a cursor this API returned", field="cursor"
        ) from None
    if kind != "seq" or seq < 0:
        raise BadRequestError(f"cursor {text[:40]!r} is not a cursor this API returned", field="cursor")
    return seq


def stored_time(moment: datetime) -> str:
    """How the mirror stores an event's time (see mirror/usage.py): comparable as text."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _text(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not value or len(value) > MAX_TEXT:
        raise BadRequestError(f"{name} must be 1 to {MAX_TEXT} characters", field=name)
    return value


def _time(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise BadRequestError(
            f"{name}={value[:60]!r} is not an RFC 3339 time with an offset (e.g. 2026-11-01T00:00:00Z)",
            field=name,
        )
    return stored_time(moment)


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequestError(
            f"limit={text[:20]!r} must be a whole number from 1 to {MAX_LIMIT}", field="limit"
        )
    return limit
