"""`AsyncTiergateClient`: the asyncio client, over one aiohttp session with kept-alive connections."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import aiohttp

from tiergate.client import calls
from tiergate.client.calls import Call, Entitlements, FailPolicy, Reservation, UsageReceipt
from tiergate.client.sync import DEFAULT_TIMEOUT_S, DEFAULT_URL
from tiergate.errors import SidecarUnreachableError
from tiergate.models import Decision

T = TypeVar("T")

log = logging.getLogger("tiergate.client")


class AsyncTiergateClient:
    """The same calls as `TiergateClient`, awaited. Open it once (`async with`) and share it: the
    session keeps connections to the sidecar alive between calls. With `check_url` (the sidecar's
    TIERGATE_CHECK_PORT), `check()` sends GET /v1/check there, with up to `pool_size` connections
    of its own; every other call still goes to `base_url`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        check_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        fail_policy: FailPolicy | None = None,
        retries: int = 1,
        pool_size: int = 32,
    ) -> None:
        calls.client_options(base_url, timeout_s, retries, pool_size)
        self.base_url = base_url.rstrip("/")
        if check_url is not None:
            calls.sidecar_url("check_url", check_url)
        self.check_url = check_url.rstrip("/") if check_url is not None else None
        self._urls: dict[calls.Endpoint, str] = {"main": self.base_url}
        if self.check_url is not None:
            self._urls["check"] = self.check_url
        self.timeout_s = timeout_s
        self.fail_policy = fail_policy or FailPolicy()
        self.retries = retries
        self.pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    async def check(
        self, tenant: str, feature: str, quantity: int = 1, *, timeout_s: float | None = None
    ) -> Decision:
        endpoint: calls.Endpoint = "check" if "check" in self._urls else "main"
        call = calls.check(self.fail_policy, tenant, feature, quantity, endpoint=endpoint)
        return await self.run(call, timeout_s)

    async def check_batch(
        self, checks: Sequence[tuple[str, str, int]], *, timeout_s: float | None = None
    ) -> tuple[Decision, ...]:
        return await self.run(calls.check_batch(self.fail_policy, checks), timeout_s)

    async def reserve(
        self,
        tenant: str,
        feature: str,
        quantity: int = 1,
        *,
        transaction_id: str | None = None,
        timeout_s: float | None = None,
    ) -> Reservation:
        call = calls.reserve(self.fail_policy, tenant, feature, quantity, transaction_id)
        return await self.run(call, timeout_s)

    async def entitlements(self, tenant: str, *, timeout_s: float | None = None) -> Entitlements:
        return await self.run(calls.entitlements(tenant), timeout_s)

    async def record_usage(
        self, events: Mapping[str, Any] | Sequence[Mapping[str, Any]], *, timeout_s: float | None = None
    ) -> tuple[UsageReceipt, ...]:
        return await self.run(calls.record_usage(events), timeout_s)

    async def run(self, call: Call[T], timeout_s: float | None = None) -> T:
        url = self._urls[call.endpoint]
        try:
            status, payload = await self._exchange(url, call, timeout_s or self.timeout_s)
            return calls.answer(call, status, payload, url)
        except SidecarUnreachableError as exc:
            if call.unreachable is None:
                raise
            log.warning("sidecar_unreachable url=%s path=%s error=%s", url, call.path, exc.message)
            return call.unreachable()

    async def _exchange(self, url: str, call: Call[Any], timeout_s: float) -> tuple[int, bytes]:
        session = self._open()
        deadline = time.monotonic() + timeout_s
        headers = {"Content-Type": "application/json"} if call.body is not None else None
        attempt = 0
        while True:
            attempt += 1
            timeout = aiohttp.ClientTimeout(total=max(deadline - time.monotonic(), 0.001))
            try:
                async with session.request(
                    call.method, url + call.path, data=call.body, headers=headers, timeout=timeout
                ) as response:
                    return response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                timed_out = isinstance(exc, TimeoutError) or time.monotonic() >= deadline
                if timed_out or attempt > self.retries:
                    what = "no answer within" if timed_out else "failed after"
                    raise SidecarUnreachableError(
                        f"{call.method} {url}{call.path}: {what} {timeout_s}s ({attempt} attempt(s)): {exc!r}"
                    ) from exc

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # One pool per listener (a check port that hangs cannot starve the main port's calls).
            connector = aiohttp.TCPConnector(
                limit=self.pool_size * len(self._urls), limit_per_host=self.pool_size
            )
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncTiergateClient:
        self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
