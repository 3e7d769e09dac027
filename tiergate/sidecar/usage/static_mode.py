"""Static mode (no TIERGATE_DAEMON_URL): the replica holds what was imported and accepted usage
stays in the outbox, since nothing delivers it. Said at start, in /v1/status, and as the backlog grows."""

from __future__ import annotations

import structlog

log = structlog.get_logger("tiergate.sidecar")

NO_DAEMON = "no TIERGATE_DAEMON_URL: static mode, answering from the replica as imported"


LICENSED = "a signed license (TIERGATE_LICENSE_PATH) is the replica's source; no daemon"


def static_mode_warnings(accounts: int, backlog: int, *, licensed: bool = False) -> list[str]:
    """What an operator should know about a sidecar that follows no daemon (pure)."""
    if licensed:
        held = f"{backlog} accepted usage events are in the outbox" if backlog else "no usage recorded yet"
        return [LICENSED, f"{held}: `tiergate usage export` writes them out for billing"]
    warnings = [NO_DAEMON]
    if accounts == 0:
        warnings.append(
            "the replica is empty: every tenant gets the catalog's default tier "
            "(import tenants with `tiergate replica import`, or set TIERGATE_DAEMON_URL)"
        )
    if backlog:
        warnings.append(
            f"{backlog} accepted usage events are in the outbox and nothing delivers them "
            "(set TIERGATE_DAEMON_URL to deliver them to a sync daemon)"
        )
    return warnings


class UndeliveredUsage:
    """Warns when the undelivered backlog reaches 1, 10, 100, ... events: loud, never a flood."""

    def __init__(self, outbox: str) -> None:
        self.outbox = outbox
        self.next_warning_at = 1

    def __call__(self, backlog: int) -> None:
        if backlog < self.next_warning_at:
            return
        while self.next_warning_at <= backlog:
            self.next_warning_at *= 10
        log.warning(
            "usage_undelivered",
            backlog=backlog,
            outbox=self.outbox,
            reason="static mode: no TIERGATE_DAEMON_URL, so nothing delivers accepted usage",
        )
