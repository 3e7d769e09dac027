"""An accounts row of the replica as stored, shared by the file's reader/writer and the in-memory index."""

from __future__ import annotations

import json
from typing import NamedTuple

from tiergate.models import Account


class AccountRow(NamedTuple):
    """An accounts row as stored: times are RFC 3339 `Z` strings, booleans 0/1."""

    tenant: str
    tier: str
    status: str
    quantity: int
    current_period_start: str | None
    current_period_end: str | None
    trial_end: str | None
    cancel_at_period_end: int
    past_due_since: str | None
    version: int
    pending_tier: str | None
    pending_interval: str | None
    pending_at: str | None
    subscription_id: str | None
    addons: str | None  # JSON {addon: quantity}; NULL when none

    def to_account(self) -> Account:
        return Account.model_validate(
            {
                **self._asdict(),
                "cancel_at_period_end": bool(self.cancel_at_period_end),
                "addons": json.loads(self.addons) if self.addons else {},
            }
        )
