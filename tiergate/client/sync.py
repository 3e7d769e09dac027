"""`TiergateClient`: the blocking client, over the standard library's kept-alive HTTP connections."""

from __future__ import annotations

import http.client
import logging
import queue
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import SplitResult

from tiergate.client import calls
from tiergate.client.calls import Call, Entitlements, FailPolicy, Reservation, UsageReceipt
from tiergate.errors import SidecarUnreachableError
from tiergate.models import Decision

T = TypeVar("T")

log = logging.getLogger("tiergate.client")

DEFAULT_URL = "http://127.0.0.1:9191"
DEFAULT_TIMEOUT_S = 0.5
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


class TiergateClient:
    """Calls one sidecar; safe to share between threads (each call borrows a pooled connection).

    `timeout_s` bounds a whole call (retries included) unless the call passes its own. A check the
    sidecar does not answer gets the fail policy's decision, with reason `sidecar_unreachable`.
    With `check_url` (the sidecar's TIERGATE_CHECK_PORT), `check()` sends GET /v1/check there over
    a pool of its own; every other call still goes to `base_url`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        check_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        fail_policy: FailPolicy | None = None,
        retries: int = 1,
        pool_size: int = 8,
    ) -> None:
        parts = calls.client_options(base_url, timeout_s, retries, pool_size)
        self.base_url = base_url.rstrip("/")
        self.check_url = check_url.rstrip("/") if check_url is not None else None
        self.timeout_s = timeout_s
        self.fail_policy = fail_policy or FailPolicy()
        self.retries = retries
        self._pools: dict[calls.Endpoint, _Pool] = {"main": _Pool(base_url, parts, pool_size)}
        if check_url is not None:
            self._pools["check"] = _Pool(check_url, calls.sidecar_url("check_url", check_url), pool_size)

    def check(
        self, tenant: str, feature: str, quantity: int = 1, *, timeout_s: float | None = None
    ) -> Decision:
        endpoint: calls.Endpoint = "check" if "check" in self._pools else "main"
        return self.run(
            calls.check(self.fail_policy, tenant, feature, quantity, endpoint=endpoint), timeout_s
        )

    def check_batch(
        self, checks: Sequence[tuple[str, str, int]], *, timeout_s: float | None = None
    ) -> tuple[Decision, ...]:
        """Up to the sidecar's batch limit (1,000 by default) of (tenant, feature, quantity)."""
        return self.run(calls.check_batch(self.fail_policy, checks), timeout_s)

    def reserve(
        self,
        tenant: str,
        feature: str,
        quantity: int = 1,
        *,
        transaction_id: str | None = None,
        timeout_s: float | None = None,
    ) -> Reservation:
        """Check and, when allowed, record `quantity` of a metered feature in one step."""
        return self.run(calls.reserve(self.fail_policy, tenant, feature, quantity, transaction_id), timeout_s)

    def entitlements(self, tenant: str, *, timeout_s: float | None = None) -> Entitlements:
        return self.run(calls.entitlements(tenant), timeout_s)

    def record_usage(
        self, events: Mapping[str, Any] | Sequence[Mapping[str, Any]], *, timeout_s: float | None = None
    ) -> tuple[UsageReceipt, ...]:
        """Lago-shaped events, one or up to 100; a missing `transaction_id` is generated."""
        return self.run(calls.record_usage(events), timeout_s)

    def run(self, call: Call[T], timeout_s: float | None = None) -> T:
        pool = self._pools[call.endpoint]
        try:
            status, payload = self._exchange(pool, call, timeout_s or self.timeout_s)
            return calls.answer(call, status, payload, pool.url)
        except SidecarUnreachableError as exc:
            if call.unreachable is None:
                raise
            log.warning("sidecar_unreachable url=%s path=%s error=%s", pool.url, call.path, exc.message)
            return call.unreachable()

    def _exchange(self, pool: _Pool, call: Call[Any], timeout_s: float) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            attempt += 1
            remaining = max(deadline - time.monotonic(), 0.001)
            conn = pool.borrow(remaining)
            try:
                return self._send(pool, conn, call, remaining)
            except TRANSPORT_ERRORS as exc:
                conn.close()
                timed_out = isinstance(exc, socket.timeout) or time.monotonic() >= deadline
                if timed_out or attempt > self.retries:
                    what = "no answer within" if timed_out else "failed after"
                    raise SidecarUnreachableError(
                        f"{call.method} {pool.url}{call.path}: {what} {timeout_s}s "
                        f"({attempt} attempt(s)): {exc!r}"
                    ) from exc

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
