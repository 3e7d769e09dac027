"""Python clients of the sidecar: `TiergateClient` (blocking) and `AsyncTiergateClient` (asyncio).

Nothing of the servers is imported here: an app installs `tiergate-client` and calls its pod's
sidecar. `AsyncTiergateClient` needs aiohttp (`tiergate-client[aio]`); it is imported on first use,
so the blocking client works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tiergate.client.calls import (
    UNREACHABLE,
    Entitlements,
    FailMode,
    FailPolicy,
    FeatureAccess,
    Hold,
    HoldState,
    PendingChange,
    Reservation,
    UsageReceipt,
)
from tiergate.client.sync import TiergateClient
from tiergate.errors import SidecarRejectedError, SidecarUnreachableError
from tiergate.models import Decision

if TYPE_CHECKING:
    from tiergate.client.aio import AsyncTiergateClient

__all__ = [
    "UNREACHABLE",
    "AsyncTiergateClient",
    "Decision",
    "Entitlements",
    "FailMode",
    "FailPolicy",
    "FeatureAccess",
    "Hold",
    "HoldState",
    "PendingChange",
    "Reservation",
    "SidecarRejectedError",
    "SidecarUnreachableError",
    "TiergateClient",
    "UsageReceipt",
]


def __getattr__(name: str) -> object:
    """`AsyncTiergateClient` on first use, with the extra to install when aiohttp is missing."""
    if name != "AsyncTiergateClient":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from tiergate.client.aio import AsyncTiergateClient
    except ModuleNotFoundError as exc:
        if exc.name != "aiohttp":
            raise
        raise ImportError(
            "AsyncTiergateClient needs aiohttp: pip install 'tiergate-client[aio]'", name=name
        ) from exc
    return AsyncTiergateClient
