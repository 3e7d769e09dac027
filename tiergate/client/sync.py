"""`TiergateClient`: the blocking client, over the standard library's kept-alive HTTP connections."""

from __future__ import annotations

import http.client
import queue
import socket
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, Unpack
from urllib.parse import SplitResult, urlsplit

from tiergate.client import calls
from tiergate.client.base import Attempts, ClientBase, HoldOptions, HoldScopeBase, ReserveOptions, settle
from tiergate.client.calls import Call, Entitlements, Hold, HoldState, Overage, Reservation, UsageReceipt
from tiergate.errors import SidecarUnreachableError, TierError
from tiergate.models import Decision

T = TypeVar("T")
# Errors that mean "no answer came", as opposed to an answer we did not like.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


class _Pool:
    """Kept-alive connections to one listener of the sidecar (its main port or its check port)."""

    def __init__(self, url: str, parts: SplitResult, size: int) -> None:
        self.url = url.rstrip("/")
        self.host = parts.hostname or ""  # client_options refused a URL without one
        self.port = parts.port or 80
        self.idle: queue.LifoQueue[http.client.HTTPConnection] = queue.LifoQueue(maxsize=size)

    def borrow(self, timeout_s: float) -> http.client.HTTPConnection:
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            return http.client.HTTPConnection(self.host, self.port, timeout=max(timeout_s, 0.001))

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        try:
            self.idle.put_nowait(conn)
        except queue.Full:
            conn.close()

    def close(self) -> None:
        while True:
            try:
                self.idle.get_nowait().close()
            except queue.Empty:
                return


class TiergateClient(ClientBase):
    """Calls one sidecar; safe to share between threads (each call borrows a pooled connection).

    A check the sidecar does not answer gets the fail policy's decision, with reason
    `sidecar_unreachable`. The check listener (`check_url`) gets a pool of its own."""

    def _start(self) -> None:
        self._pools = {
            endpoint: _Pool(url, urlsplit(url), self.pool_size) for endpoint, url in self.urls.items()
        }

    def check(
        self, tenant: str, feature: str, quantity: int = 1, *, timeout_s: float | None = None
    ) -> Decision:
        return self.run(self.check_call(tenant, feature, quantity), timeout_s)

    def check_batch(
        self, checks: Sequence[tuple[str, str, int]], *, timeout_s: float | None = None
    ) -> tuple[Decision, ...]:
        """Up to the sidecar's batch limit (1,000 by default) of (tenant, feature, quantity)."""
        return self.run(self.check_batch_call(checks), timeout_s)

    def reserve(
        self, tenant: str, feature: str, quantity: int = 1, **options: Unpack[ReserveOptions]
    ) -> Reservation:
        """Check and, when allowed, record `quantity` of a metered feature in one step."""
        return self.run(self.reserve_call(tenant, feature, quantity, options), options.get("timeout_s"))

    def hold(self, tenant: str, feature: str, quantity: int = 1, **options: Unpack[HoldOptions]) -> HoldScope:
        """`with client.hold(...) as h:` holds `quantity` on entry (check `h.allow`); a clean exit
        settles it (or what `h.record(n)` said), an exception releases it."""
        return HoldScope(self, tenant, feature, quantity, options)

    def create_hold(
        self, tenant: str, feature: str, quantity: int = 1, **options: Unpack[HoldOptions]
    ) -> Hold:
        return self.run(self.hold_call(tenant, feature, quantity, options), options.get("timeout_s"))

    def settle_hold(
        self, hold_id: str, quantity: int, *, overage: Overage = "reject", timeout_s: float | None = None
    ) -> HoldState:
        return self.run(calls.settle_hold(hold_id, quantity, overage), timeout_s)

    def extend_hold(self, hold_id: str, ttl_s: int, *, timeout_s: float | None = None) -> HoldState:
        return self.run(calls.extend_hold(hold_id, ttl_s), timeout_s)

    def release_hold(self, hold_id: str, *, timeout_s: float | None = None) -> HoldState:
        return self.run(calls.release_hold(hold_id), timeout_s)

    def entitlements(self, tenant: str, *, timeout_s: float | None = None) -> Entitlements:
        return self.run(self.entitlements_call(tenant), timeout_s)

    def record_usage(
        self, events: Mapping[str, Any] | Sequence[Mapping[str, Any]], *, timeout_s: float | None = None
    ) -> tuple[UsageReceipt, ...]:
        """Lago-shaped events, one or up to 100; a missing `transaction_id` is generated."""
        return self.run(self.record_usage_call(events), timeout_s)

    def run(self, call: Call[T], timeout_s: float | None = None) -> T:
        pool = self._pools[call.endpoint]
        try:
            status, payload = self._exchange(pool, call, self.attempts(call, timeout_s))
            return calls.answer(call, status, payload, pool.url)
        except SidecarUnreachableError as exc:
            return settle(call, pool.url, exc)

    def _exchange(self, pool: _Pool, call: Call[Any], attempts: Attempts) -> tuple[int, bytes]:
        while True:
            remaining = attempts.next()
            conn = pool.borrow(remaining)
            try:
                return self._send(pool, conn, call, remaining)
            except TRANSPORT_ERRORS as exc:
                conn.close()
                attempts.failed(exc, timed_out=isinstance(exc, socket.timeout))

    def _send(
        self, pool: _Pool, conn: http.client.HTTPConnection, call: Call[Any], remaining: float
    ) -> tuple[int, bytes]:
        conn.timeout = remaining  # for a (re)connect; a kept-alive socket gets it below
        if conn.sock is not None:
            conn.sock.settimeout(remaining)
        headers = {"Content-Type": "application/json"} if call.body is not None else {}
        conn.request(call.method, call.path, body=call.body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        if response.will_close:
            conn.close()
        pool.give_back(conn)
        return response.status, payload

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()

    def __enter__(self) -> TiergateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HoldScope(HoldScopeBase):
    """`TiergateClient.hold`'s `with` block."""

    def __init__(
        self, client: TiergateClient, tenant: str, feature: str, quantity: int, options: HoldOptions
    ) -> None:
        super().__init__(tenant, feature, quantity, options)
        self.client = client

    def __enter__(self) -> HoldScope:
        self._hold = self.client.create_hold(*self.args, **self.options)
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        call = self.end_call(failed=kind is not None)
        if call is None:
            return
        try:
            self.result = self.client.run(call, self.options.get("timeout_s"))
        except TierError as error:
            if kind is None:
                raise
            self.release_failed(error)
