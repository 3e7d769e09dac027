"""JSON that keeps numbers with a fraction exactly as their text said (pure).

Usage events may carry decimal values as JSON numbers (`"gb": 2.5`); the usual parsers turn them
into binary floats, which cannot hold most decimals and silently drop digits past the 17th. The
usage paths (the sidecar's intake, the daemon's ingest, stored documents, the sinks) read JSON
with `loads`, which makes every number with a fraction or an exponent a `Decimal` of exactly its
text, and write it with `dumps`, which puts that text back unchanged.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson


class ExactJsonError(ValueError):
    """Not JSON, or JSON these paths refuse (NaN, Infinity, nesting too deep to read)."""


def _constant(name: str) -> Any:
    raise ExactJsonError(f"{name} is not a JSON number")


def loads(raw: bytes | str) -> Any:
    """Parse JSON; numbers with a fraction or exponent become `Decimal`s of exactly their text."""
    try:
        strict = orjson.loads(raw)  # the strict check first: invalid UTF-8, lone surrogates, NaN, depth
    except orjson.JSONDecodeError as exc:
        raise ExactJsonError(str(exc)) from None
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_constant)
    except RecursionError:
        # Deeper than Python's parser recurses (orjson takes 1,024 levels): the callers refuse
        # such nesting by name (event properties hold 32 levels), so floats cannot matter here.
        return strict
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExactJsonError(str(exc)) from None


def number_text(value: object) -> orjson.Fragment:
    """orjson's `default`: a `Decimal` is written as the number it is, digit for digit."""
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(str(value))
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    """Compact JSON (UTF-8), `Decimal`s written exactly."""
    return orjson.dumps(value, default=number_text)
