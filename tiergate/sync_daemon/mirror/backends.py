"""Which mirror adapter the settings select: `TIERGATE_MIRROR_URL=postgresql://…`, else SQLite at the path."""

from __future__ import annotations

from pathlib import Path

from tiergate.errors import MirrorError
from tiergate.sync_daemon.mirror.store import Mirror

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def mirror_for(location: str | Path, *, pool_size: int = 8) -> Mirror:
    """`postgresql://…` (or `postgres://…`), `sqlite:PATH` or a bare path."""
    text = str(location)
    if text.startswith(POSTGRES_SCHEMES):
        from tiergate.sync_daemon.mirror.postgres import PostgresMirror  # psycopg only where it is used

        return PostgresMirror(text, pool_size=pool_size)
    if "://" in text:
        raise MirrorError(
            f"mirror location {text.split('://')[0]}://… is not supported; use postgresql://… or sqlite:PATH"
        )
    from tiergate.sync_daemon.mirror.sqlite import SqliteMirror

    return SqliteMirror(Path(text.removeprefix("sqlite:")))
