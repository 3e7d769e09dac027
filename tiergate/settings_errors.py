"""Turn a pydantic-settings failure into one line per bad TIERGATE_* variable, naming its value."""

from __future__ import annotations

import os

from pydantic import ValidationError

SECRET_HINTS = ("key", "secret", "token", "password")


def describe_settings_error(exc: ValidationError, prefix: str = "TIERGATE_") -> str:
    lines = []
    for err in exc.errors(include_url=False):
        name = prefix + "_".join(str(p) for p in err["loc"]).upper()
        value = os.environ.get(name)
        if value is None:
            lines.append(f"missing setting {name}: {err['msg']}")
            continue
        shown = "<hidden>" if any(h in name.lower() for h in SECRET_HINTS) else repr(value)
        lines.append(f"invalid setting {name}={shown}: {err['msg']}")
    return "\n".join(lines)
