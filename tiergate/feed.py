"""The wire contract between the sync daemon and the sidecar: one change-feed entry and its records.

The daemon writes these shapes (`GET /v1/feed/snapshot`, `GET /v1/feed/changes`); the sidecar reads
them. Fields a newer daemon adds are ignored, so daemons can be upgraded before sidecars.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from tiergate.models import Account, UsageCounter


class FeedAccount(Account):
    """An account as the feed carries it: fields a newer daemon adds are ignored, so daemons can
    be upgraded before sidecars (documents people write, like imports, stay strict)."""

    model_config = ConfigDict(extra="ignore")


class FeedUsage(UsageCounter):
    model_config = ConfigDict(extra="ignore")


class FeedChange(BaseModel):
    """One entry of the daemon's change feed (`GET /v1/feed/changes`)."""

    model_config = ConfigDict(extra="ignore")

    seq: int
    kind: Literal["account", "usage"]
    op: Literal["upsert", "delete"] = "upsert"
    tenant: str
    account: FeedAccount | None = None
    usage: FeedUsage | None = None


def refused_token(status: int, path: str, *, token_sent: bool) -> str | None:
    """What to tell the operator when the daemon refuses the sidecar's bearer token (401/403):
    it is a configuration error, not an outage, and retrying will not fix it."""
    if status not in (401, 403):
        return None
    if not token_sent:
        return (
            f"authentication failed: the daemon answered {status} to {path} and this sidecar sends no "
            "token; set TIERGATE_FEED_TOKEN to the daemon's TIERGATE_FEED_TOKEN"
        )
    return (
        f"authentication failed: the daemon answered {status} to {path}: it does not accept this "
        "sidecar's TIERGATE_FEED_TOKEN; set it to one of the daemon's TIERGATE_FEED_TOKEN"
    )
