"""What both Python clients share before any byte moves: their checked options, the call each
method makes, a call's retry budget and the fail policy's answer when no attempt got through.

`TiergateClient` (sync.py) and `AsyncTiergateClient` (aio.py) differ only in how they send."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict, TypeVar

from tiergate.client import calls
from tiergate.client.calls import (
    Call,
    Endpoint,
    Entitlements,
    FailPolicy,
    Hold,
    HoldState,
    Overage,
    Reservation,
    UsageReceipt,
)
from tiergate.errors import SidecarUnreachableError, TierError
from tiergate.models import Decision

T = TypeVar("T")

log = logging.getLogger("tiergate.client")

DEFAULT_URL = "http://127.0.0.1:9191"
DEFAULT_TIMEOUT_S = 0.5


class ReserveOptions(TypedDict, total=False):
    """`reserve`'s keyword options."""

    transaction_id: str | None  # the caller's idempotency key (default: a new one, fixed before any retry)
    timeout_s: float | None  # this call's bound (default: the client's `timeout_s`)


class HoldOptions(TypedDict, total=False):
    """`hold`'s keyword options."""

    ttl_s: int | None  # seconds until the hold releases itself (default: the sidecar's, 300)
    transaction_id: str | None  # idempotency key and the settled event's id (default: a new one)
    overage: Overage  # the settle's rule beyond the hold: reject (default), cap, allow
    timeout_s: float | None  # each call's bound (default: the client's `timeout_s`)


class HoldScopeBase:
    """What both clients' `hold()` scopes share: the hold, the quantity to settle at the end (the
    held quantity unless `record` says otherwise), and the call that ends the block."""

    def __init__(self, tenant: str, feature: str, quantity: int, options: HoldOptions) -> None:
        self.args, self.options = (tenant, feature, quantity), options
        self._hold: Hold | None = None
        self.quantity: int | None = None
        self.result: HoldState | None = None  # the settle's or release's answer, once the block ended

    @property
    def hold(self) -> Hold:
        if self._hold is None:
            raise RuntimeError("the hold is created when the `with` block is entered")
        return self._hold

    @property
    def allow(self) -> bool:
        return self.hold.allow

    @property
    def decision(self) -> Decision:
        return self.hold.decision

    def record(self, quantity: int) -> None:
        """The quantity really used: settled when the block ends without an exception."""
        if quantity < 0:
            raise ValueError(f"a hold settles a quantity >= 0, got {quantity}")
        self.quantity = quantity

    def end_call(self, failed: bool) -> Call[HoldState] | None:
        """Settle after a clean exit, release after an exception; None when nothing was held."""
        state = self.hold.state
        if state is None:
            return None
        if failed:
            return calls.release_hold(state.hold_id)
        quantity = state.held if self.quantity is None else self.quantity
        return calls.settle_hold(state.hold_id, quantity, self.options.get("overage", "reject"))

    def release_failed(self, error: TierError) -> None:
        """The block's own exception matters more than a failed release: the hold expires anyway."""
        log.warning("hold_release_failed hold_id=%s error=%s", self.hold.hold_id, error.message)


class ClientBase:
    """The options both clients take. `timeout_s` bounds a whole call (retries included) unless
    the call passes its own; with `check_url` (the sidecar's TIERGATE_CHECK_PORT) checks go there
    as GET /v1/check, every other call to `base_url`."""

    DEFAULT_POOL_SIZE = 8  # connections per listener when `pool_size` is not given

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        check_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        fail_policy: FailPolicy | None = None,
        retries: int = 1,
        pool_size: int | None = None,
    ) -> None:
        pool_size = self.DEFAULT_POOL_SIZE if pool_size is None else pool_size
        calls.client_options(base_url, timeout_s, retries, pool_size)
        if check_url is not None:
            calls.sidecar_url("check_url", check_url)
        self.base_url = base_url.rstrip("/")
        self.check_url = check_url.rstrip("/") if check_url is not None else None
        self.urls: dict[Endpoint, str] = {"main": self.base_url}
        if self.check_url is not None:
            self.urls["check"] = self.check_url
        self.timeout_s = timeout_s
        self.fail_policy = fail_policy or FailPolicy()
        self.retries = retries
        self.pool_size = pool_size
        self._start()

    def _start(self) -> None:
        """What a transport sets up once its options are checked (the blocking client's pools)."""

    def check_call(self, tenant: str, feature: str, quantity: int) -> Call[Decision]:
        endpoint: Endpoint = "check" if "check" in self.urls else "main"
        return calls.check(self.fail_policy, tenant, feature, quantity, endpoint=endpoint)

    def check_batch_call(self, checks: Sequence[tuple[str, str, int]]) -> Call[tuple[Decision, ...]]:
        return calls.check_batch(self.fail_policy, checks)

    def reserve_call(
        self, tenant: str, feature: str, quantity: int, options: ReserveOptions
    ) -> Call[Reservation]:
        return calls.reserve(self.fail_policy, tenant, feature, quantity, options.get("transaction_id"))

    def hold_call(self, tenant: str, feature: str, quantity: int, options: HoldOptions) -> Call[Hold]:
        return calls.hold(
            self.fail_policy, tenant, feature, quantity, options.get("ttl_s"), options.get("transaction_id")
        )

    @staticmethod
    def entitlements_call(tenant: str) -> Call[Entitlements]:
        return calls.entitlements(tenant)

    @staticmethod
    def record_usage_call(
        events: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    ) -> Call[tuple[UsageReceipt, ...]]:
        return calls.record_usage(events)

    def attempts(self, call: Call[Any], timeout_s: float | None) -> Attempts:
        return Attempts(call, self.urls[call.endpoint], timeout_s or self.timeout_s, self.retries)


class Attempts:
    """One call's retry budget: a deadline over every attempt and a number of retries."""

    def __init__(self, call: Call[Any], url: str, timeout_s: float, retries: int) -> None:
        self.call, self.url, self.timeout_s, self.retries = call, url, timeout_s, retries
        self.deadline = time.monotonic() + timeout_s
        self.attempt = 0

    def next(self) -> float:
        """Start an attempt; the seconds it may take."""
        self.attempt += 1
        return self.remaining()

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.001)

    def failed(self, exc: BaseException, *, timed_out: bool) -> None:
        """An attempt got no answer: return to try again, or raise once the budget is spent."""
        timed_out = timed_out or time.monotonic() >= self.deadline
        if timed_out or self.attempt > self.retries:
            what = "no answer within" if timed_out else "failed after"
            raise SidecarUnreachableError(
                f"{self.call.method} {self.url}{self.call.path}: {what} {self.timeout_s}s "
                f"({self.attempt} attempt(s)): {exc!r}"
            ) from exc


def settle(call: Call[T], url: str, exc: SidecarUnreachableError) -> T:
    """The fail policy's answer to a call no attempt got through (or the error, for calls without one)."""
    if call.unreachable is None:
        raise exc
    log.warning("sidecar_unreachable url=%s path=%s error=%s", url, call.path, exc.message)
    return call.unreachable()
