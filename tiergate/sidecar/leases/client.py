"""The lease exchange over HTTP: POST {daemon}/v1/leases with the feed token."""

from __future__ import annotations

from typing import Any, Protocol

import aiohttp

from tiergate.sidecar.leases.slice import Slice

EXCHANGE_TIMEOUT_S = 5.0


class LeaseUnavailableError(Exception):
    """No answer from the daemon (down, refused, malformed): the lease stays as it was."""


class LeaseClient(Protocol):
    async def exchange(
        self, lease: Slice, *, want: int, need: int, rate: float, release: bool
    ) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class HttpLeaseClient:
    def __init__(self, daemon_url: str, token: str | None) -> None:
        self.daemon_url = daemon_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session: aiohttp.ClientSession | None = None

    async def exchange(
        self, lease: Slice, *, want: int, need: int, rate: float, release: bool
    ) -> dict[str, Any]:
        body = {
            "tenant": lease.tenant,
            "code": lease.code,
            "holder": lease.holder,
            "acked": lease.acked,
            "spent": lease.spent,
            "want": want,
            "need": need,
            "rate": round(rate, 3),
            "release": release,
        }
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=EXCHANGE_TIMEOUT_S, sock_connect=1)
            self._session = aiohttp.ClientSession(headers=self.headers, timeout=timeout)
        try:
            async with self._session.post(f"{self.daemon_url}/v1/leases", json=body) as response:
                answer = await response.json(content_type=None)
                if response.status != 200:
                    raise LeaseUnavailableError(f"daemon answered {response.status} to /v1/leases: {answer}")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise LeaseUnavailableError(f"no lease answer from {self.daemon_url}: {exc!r}") from exc
        if not isinstance(answer, dict) or not isinstance(answer.get("window"), str):
            raise LeaseUnavailableError(f"malformed answer from /v1/leases: {answer!r}")
        return answer

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
