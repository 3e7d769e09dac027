"""Where Stripe may send a customer back to: TIERGATE_REDIRECT_HOSTS guards Checkout's success and
cancel URLs and the portal's return URL, so the billing API cannot be used for an open redirect
through a trusted Stripe page (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from tiergate.errors import BadRequestError

SETTING = "TIERGATE_REDIRECT_HOSTS"


def host_allowed(host: str, pattern: str) -> bool:
    """`app.example.com` matches itself; `*.example.com` matches any host below example.com."""
    host, pattern = host.lower().rstrip("."), pattern.lower()
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def check_redirect(url: str, field: str, allowed: Sequence[str]) -> None:
    """Raise a 400 naming `field` unless `url`'s host is allowed (an empty list allows any host)."""
    if not allowed:
        return
    # A backslash or a control character is read differently by browsers and URL parsers.
    if "\\" in url or any(ord(c) < 0x21 for c in url):
        raise BadRequestError(f"{field}: a URL with a backslash, a space or a control character", field=field)
    host = urlsplit(url).hostname
    if host is None or not any(host_allowed(host, pattern) for pattern in allowed):
        raise BadRequestError(
            f"{field}: host {host!r} is not in {SETTING} ({', '.join(allowed)}); "
            "a customer may only be sent back to your own site",
            field=field,
        )
