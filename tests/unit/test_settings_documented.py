"""Every setting a process reads is documented in docs/settings.md."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from tiergate.sidecar.settings import SidecarSettings
from tiergate.sync_daemon.settings import DaemonSettings

OPERATOR_GUIDE = Path(__file__).parents[2] / "docs" / "settings.md"


@pytest.mark.parametrize("settings", [SidecarSettings, DaemonSettings])
def test_every_setting_is_in_the_operator_guide(settings: type[BaseSettings]) -> None:
    guide = OPERATOR_GUIDE.read_text(encoding="utf-8")
    missing = [
        f"TIERGATE_{name.upper()}"
        for name in settings.model_fields
        if f"`TIERGATE_{name.upper()}`" not in guide
    ]
    assert missing == []
