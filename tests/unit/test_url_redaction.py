"""URLs in messages never carry their password, whatever their shape."""

from __future__ import annotations

import pytest

from tiergate.settings_errors import redact_url, scrub_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw1234@host:5432/db", "postgresql://u:***@host:5432/db"),
        ("postgresql://u:p@ss/w:rd@host/db", "postgresql://u:***@host/db"),  # `@`, `/`, `:` in it
        (
            "postgresql://host/db?sslmode=require&password=pw1234",
            "postgresql://host/db?sslmode=require&password=***",
        ),
        ("postgresql://u@host/db", "postgresql://u@host/db"),  # no password: unchanged
        ("postgresql://host/db?options=a@b", "postgresql://host/db?options=a@b"),  # an `@` past the host
        ("u:pw1234@host", "u:***@host"),  # no scheme
        ("postgresql://u:pw1234@[::1/db", "postgresql://u:***@[::1/db"),  # not even a valid URL
        ("", ""),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_scrub_url_hides_the_url_and_its_password_wherever_a_message_quotes_them() -> None:
    url = "postgresql://u:pw1234@[::1/db"
    said = f'missing "]" in URI: "{url}"; and again pw1234'
    assert scrub_url(said, url) == 'missing "]" in URI: "postgresql://u:***@[::1/db"; and again ***'
