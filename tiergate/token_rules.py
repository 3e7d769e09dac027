"""How long a token or shared secret must be: long enough that guessing it is not an attack.

A token setting may list several comma-separated tokens (a rotation, see
`tiergate.web.bearer_tokens`): each is checked on its own, so one long token cannot carry a
short one past the check. A message never repeats a value, only its position and length.
"""

from __future__ import annotations

from pydantic import SecretStr

MIN_SECRET_CHARS = 16
HOW_TO_MAKE_ONE = "e.g. `openssl rand -hex 32`"


def token_list_problem(value: str) -> str | None:
    """What is wrong with a comma-separated token list (None: every token is long enough)."""
    tokens = [token.strip() for token in value.split(",") if token.strip()]
    if not tokens:
        return f"is empty: set a long random value ({HOW_TO_MAKE_ONE}); comma-separated to rotate"
    for position, token in enumerate(tokens, 1):
        if len(token) < MIN_SECRET_CHARS:
            which = f"token {position} of {len(tokens)}" if len(tokens) > 1 else "the token"
            return (
                f"{which} has {len(token)} characters; each token needs at least {MIN_SECRET_CHARS} "
                f"({HOW_TO_MAKE_ONE})"
            )
    return None


def secret_problem(value: str) -> str | None:
    """What is wrong with one shared secret (None: long enough)."""
    if len(value.strip()) < MIN_SECRET_CHARS:
        return (
            f"has {len(value.strip())} characters; a secret needs at least {MIN_SECRET_CHARS} "
            f"({HOW_TO_MAKE_ONE})"
        )
    return None


def checked_tokens(value: SecretStr | None) -> SecretStr | None:
    """A pydantic field validator's body for a token-list setting (None passes: unset)."""
    if value is not None:
        problem = token_list_problem(value.get_secret_value())
        if problem is not None:
            raise ValueError(problem)
    return value


def checked_secret(value: SecretStr | None) -> SecretStr | None:
    """A pydantic field validator's body for a one-secret setting (None passes: unset)."""
    if value is not None:
        problem = secret_problem(value.get_secret_value())
        if problem is not None:
            raise ValueError(problem)
    return value
