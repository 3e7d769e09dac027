"""Signed offline licenses on the command line: `license keygen|issue|show` (the vendor's side and
a support check) and `usage export` (the usage a licensed sidecar counted, for billing)."""

from __future__ import annotations

import json
import secrets
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import click

from tiergate.errors import LicenseError


def register_license_commands(root: click.Group, usage: click.Group) -> None:
    """Add `license` to ROOT and `export` to the `usage` group."""
    root.add_command(license_group)
    usage.add_command(usage_export)


@click.group("license")
def license_group() -> None:
    """Signed offline licenses (Ed25519 JWS) for self-hosted installs."""


@license_group.command("keygen")
@click.option("--out", "directory", type=click.Path(path_type=Path, file_okay=False), required=True)
def license_keygen(directory: Path) -> None:
    """Write a new Ed25519 pair: DIR/license.key (private, mode 0600) and DIR/license.pub."""
    from tiergate.license import write_key_pair

    try:
        private_path, public_path, kid = write_key_pair(directory)
    except LicenseError as exc:
        _fail(exc.message)
    click.echo(f"key {kid}: private {private_path} (keep it secret), public {public_path} (ship it)")


def _parse_with(parse: Any, value: str, name: str) -> Any:
    try:
        return parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


@license_group.command("issue")
@click.option("--key", "key_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--tenant", required=True, help="The tenant id the license grants (the app's customer id).")
@click.option("--tier", required=True, help="A tier of the catalog (plans.yaml).")
@click.option("--seats", type=click.IntRange(min=0), required=True, help="The account's quantity.")
@click.option("--not-after", required=True, help="Last day (UTC) the license holds, e.g. 2027-12-31.")
@click.option("--grace", default="14d", show_default=True, help="Grace after --not-after: 14d, 36h, ...")
@click.option("--override", "overrides", multiple=True, help="feature=true|false|N|unlimited (repeatable).")
@click.option("--customer", help="The licensee's name, shown by `license show` and /v1/status.")
@click.option(
    "--period",
    type=click.Choice(["month", "term"]),
    default="month",
    show_default=True,
    help="Usage periods: calendar months, or the license's whole term.",
)
@click.option("--license-id", help="Default: a new random id.")
@click.option("--out", "out", type=click.Path(path_type=Path, dir_okay=False), required=True)
def license_issue(
    key_path: Path,
    tenant: str,
    tier: str,
    seats: int,
    not_after: str,
    grace: str,
    overrides: tuple[str, ...],
    customer: str | None,
    period: str,
    license_id: str | None,
    out: Path,
) -> None:
    """Sign a license for TENANT with the private KEY and write it to OUT."""
    from pydantic import ValidationError

    from tiergate.license import (
        LicenseClaims,
        issue,
        load_private_key,
        parse_duration,
        parse_not_after,
        parse_override,
    )

    ends = _parse_with(parse_not_after, not_after, "--not-after")
    grace_s = _parse_with(parse_duration, grace, "--grace")
    features = dict(_parse_with(parse_override, text, "--override") for text in overrides)
    now = int(datetime.now(UTC).timestamp())
    try:
        claims = LicenseClaims(
            lid=license_id or f"lic_{secrets.token_hex(8)}",
            sub=tenant,
            tier=tier,
            seats=seats,
            iat=now,
            exp=int(ends.timestamp()),
            grace=grace_s,
            customer=customer,
            overrides=features,
            period=period,
        )
        if claims.exp <= claims.iat:
            raise click.BadParameter(f"{not_after} is already past", param_hint="--not-after")
        token = issue(claims, load_private_key(key_path))
    except ValidationError as exc:
        _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)))
    except LicenseError as exc:
        _fail(exc.message)
    out.write_text(token + "\n", encoding="utf-8")
    click.echo(f"license {claims.lid} for {tenant} ({tier}, {seats} seats) until {not_after}: {out}")


@license_group.command("show")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--public-key",
    "key_paths",
    type=click.Path(path_type=Path, dir_okay=False),
    multiple=True,
    required=True,
    help="A public key that may have signed it (repeatable).",
)
def license_show(file: Path, key_paths: tuple[Path, ...]) -> None:
    """Verify FILE and print its claims as JSON; exit 1, naming the reason, when it does not verify."""
    from tiergate.license import load_public_keys, verify

    try:
        text = file.read_text(encoding="utf-8", errors="replace")
        license = verify(text, load_public_keys(key_paths))
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror}")
    except LicenseError as exc:
        _fail(f"{file} does not verify: {exc.message}")
    now = datetime.now(UTC)
    state = "valid" if now < license.not_after else "grace" if now < license.grace_until else "expired"
    click.echo(json.dumps(license.describe() | {"state": state}, indent=2))


def _fail(message: str) -> Any:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


# -- usage export ------------------------------------------------------------------------------


@click.command("export")
@click.option(
    "--outbox",
    "outbox_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The outbox file (default: TIERGATE_OUTBOX_PATH, else outbox.db beside TIERGATE_REPLICA_PATH).",
)
@click.option("--since", help="Only events accepted at or after this RFC 3339 time.")
@click.option("--out", "out", type=click.File("w"), default="-", help="Default: stdout.")
def usage_export(outbox_path: Path | None, since: str | None, out: TextIO) -> None:
    """Write the usage events this sidecar counted as JSON lines in Lago's event shape (for the
    vendor's usage-based billing; each transaction_id once, so re-exporting is safe)."""
    path = outbox_path or _default_outbox()
    after = _since_epoch(since)
    if not path.is_file():
        _fail(f"no outbox at {path}: has this sidecar recorded any usage?")
    try:
        count = _export(path, after, out)
    except sqlite3.DatabaseError as exc:
        _fail(f"cannot read the outbox {path}: {exc}")
    click.echo(f"{count} events exported from {path}", err=True)


def _default_outbox() -> Path:
    from tiergate.sidecar.cli import sidecar_settings

    settings = sidecar_settings()
    return settings.outbox_path or settings.replica_path.with_name("outbox.db")


def _since_epoch(since: str | None) -> float:
    if since is None:
        return 0.0
    try:
        moment = datetime.fromisoformat(since)
    except ValueError:
        raise click.BadParameter(f"{since!r} is not an RFC 3339 time", param_hint="--since") from None
    if moment.tzinfo is None:
        raise click.BadParameter(f"{since!r} has no UTC offset", param_hint="--since")
    return moment.timestamp()


# The events the sidecar counted: not those the daemon refused, nor those set aside as undeliverable.
_COUNTED = (
    "SELECT event FROM outbox WHERE accepted_at >= ? AND (confirmed_seq IS NULL OR confirmed_seq >= 0) "
    "AND quarantine_error IS NULL ORDER BY id"
)


def _export(path: Path, after: float, out: TextIO) -> int:
    """Read-only: the sidecar may be running and writing meanwhile."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
    try:
        count = 0
        for (text,) in conn.execute(_COUNTED, (after,)):
            out.write(text + "\n")
            count += 1
        return count
    finally:
        conn.close()
