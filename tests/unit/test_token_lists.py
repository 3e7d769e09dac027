"""A token setting may list several tokens (a rotation): servers accept each, a sidecar sends the first."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from tiergate.sidecar.settings import SidecarSettings
from tiergate.web import bearer_tokens


@pytest.mark.parametrize(
    ("value", "tokens"),
    [("one", ["one"]), ("new,old", ["new", "old"]), (" new , old ,", ["new", "old"]), ("", []), (",", [])],
)
def test_a_setting_lists_its_tokens(value: str, tokens: list[str]) -> None:
    assert bearer_tokens(value) == tokens


NEW = "new-token-0123456789"
OLD = "old-token-0123456789"


@pytest.mark.parametrize(
    ("value", "sent"), [(None, None), (f"{NEW},{OLD}", NEW), (f" {NEW} ", NEW), (f",{NEW},", NEW)]
)
def test_a_sidecar_sends_the_first_token(value: str | None, sent: str | None) -> None:
    settings = SidecarSettings(feed_token=SecretStr(value) if value is not None else None)
    assert settings.sent_feed_token == sent
