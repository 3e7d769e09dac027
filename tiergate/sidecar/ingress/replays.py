"""The hook's dedup window: a proxy's retry of one request is counted once, for a bounded time.

The key comes only from a header the proxy generates (TIERGATE_AUTHZ_REQUEST_ID_HEADER, e.g. NGINX's
$request_id), never from the client. A replay of a key this window remembers for the same tenant and
request is not counted again, and is let through only while the limit check still holds with the
original unit counted (see IngressGate); anything else is a new request.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Counted:
    tenant: str
    method: str
    path: str
    expires: float


class ReplayWindow:
    def __init__(
        self, window_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self.clock = clock
        self._seen: OrderedDict[str, Counted] = OrderedDict()  # insertion order is expiry order

    def __len__(self) -> int:
        return len(self._seen)

    def counted(self, key: str, tenant: str, method: str, path: str) -> bool:
        """True when this exact request was counted under `key` within the window."""
        self._expire()
        seen = self._seen.get(key)
        return seen is not None and (seen.tenant, seen.method, seen.path) == (tenant, method, path)

    def remember(self, key: str, tenant: str, method: str, path: str) -> None:
        self._seen.pop(key, None)
        self._seen[key] = Counted(tenant, method, path, self.clock() + self.window_s)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)

    def _expire(self) -> None:
        now = self.clock()
        while self._seen:
            key, oldest = next(iter(self._seen.items()))
            if oldest.expires > now:
                return
            del self._seen[key]
