"""Python clients of the sidecar: `TiergateClient` (blocking) and `AsyncTiergateClient` (asyncio).

Nothing of the servers is imported here: an app installs `tiergate` and calls its pod's sidecar.
"""

from tiergate.client.aio import AsyncTiergateClient
from tiergate.client.calls import (
    UNREACHABLE,
    Entitlements,
    FailMode,
    FailPolicy,
    FeatureAccess,
    PendingChange,
    Reservation,
    UsageReceipt,
)
from tiergate.client.sync import TiergateClient
from tiergate.errors import SidecarRejectedError, SidecarUnreachableError
from tiergate.models import Decision

__all__ = [
    "UNREACHABLE",
    "AsyncTiergateClient",
    "Decision",
    "Entitlements",
    "FailMode",
    "FailPolicy",
    "FeatureAccess",
    "PendingChange",
    "Reservation",
    "SidecarRejectedError",
    "SidecarUnreachableError",
    "TiergateClient",
    "UsageReceipt",
]
