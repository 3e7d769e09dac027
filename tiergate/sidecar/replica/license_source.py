"""A signed offline license as the replica's source (TIERGATE_LICENSE_PATH): verified at start,
written into the replica as its tenant's account, and polled for a renewal; a file that does not
verify at run time leaves the last good license in force and says so.

The license file and the public keys are read again on every poll (a Kubernetes Secret update
swaps a symlink, which an inotify watch on the file would miss); only bytes that changed are
verified, and only a license that verified is written into the replica, in one transaction
(`ReplicaWriter.replace_all`), which the reader picks up like an import.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from tiergate.errors import LicenseError
from tiergate.license import License, load_public_keys, verify
from tiergate.periods import rfc3339
from tiergate.sidecar.replica.store import ReplicaWriter, open_replica, read_meta

log = structlog.get_logger("tiergate.license")

SOURCE = "license"


@dataclass
class LicenseStatus:
    """What /v1/status, /readyz and the metrics say about the license."""

    license: License | None = None
    loaded_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    loads: int = 0
    refusals: int = 0
    clock_behind: bool = False


class LicenseSource:
    """Reads, verifies and installs the license; `poll` once, or `watch` until cancelled."""

    def __init__(
        self,
        license_path: Path,
        key_paths: Sequence[Path],
        replica_path: Path,
        *,
        busy_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.license_path = license_path
        self.key_paths = tuple(key_paths)
        self.replica_path = replica_path
        self.busy_timeout_s = busy_timeout_s
        self.clock = clock
        self.status = LicenseStatus()
        self._seen: str | None = None  # the fingerprint of the files last examined
        self._generation: int | None = None  # the replica's generation our last install wrote

    def start(self) -> License:
        """Verify and install the license before the sidecar answers; raises LicenseError (the
        sidecar does not start on a license it cannot verify)."""
        fingerprint, token = self._read_files()
        license = self._verified(token)
        self._install(license)
        self._seen = fingerprint
        return license

    def poll(self) -> bool:
        """Look at the files once; True when a renewed license was installed. A file that does not
        verify keeps the last good license in force (status, log, metric); the clock is checked too."""
        try:
            installed = self._poll()
        finally:
            self._check_clock()
        return installed

    def _poll(self) -> bool:
        if self._replaced_behind_our_back():
            return True
        try:
            fingerprint, token = self._read_files()
        except LicenseError as exc:
            self._refused(exc.message, fingerprint=f"unreadable:{exc.message}")
            return False
        if fingerprint == self._seen:
            return False
        self._seen = fingerprint
        try:
            license = self._verified(token)
        except LicenseError as exc:
            self._refused(exc.message, fingerprint=fingerprint)
            return False
        current = self.status.license
        self.status.last_error = None
        if current is not None and current.token == license.token:
            return False  # the same license again (keys rotated, or a refused file put back)
        self._install(license)
        return True

    async def watch(self, every_s: float) -> None:
        """Poll every `every_s` seconds until cancelled; a failure is logged, never fatal."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await asyncio.to_thread(self.poll)
            except Exception:
                log.exception("license_poll_failed", license=str(self.license_path))

    # -- reading and installing --------------------------------------------------------------------

    def _read_files(self) -> tuple[str, str]:
        """A fingerprint of the license and every key file, and the license's text."""
        try:
            raw = self.license_path.read_bytes()
        except OSError as exc:
            raise LicenseError(
                f"cannot read the license {self.license_path} (TIERGATE_LICENSE_PATH): {exc.strerror}"
            ) from None
        keys: list[bytes] = []
        for path in self.key_paths:
            try:
                keys.append(path.read_bytes())
            except OSError as exc:
                raise LicenseError(
                    f"cannot read the public key {path} (TIERGATE_LICENSE_PUBLIC_KEYS): {exc.strerror}"
                ) from None
        digest = hashlib.sha256(raw)
        for key in keys:
            digest.update(b"\x00" + key)
        return digest.hexdigest(), raw.decode("utf-8", errors="replace")

    def _verified(self, token: str) -> License:
        try:
            return verify(token, load_public_keys(self.key_paths))
        except LicenseError as exc:
            raise LicenseError(f"license {self.license_path} refused: {exc.message}") from None

    def _replaced_behind_our_back(self) -> bool:
        """The replica's content is the license's alone: when something else replaced it (a
        `tiergate replica import`), the license in force is written again."""
        license = self.status.license
        if license is None or self._replica_generation() == self._generation:
            return False
        log.warning(
            "license_reinstalled",
            license_id=license.claims.lid,
            reason="the replica was replaced by something other than the license (an import?)",
        )
        self._install(license)
        return True

    def _replica_generation(self) -> int | None:
        try:
            conn = sqlite3.connect(f"file:{self.replica_path}?mode=ro", uri=True, timeout=self.busy_timeout_s)
        except sqlite3.Error:
            return None
        try:
            return read_meta(conn).generation
        except sqlite3.Error:
            return None
        finally:
            conn.close()

    def _install(self, license: License) -> None:
        db = open_replica(self.replica_path, self.busy_timeout_s)
        try:
            ReplicaWriter(db).replace_all(
                [license.account()],
                [],
                data_as_of=datetime.fromtimestamp(self.clock(), UTC),
                source=SOURCE,
                overrides=license.overrides(),
                license=license.facts(),
            )
            self._generation = read_meta(db.conn).generation
        finally:
            db.close()
        renewed = self.status.license is not None
        self.status.license = license
        self.status.loaded_at = self.clock()
        self.status.loads += 1
        self.status.last_error = None
        log.info(
            "license_renewed" if renewed else "license_loaded",
            license_id=license.claims.lid,
            tenant=license.tenant,
            tier=license.claims.tier,
            not_after=rfc3339(license.not_after),
            grace_until=rfc3339(license.grace_until),
            key_id=license.key_id,
        )

    def _refused(self, message: str, *, fingerprint: str) -> None:
        if fingerprint == self._seen and self.status.last_error is not None:
            return  # the same refused file: said once
        self._seen = fingerprint
        self.status.last_error = message
        self.status.last_error_at = self.clock()
        self.status.refusals += 1
        current = self.status.license
        log.error(
            "license_refused",
            error=message,
            keeping=current.claims.lid if current else None,
            hint="the last good license stays in force; fix or replace the file",
        )

    def _check_clock(self) -> None:
        license = self.status.license
        behind = license is not None and self.clock() < license.claims.iat
        if behind and not self.status.clock_behind and license is not None:
            log.error(
                "license_clock_behind",
                now=rfc3339(datetime.fromtimestamp(self.clock(), UTC)),
                issued_at=rfc3339(license.issued_at),
                hint="the system clock is earlier than the license's issue time; decisions use the "
                "issue time until the clock is right",
            )
        self.status.clock_behind = behind

    # -- reporting -----------------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        """The license as /v1/status shows it."""
        status, license = self.status, self.status.license
        body: dict[str, Any] = {
            "path": str(self.license_path),
            "loaded_at": _time(status.loaded_at),
            "last_error": status.last_error,
            "last_error_at": _time(status.last_error_at),
            "refusals": status.refusals,
            "clock_behind": status.clock_behind,
            "state": self.state(),
        }
        if license is not None:
            body |= license.facts() | {"seats": license.claims.seats}
        return body

    def state(self) -> str:
        """valid, grace or expired (on this host's clock), or none before any license."""
        license = self.status.license
        if license is None:
            return "none"
        now = max(self.clock(), float(license.claims.iat))
        if now < license.claims.exp:
            return "valid"
        return "grace" if now < license.grace_until.timestamp() else "expired"

    def warnings(self) -> dict[str, str]:
        """For the /readyz body: a refused file and a clock behind the license (never not-ready)."""
        found: dict[str, str] = {}
        license = self.status.license
        if self.status.last_error is not None and license is not None:
            found["license"] = f"{self.status.last_error}; license {license.claims.lid} stays in force"
        if self.status.clock_behind and license is not None:
            found["license_clock"] = (
                f"the system clock is earlier than the license's issue time ({rfc3339(license.issued_at)})"
            )
        return found


def _time(epoch: float | None) -> str | None:
    return None if epoch is None else rfc3339(datetime.fromtimestamp(epoch, UTC))


def key_paths(setting: str) -> list[Path]:
    """TIERGATE_LICENSE_PUBLIC_KEYS: comma-separated paths, empty entries skipped."""
    return [Path(part.strip()) for part in setting.split(",") if part.strip()]
