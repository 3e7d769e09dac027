"""PolicyReloader: load the policy bundle at start, then follow changes on disk, keeping the last good one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import watchfiles

from tiergate.errors import TierError
from tiergate.log import host_safe_logger
from tiergate.sidecar.policy.bundle import load_bundle
from tiergate.sidecar.policy.engine import PolicyBundle, PolicyEngine

log = host_safe_logger(__name__)  # also runs inside a host app (LocalDecisions)

DEBOUNCE_MS = 100
RETRY_WATCH_S = 1.0
STOP_TIMEOUT_S = 5.0


class PolicyReloader:
    """Feeds `engine` from `policies_dir` and `plans_path`.

    A failed reload keeps the last good bundle serving (every pod gets the same ConfigMap, so
    failing on a bad push would be a cluster-wide outage); it shows in `status()`, the
    `policy_reload_failed` log event and `on_failure(message)`. `on_reload(revision)` runs after
    each successful swap, the first load included (the sidecar clears its decision cache there).
    A change on disk that leaves the bundle's revision unchanged does not reload.
    """

    def __init__(
        self,
        engine: PolicyEngine,
        policies_dir: Path,
        plans_path: Path,
        *,
        on_reload: Callable[[str], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.policies_dir = policies_dir
        self.plans_path = plans_path
        self.on_reload = on_reload
        self.on_failure = on_failure
        self.bundle: PolicyBundle | None = None
        self.loaded_at: datetime | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.reloads_ok = 0
        self.reloads_failed = 0
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def healthy_bundle(self) -> bool:
        """A bundle is loaded and the latest attempt to load the files on disk succeeded."""
        return self.bundle is not None and self.last_error is None

    def status(self) -> dict[str, Any]:
        return {
            "revision": self.bundle.revision if self.bundle else None,
            "loaded_at": _rfc3339(self.loaded_at),
            "last_error": self.last_error,
            "last_error_at": _rfc3339(self.last_error_at),
            "reloads_ok": self.reloads_ok,
            "reloads_failed": self.reloads_failed,
        }

    async def start(self) -> None:
        """Load once (raising its PolicyError/CatalogError: nothing to serve yet), then watch."""
        async with self._lock:
            try:
                await self._apply()
            except TierError as exc:
                self._failed(exc)
                raise
        self._stop.clear()
        self._task = asyncio.create_task(self._watch(), name="policy-reloader")
        # The task's first step sets the OS watches (awatch builds its notifier before it first
        # suspends); a change made between the load above and that point would go unseen, so
        # look once more now that the watches are in place. Unchanged files cost a hash.
        await asyncio.sleep(0)
        await self.reload_now()

    async def stop(self) -> None:
        # The watcher polls the event every 50 ms from its thread; a cancel alone would leave
        # that thread blocked in Rust until its own timeout.
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, STOP_TIMEOUT_S)

    async def reload_now(self) -> bool:
        """Read the files and swap the bundle in if it changed; False when the attempt failed."""
        async with self._lock:
            try:
                await self._apply()
            except TierError as exc:
                self._failed(exc)
                return False
            return True

    async def _apply(self) -> None:
        # file reads off the loop; engine.load on it (regorus engines are bound to their thread)
        bundle = await asyncio.to_thread(load_bundle, self.policies_dir, self.plans_path)
        if self.bundle is not None and bundle.revision == self.bundle.revision:
            self.last_error = None  # e.g. a broken file was put back as it was
            return
        await self.engine.load(bundle)
        self._loaded(bundle)

    def _loaded(self, bundle: PolicyBundle) -> None:
        self.bundle, self.loaded_at, self.last_error = bundle, datetime.now(UTC), None
        self.reloads_ok += 1
        log.info("policy_loaded", revision=bundle.revision, modules=sorted(bundle.modules))
        if self.on_reload is not None:
            self.on_reload(bundle.revision)

    def _failed(self, exc: TierError) -> None:
        self.last_error, self.last_error_at = exc.message, datetime.now(UTC)
        self.reloads_failed += 1
        log.error(
            "policy_reload_failed",
            code=exc.code,
            error=exc.message,
            serving=self.bundle.revision if self.bundle else None,
        )
        if self.on_failure is not None:
            self.on_failure(exc.message)

    async def _watch(self) -> None:
        # the plans file's directory, not the file: editors and ConfigMap updates replace files
        paths = {self.policies_dir, self.plans_path.parent}
        while not self._stop.is_set():
            try:
                async for _changes in watchfiles.awatch(
                    *sorted(paths), watch_filter=None, debounce=DEBOUNCE_MS, stop_event=self._stop
                ):
                    await self.reload_now()
            except Exception as exc:  # a vanished directory must not end reloading for good
                log.warning("policy_watch_failed", error=str(exc), retry_in_s=RETRY_WATCH_S)
                await asyncio.sleep(RETRY_WATCH_S)


def _rfc3339(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None
