"""Settings diagnostics: one line per bad TIERGATE_* variable, and the variables nothing reads."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping

from pydantic import ValidationError

SECRET_HINTS = ("key", "secret", "token", "password")
URL_HINTS = ("url", "dsn", "endpoint")  # may carry a password: shown with it hidden
_QUERY_SECRET = re.compile(r"(?i)((?:password|passwd|pwd|secret|token|key)=)[^&#]*")


def redact_url(value: str) -> str:
    """`value` (a URL, or what was meant as one) with any password hidden: what follows the user
    name up to the last `@` (a password may hold `@`, `:` or `/`), and `password=` style query
    parameters. Never raises, whatever the text."""
    scheme, sep, rest = value.partition("://")
    head = scheme + sep if sep else ""
    if not sep:
        rest = value
    if "@" in rest:
        credentials, _, after = rest.rpartition("@")
        user, colon, _ = credentials.partition(":")
        if "/" in user:  # an `@` past the authority (a path or query): nothing to hide before it
            user, colon = credentials, ""
        rest = f"{user}{':***' if colon else ''}@{after}"
    return head + _QUERY_SECRET.sub(r"\1***", rest)


def scrub_url(text: str, url: str) -> str:
    """`text` (a driver's error message, which may quote the URL it was given) with `url` redacted
    and its password nowhere."""
    text = text.replace(url, redact_url(url))
    password = _password_of(url)
    return text.replace(password, "***") if password else text


def _password_of(url: str) -> str | None:
    rest = url.partition("://")[2] or url
    credentials, at, _ = rest.rpartition("@")
    user, colon, password = credentials.partition(":")
    if not at or not colon or "/" in user or len(password) < 4:  # too short to hide without noise
        return None
    return password


def describe_settings_error(exc: ValidationError, prefix: str = "TIERGATE_") -> str:
    lines = []
    for err in exc.errors(include_url=False):
        name = prefix + "_".join(str(p) for p in err["loc"]).upper()
        message = err["msg"].removeprefix("Value error, ")
        value = os.environ.get(name)
        if value is None:
            lines.append(f"missing setting {name}: {message}")
            continue
        lowered = name.lower()
        if any(h in lowered for h in SECRET_HINTS):
            shown = "<hidden>"
        elif any(h in lowered for h in URL_HINTS):
            shown = repr(redact_url(value))
        else:
            shown = repr(value)
        lines.append(f"invalid setting {name}={shown}: {message}")
    return "\n".join(lines)


def unknown_settings(
    environ: Mapping[str, str], own: Iterable[str], other: Iterable[str] = (), prefix: str = "TIERGATE_"
) -> list[tuple[str, str | None]]:
    """(variable, closest known setting or None) for each TIERGATE_* variable no process reads.

    `own` are this process's fields in declaration order, `other` the other process's (one
    environment often serves both, so those are known, not warned about). A near tie goes to this
    process's setting, an exact tie to the one declared first (`TIERGATE_PORT` starting the
    sidecar is TIERGATE_SIDECAR_PORT, not TIERGATE_AUTHZ_PORT).
    """
    own_names = [prefix + name.upper() for name in own]
    known = list(dict.fromkeys([*own_names, *(prefix + name.upper() for name in other)]))
    found: list[tuple[str, str | None]] = []
    for variable in sorted(environ):
        if variable.startswith(prefix) and variable not in known:
            word = variable.removeprefix(prefix)
            found.append((variable, _closest(word, known, set(own_names), prefix)))
    return found


def _closest(word: str, known: list[str], own: set[str], prefix: str) -> str | None:
    """Compared without the shared prefix; `PORT` is close to `SIDECAR_PORT` (a word of it)."""

    def score(name: str) -> float:
        other = name.removeprefix(prefix)
        part = other.endswith("_" + word) or other.startswith(word + "_")
        ratio = max(difflib.SequenceMatcher(None, word, other).ratio(), CLOSE_ENOUGH if part else 0.0)
        return ratio + (OWN_BONUS if name in own else 0.0)

    best = max(known, key=score, default=None)  # the first of equal scores: declaration order
    return best if best is not None and score(best) >= CLOSE_ENOUGH else None


CLOSE_ENOUGH = 0.6  # difflib.get_close_matches's default cutoff
OWN_BONUS = 0.05  # TIERGATE_PORT starting the sidecar means the sidecar's port
