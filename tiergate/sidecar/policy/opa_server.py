"""OpaServerEngine: the policy-engine port on a real OPA server, driven over its REST API."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import aiohttp
import structlog
from opa_client import AsyncOpaClient
from opa_client.errors import ConnectionsError, RegoParseError
from yarl import URL

from tiergate.errors import EngineUnavailableError, PolicyError, TierError
from tiergate.policy.engine import DECISION_PATH, ROUTE_PATH, PolicyBundle

try:
    import orjson

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value)
except ImportError:  # orjson is a declared dependency; plain json keeps a stripped image working

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()


log = structlog.get_logger(__name__)

POLICY_PREFIX = "tiergate/"  # policy ids we own on the server; anything else is left alone
T = TypeVar("T")
_JSON = {"Content-Type": "application/json"}
_GATEWAY_STATUSES = frozenset({502, 503, 504})  # a proxy in front of OPA, not OPA's own answer


class OpaServerEngine:
    """Pushes bundles to OPA (policy and data APIs) and asks it for decisions (data API).

    Atomicity is best-effort: OPA has no transaction across several policy pushes, so a bundle
    is applied as data first (`PUT /v1/data/plans`), then our modules that left the bundle are
    deleted (a renamed file must not collide with its old self), then every module is pushed
    (`PUT /v1/policies/tiergate/<file>`). If a step fails, the previous bundle is pushed back;
    between the steps, evaluations can see a mix of both bundles.

    Pushes go through `opa_client.AsyncOpaClient`. Evaluations and health checks use a session
    of our own: they need a per-request timeout of `timeout_s`, the error body of a 500 (the
    client raises on status and drops it) and no retry of 500s (an eval conflict is a 500 and
    retrying it only adds the client's back-off to the caller's latency).

    Open it with `async with` or `await open()`; the first `load`/`evaluate`/`ping` opens it too.
    `required` rule paths must have their package defined after a load, or the load is undone.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.5,
        push_timeout_s: float = 10.0,
        required: Sequence[str] = (DECISION_PATH, ROUTE_PATH),
    ) -> None:
        self.url = URL(url)
        if self.url.host is None or self.url.scheme not in ("http", "https"):
            raise EngineUnavailableError(f"OPA url {url!r} is not an http(s) URL with a host")
        self.timeout_s = timeout_s
        self.push_timeout_s = push_timeout_s
        self.required = tuple(required)
        self._bundle: PolicyBundle | None = None
        self._stack: AsyncExitStack | None = None
        self._client: AsyncOpaClient | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def revision(self) -> str | None:
        return self._bundle.revision if self._bundle else None

    async def __aenter__(self) -> OpaServerEngine:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._stack is not None:
            return
        stack = AsyncExitStack()
        client = AsyncOpaClient(
            host=self.url.host,
            port=self.url.port,
            ssl=self.url.scheme == "https",
            timeout=self.push_timeout_s,
        )
        self._client = await stack.enter_async_context(client)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        self._session = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
        self._stack = stack

    async def close(self) -> None:
        stack, self._stack, self._client, self._session = self._stack, None, None, None
        if stack is not None:
            await stack.aclose()

    async def load(self, bundle: PolicyBundle) -> None:
        """Push `bundle`; on failure push the previous one back and raise (PolicyError or
        EngineUnavailableError)."""
        await self.open()
        previous = self._bundle
        try:
            await self._push(bundle)
            await self._check_required()
        except TierError as exc:
            if previous is not None:
                await self._restore(previous, exc)
            raise
        self._bundle = bundle

    async def evaluate(self, path: str, document: Mapping[str, Any]) -> Any:
        status, body = await self._post(path, {"input": document})
        if status == 200:
            if "result" not in body:
                raise PolicyError(f"{path} is undefined for this input")
            return body["result"]
        message = f"OPA could not evaluate {path}: HTTP {status} {body.get('code')}: {body.get('message')}"
        if status in _GATEWAY_STATUSES:
            raise EngineUnavailableError(message)
        raise PolicyError(message)

    async def ping(self) -> None:
        session = await self._opened_session()
        try:
            async with session.get(self.url / "health") as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unavailable("/health", exc) from exc
        if status != 200:
            raise EngineUnavailableError(f"OPA at {self.url} is unhealthy: /health answered {status}")
        if self._bundle is None:
            raise EngineUnavailableError(f"no policy bundle pushed to OPA at {self.url} yet")

    async def _push(self, bundle: PolicyBundle) -> None:
        client = self._client
        assert client is not None  # load() opened it
        await self._call(client.update_or_create_data(dict(bundle.plans), "plans"), "pushing data.plans")
        wanted = {POLICY_PREFIX + name: source for name, source in bundle.modules.items()}
        existing = await self._call(client.get_policies_list(), "listing policies")
        for policy_id in sorted(p for p in existing if p.startswith(POLICY_PREFIX) and p not in wanted):
            await self._call(client.delete_policy(policy_id), f"deleting policy {policy_id}")
        for policy_id, source in sorted(wanted.items()):
            # rego_compat=False: the client must never rewrite our policies into something else
            pushed = client.update_policy_from_string(source, policy_id, rego_compat=False)
            await self._call(pushed, f"policy module {policy_id.removeprefix(POLICY_PREFIX)}")

    async def _check_required(self) -> None:
        for path in self.required:
            package = path.rsplit(".", 1)[0]
            status, body = await self._post(package, {"input": {}})
            if status != 200 or "result" not in body:
                detail = body.get("message") or "undefined"
                raise PolicyError(f"package {package} (needed for {path}) is not usable: {detail}")

    async def _restore(self, previous: PolicyBundle, cause: TierError) -> None:
        try:
            await self._push(previous)
        except TierError as exc:
            # the original failure is what the caller must see; the failed restore is logged
            log.error(
                "opa_restore_failed", revision=previous.revision, error=exc.message, cause=cause.message
            )

    async def _call(self, awaitable: Awaitable[T], what: str) -> T:
        """Translate opa_client's errors at the boundary, chained."""
        try:
            return await awaitable
        except RegoParseError as exc:
            raise PolicyError(f"{what} was rejected by OPA: {_rego_errors(exc)}") from exc
        except (aiohttp.ClientError, TimeoutError, ConnectionsError) as exc:
            raise self._unavailable(what, exc) from exc
        except Exception as exc:  # the client's other error types share no base class
            raise PolicyError(f"{what} failed: {exc!r}") from exc

    async def _post(self, path: str, payload: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        session = await self._opened_session()
        if not path.startswith("data.") and path != "data":
            raise PolicyError(f"rule path {path!r} must start with 'data.'")
        url = self.url / "v1" / "data" / path.removeprefix("data").strip(".").replace(".", "/")
        try:
            async with session.post(url, data=_dumps(payload), headers=_JSON) as response:
                return response.status, _json_object(await response.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unavailable(path, exc) from exc

    async def _opened_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            await self.open()
        assert self._session is not None
        return self._session

    def _unavailable(self, what: str, exc: BaseException) -> EngineUnavailableError:
        if isinstance(exc, TimeoutError):
            return EngineUnavailableError(f"OPA at {self.url} gave no answer within the timeout ({what})")
        return EngineUnavailableError(f"OPA at {self.url} is unreachable ({what}): {exc}")


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        return {"message": raw[:200].decode(errors="replace")}
    return body if isinstance(body, dict) else {"message": f"unexpected body {body!r:.200}"}


def _rego_errors(exc: RegoParseError) -> str:
    details = [e.get("message", "") for e in exc.errors if isinstance(e, dict)]
    locations = [e.get("location", {}).get("file") for e in exc.errors if isinstance(e, dict)]
    where = ", ".join(sorted({f for f in locations if f}))
    text = "; ".join(d for d in details if d) or str(exc.message)
    return f"{where}: {text}" if where else text
