"""A sidecar accepts feed entries from a newer daemon; documents people write stay strict."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tiergate.feed import FeedChange
from tiergate.models import Account

ACCOUNT = {"tenant": "acme", "tier": "pro", "status": "active", "loyalty_points": 7}


def test_feed_ignores_fields_it_does_not_know() -> None:
    change = FeedChange.model_validate({"seq": 1, "kind": "account", "tenant": "acme", "account": ACCOUNT})
    assert change.account is not None
    assert change.account.tier == "pro"


def test_an_imported_account_with_an_unknown_field_is_refused() -> None:
    with pytest.raises(ValidationError, match="loyalty_points"):
        Account.model_validate(ACCOUNT)
