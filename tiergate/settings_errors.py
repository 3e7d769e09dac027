"""Settings diagnostics: one line per bad TIERGATE_* variable, and the variables nothing reads."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping

from pydantic import ValidationError

SECRET_HINTS = ("key", "secret", "token", "password")


def describe_settings_error(exc: ValidationError, prefix: str = "TIERGATE_") -> str:
    lines = []
    for err in exc.errors(include_url=False):
        name = prefix + "_".join(str(p) for p in err["loc"]).upper()
        message = err["msg"].removeprefix("Value error, ")
        value = os.environ.get(name)
        if value is None:
            lines.append(f"missing setting {name}: {message}")
            continue
        shown = "<hidden>" if any(h in name.lower() for h in SECRET_HINTS) else repr(value)
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
