"""`AsyncTiergateClient`: the asyncio client, over one aiohttp session with kept-alive connections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, Unpack

import aiohttp

from tiergate.client import calls
from tiergate.client.base import Attempts, ClientBase, HoldOptions, HoldScopeBase, ReserveOptions, settle
from tiergate.client.calls import Call, Entitlements, Hold, HoldState, Overage, Reservation, UsageReceipt
from tiergate.errors import SidecarUnreachableError, TierError
from tiergate.models import Decision

T = TypeVar("T")


class AsyncTiergateClient(ClientBase):
    """The same calls as `TiergateClient`, awaited. Open it once (`async with`) and share it: the
    session keeps connections to the sidecar alive between calls, up to `pool_size` (default 32)
    per listener."""

    DEFAULT_POOL_SIZE = 32
    _session: aiohttp.ClientSession | None = None

    async def check(
        self, tenant: str, feature: str, quantity: int = 1, *, timeout_s: float | None = None
    ) -> Decision:
        return await self.run(self.check_call(tenant, feature, quantity), timeout_s)

    async def check_batch(
        self, checks: Sequence[tuple[str, str, int]], *, timeout_s: float | None = None
    ) -> tuple[Decision, ...]:
        return await self.run(self.check_batch_call(checks), timeout_s)

    async def reserve(
        self, tenant: str, feature: str, quantity: int = 1, **options: Unpack[ReserveOptions]
    ) -> Reservation:
        return await self.run(self.reserve_call(tenant, feature, quantity, options), options.get("timeout_s"))

    def hold(
        self, tenant: str, feature: str, quantity: int = 1, **options: Unpack[HoldOptions]
    ) -> AsyncHoldScope:
        """`async with client.hold(...) as h:` holds `quantity` on entry (check `h.allow`); a clean
        exit settles it (or what `h.record(n)` said), an exception releases it."""
        return AsyncHoldScope(self, tenant, feature, quantity, options)

    async def create_hold(
        self, tenant: str, feature: str, quantity: int = 1, **options: Unpack[HoldOptions]
    ) -> Hold:
        return await self.run(self.hold_call(tenant, feature, quantity, options), options.get("timeout_s"))

    async def settle_hold(
        self, hold_id: str, quantity: int, *, overage: Overage = "reject", timeout_s: float | None = None
    ) -> HoldState:
        return await self.run(calls.settle_hold(hold_id, quantity, overage), timeout_s)

    async def extend_hold(self, hold_id: str, ttl_s: int, *, timeout_s: float | None = None) -> HoldState:
        return await self.run(calls.extend_hold(hold_id, ttl_s), timeout_s)

    async def release_hold(self, hold_id: str, *, timeout_s: float | None = None) -> HoldState:
        return await self.run(calls.release_hold(hold_id), timeout_s)

    async def entitlements(self, tenant: str, *, timeout_s: float | None = None) -> Entitlements:
        return await self.run(self.entitlements_call(tenant), timeout_s)

    async def record_usage(
        self, events: Mapping[str, Any] | Sequence[Mapping[str, Any]], *, timeout_s: float | None = None
    ) -> tuple[UsageReceipt, ...]:
        return await self.run(self.record_usage_call(events), timeout_s)

    async def run(self, call: Call[T], timeout_s: float | None = None) -> T:
        url = self.urls[call.endpoint]
        try:
            status, payload = await self._exchange(url, call, self.attempts(call, timeout_s))
            return calls.answer(call, status, payload, url)
        except SidecarUnreachableError as exc:
            return settle(call, url, exc)

    async def _exchange(self, url: str, call: Call[Any], attempts: Attempts) -> tuple[int, bytes]:
        session = self._open()
        headers = {"Content-Type": "application/json"} if call.body is not None else None
        while True:
            timeout = aiohttp.ClientTimeout(total=attempts.next())
            try:
                async with session.request(
                    call.method, url + call.path, data=call.body, headers=headers, timeout=timeout
                ) as response:
                    return response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                attempts.failed(exc, timed_out=isinstance(exc, TimeoutError))

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # One pool per listener (a check port that hangs cannot starve the main port's calls).
            connector = aiohttp.TCPConnector(
                limit=self.pool_size * len(self.urls), limit_per_host=self.pool_size
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


class AsyncHoldScope(HoldScopeBase):
    """`AsyncTiergateClient.hold`'s `async with` block."""

    def __init__(
        self, client: AsyncTiergateClient, tenant: str, feature: str, quantity: int, options: HoldOptions
    ) -> None:
        super().__init__(tenant, feature, quantity, options)
        self.client = client

    async def __aenter__(self) -> AsyncHoldScope:
        self._hold = await self.client.create_hold(*self.args, **self.options)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        call = self.end_call(failed=kind is not None)
        if call is None:
            return
        try:
            self.result = await self.client.run(call, self.options.get("timeout_s"))
        except TierError as error:
            if kind is None:
                raise
            self.release_failed(error)
