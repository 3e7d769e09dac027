"""`make demo` tells its story end to end: the README's first command keeps working."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_demo_story_runs_and_every_step_shows_the_expected_decision() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    expected = [
        r"reports\s+-> DENY\s+reason=not_in_plan\s+tier=free",
        r"localstripe waits 1 s before sending each webhook",
        r"reports\s+-> ALLOW reason=ok\s+tier=starter",
        r"exports\s+-> DENY\s+reason=limit_exceeded\s+tier=starter limit=200 used=200",
        r"exports\s+-> ALLOW reason=ok\s+tier=pro",
        r"account status: past_due",
        r"sso\s+-> DENY\s+reason=payment_overdue\s+tier=free",
        r"sso\s+-> DENY\s+reason=not_in_plan\s+tier=free",
        r"stopped localstripe, the daemon and the sidecar",
    ]
    positions = [re.search(pattern, out) for pattern in expected]
    missing = [pattern for pattern, found in zip(expected, positions, strict=True) if found is None]
    assert missing == [], out
    starts = [found.start() for found in positions if found is not None]
    assert starts == sorted(starts), "the story's steps came out of order:\n" + out
