"""Sidecar latency and throughput against a bare aiohttp baseline, in one run (prints figures).

    .venv/bin/python bench/sidecar_latency.py            # make bench; ~2 min on 2 cores
    .venv/bin/python bench/sidecar_latency.py --quick    # smoke run: 2,000 tenants, 1 s a run

What it does:
1. generates a replica of N tenants (default 100,000) over the tiers of plans/plans.yaml and
   every subscription status, with usage counters for the current period, and imports it with
   `tiergate replica import` into a temporary directory;
2. starts the sidecar (`tiergate sidecar`) and bench/baseline_server.py (a bare aiohttp app that
   answers the same paths with a fixed JSON body) on free loopback ports;
3. for each scenario (check over a hot set of tenants, check over all tenants so the decision
   cache misses, batch of 100 checks, ingress authz) measures, on both servers in turn,
   p50/p90/p99 at 1 connection and requests/s at 32 connections, with wrk when it is on PATH
   (else bench/loadgen.py, a Python load generator, and says so);
4. times the decision service in process (cache hit, cache miss, engine eval alone, and the
   pieces of the hit path);
5. prints a table with the ratios to the baseline and the targets, and writes the
   same figures to bench/results/sidecar_latency.json.

Nothing here asserts on wall-clock time: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import itertools
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, BinaryIO, get_args

import harness
from harness import REPO, cpu_busy, free_port, load_average, process_cpu_s, rss_kib

from tiergate.catalog import Catalog, Quota, load_catalog
from tiergate.models import Status
from tiergate.periods import calendar_month, rfc3339

BENCH = REPO / "bench"
ratio = functools.partial(harness.ratio, digits=2)  # figures in the results: two decimals
RESULTS = BENCH / "results" / "sidecar_latency.json"
WRK_SCRIPT = BENCH / "wrk_requests.lua"
LOADGEN = BENCH / "loadgen.py"
BASELINE = BENCH / "baseline_server.py"
FLOOR = BENCH / "floor_server.py"

# Targets (for the single check): printed next to the figures, never asserted.
TARGET_P50_RATIO = 1.3
TARGET_RPS_RATIO = 0.8
TARGET_P99_RATIO = 1.5  # p99 at 1 connection against the baseline's p99

# A plausible SaaS mix of Stripe subscription states (weights; unknown states get 1).
STATUS_WEIGHTS = {
    "active": 70,
    "trialing": 10,
    "past_due": 5,
    "canceled": 7,
    "unpaid": 2,
    "incomplete": 2,
    "incomplete_expired": 1,
    "paused": 3,
}
# Features an app typically asks about, in order of preference (those in the catalog are used).
CHECK_FEATURES = ("api_calls", "reports", "sso", "exports", "dashboards")
METERED_FEATURE = "api_calls"  # what the check-and-reserve scenario reserves

FIGURE_KEYS = ("p50_us", "p90_us", "p99_us")
Popen = subprocess.Popen[bytes]
SCENARIO_KEYS = (
    "check_hot",
    "check_zipf",
    "check_uniform",
    "check_cold",
    "metered",
    "reserve",
    "batch_100",
    "authz",
    "authz_no_usage",
)
# GET checks, also sent to a second sidecar's check listener (TIERGATE_CHECK_PORT, docs/adr/0023),
# a process of its own so that its decision cache starts as cold as the main port's did.
LISTENER_SCENARIOS = ("check_hot", "check_zipf", "check_uniform", "check_cold")
# Issue 15: these scenarios' p50 against another scenario's p50 on the sidecar, in the same run.
TARGET_VS_SCENARIO = {"reserve": ("check_hot", 1.5), "authz": ("authz_no_usage", 1.5)}


# -- the replica -----------------------------------------------------------------------------


def ts(moment: datetime) -> str:
    return rfc3339(moment) or ""


def make_replica(catalog: Catalog, n: int, rng: random.Random, now: datetime) -> dict[str, Any]:
    """An import document (tiergate/sidecar/replica/store.py ReplicaDocument) of n tenants `t_000000`..."""
    tiers = sorted(catalog.tiers.items(), key=lambda item: item[1].rank)
    names = [name for name, _ in tiers]
    tier_weights = [len(names) - i for i in range(len(names))]  # more tenants on lower tiers
    statuses = list(get_args(Status))
    status_weights = [STATUS_WEIGHTS.get(status, 1) for status in statuses]
    month_start = calendar_month(now)[0]
    accounts: list[dict[str, Any]] = []
    usage: list[dict[str, Any]] = []
    for i in range(n):
        tenant = f"t_{i:06d}"
        name = rng.choices(names, tier_weights)[0]
        tier = catalog.tiers[name]
        paid = bool(tier.prices)
        status = rng.choices(statuses, status_weights)[0] if paid else "active"
        account: dict[str, Any] = {
            "tenant": tenant,
            "tier": name,
            "status": status,
            "quantity": rng.randint(1, 30),
            "current_period_start": None,
            "current_period_end": None,
            "trial_end": None,
            "cancel_at_period_end": False,
            "past_due_since": None,
        }
        period_start = month_start  # the default tier's usage period: the calendar month
        if paid:
            yearly = "year" in tier.prices and rng.random() < 0.2
            length = timedelta(days=365 if yearly else 30)
            start = (now - length * rng.uniform(0.01, 0.97)).replace(microsecond=0)
            account["current_period_start"] = ts(start)
            account["current_period_end"] = ts(start + length)
            if status not in ("canceled", "incomplete_expired"):
                period_start = start
            if status == "trialing":  # about one trial in eight has already ended
                account["trial_end"] = ts(now + timedelta(hours=rng.uniform(-48, 14 * 24)))
            elif status == "past_due":  # some within the tier's grace days, some beyond
                account["past_due_since"] = ts(now - timedelta(days=rng.uniform(0, 20)))
            elif status == "active":
                account["cancel_at_period_end"] = rng.random() < 0.05
        accounts.append(account)
        if rng.random() < 0.8:  # one tenant in five has not used anything this period
            for code in catalog.metrics:
                value = tier.features.get(code)
                if not isinstance(value, Quota):
                    continue
                used = (
                    rng.randint(0, 50_000) if value.limit is None else int(value.limit * rng.uniform(0, 1.1))
                )
                usage.append(
                    {"tenant": tenant, "code": code, "period_start": ts(period_start), "value": used}
                )
    return {"data_as_of": ts(now), "accounts": accounts, "usage": usage}


# -- request files (one request a line: METHOD, PATH, BODY, header name/value pairs) ----------


def request_line(method: str, path: str, body: str = "", headers: dict[str, str] | None = None) -> str:
    fields = [method, path, body]
    for name, value in (headers or {}).items():
        fields += [name, value]
    return "\t".join(fields)


def check_lines(tenants: list[str], features: list[str], count: int, rng: random.Random) -> list[str]:
    return [
        request_line("GET", f"/v1/check?tenant={rng.choice(tenants)}&feature={rng.choice(features)}")
        for _ in range(count)
    ]


def zipf_lines(
    tenants: list[str], features: list[str], count: int, rng: random.Random, exponent: float = 1.1
) -> list[str]:
    """Tenants drawn by Zipf's law over all of them (rank k weighs 1/k^s): a few tenants are very
    busy, most are rare, as on a pod serving a real customer base."""
    weights = list(itertools.accumulate(1 / (k**exponent) for k in range(1, len(tenants) + 1)))
    ranked = list(tenants)
    rng.shuffle(ranked)
    picks = rng.choices(ranked, cum_weights=weights, k=count)
    return [request_line("GET", f"/v1/check?tenant={t}&feature={rng.choice(features)}") for t in picks]


def reserve_lines(tenants: list[str], metric: str, count: int, rng: random.Random) -> list[str]:
    """Check-and-reserve of one unit of `metric` (POST /v1/check with `"reserve": true`)."""
    return [
        request_line(
            "POST",
            "/v1/check",
            json.dumps(
                {"tenant": rng.choice(tenants), "feature": metric, "reserve": True}, separators=(",", ":")
            ),
        )
        for _ in range(count)
    ]


def metered_lines(tenants: list[str], metric: str, count: int, rng: random.Random) -> list[str]:
    """Metered traffic: each check of `metric` followed by one unit of it recorded (POST /v1/usage)
    for the same tenant, as an app that checks, does the work, then reports it."""
    lines = []
    for n in range(count):
        tenant = rng.choice(tenants)
        event = {"transaction_id": f"bench-{n}", "external_customer_id": tenant, "code": metric}
        lines.append(request_line("GET", f"/v1/check?tenant={tenant}&feature={metric}"))
        lines.append(request_line("POST", "/v1/usage", json.dumps({"event": event}, separators=(",", ":"))))
    return lines


def cold_lines(tenants: list[str], features: list[str], rng: random.Random) -> list[str]:
    order = list(tenants)
    rng.shuffle(order)
    return [request_line("GET", f"/v1/check?tenant={t}&feature={rng.choice(features)}") for t in order]


def batch_lines(
    tenants: list[str], features: list[str], size: int, count: int, rng: random.Random
) -> list[str]:
    lines = []
    for _ in range(count):
        checks = [{"tenant": rng.choice(tenants), "feature": rng.choice(features)} for _ in range(size)]
        lines.append(
            request_line("POST", "/v1/check/batch", json.dumps({"checks": checks}, separators=(",", ":")))
        )
    return lines


def route_examples(catalog: Catalog) -> list[tuple[str, str]]:
    """A concrete (method, path) for each ingress route of the catalog."""
    examples = []
    for route in catalog.routes:
        segments = ["2026/q3" if s == "**" else "item42" if s == "*" else s for s in route.path.split("/")]
        examples.append(("GET" if route.method == "*" else route.method, "/".join(segments)))
    return examples


def authz_lines(
    tenants: list[str], routes: list[tuple[str, str]], header: str, count: int, rng: random.Random
) -> list[str]:
    lines = []
    for _ in range(count):
        method, path = rng.choice(routes)
        headers = {"X-Original-URI": path, "X-Original-Method": method, header: rng.choice(tenants)}
        lines.append(request_line("GET", "/v1/authz", "", headers))
    return lines


# -- processes -------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(url: str, process: Popen, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise SystemExit(
                f"{url}: the server exited with {process.returncode}; its log ends with:\n{tail}"
            )
        try:
            if http_get(url, timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url}: no 200 within {timeout_s:.0f} s")


def stop(process: Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # aiohttp's run_app shuts down cleanly on SIGINT
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def scrape(base_url: str) -> dict[str, float]:
    """The sidecar's Prometheus samples, keyed `name{labels}`."""
    status, body = http_get(base_url + "/metrics")
    if status != 200:
        return {}
    samples = {}
    for line in body.decode().splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?)\s+(\S+)$", line)
        if match and not line.startswith("#"):
            samples[match.group(1)] = float(match.group(2))
    return samples


def delta(before: dict[str, float], after: dict[str, float], prefix: str) -> dict[str, float]:
    return {
        key: after[key] - before.get(key, 0.0)
        for key in after
        if key.startswith(prefix) and after[key] - before.get(key, 0.0) > 0
    }


# -- load ------------------------------------------------------------------------------------


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child to `cpus` (None: let the scheduler place it)."""
    if cpus is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    return pin


@dataclass(frozen=True)
class Generator:
    name: str  # "wrk" or "loadgen.py"
    wrk: str | None
    cpus: set[int] | None = None

    def run(
        self, url: str, requests: Path, connections: int, duration_s: float, offset: int
    ) -> dict[str, Any]:
        if self.wrk is not None:
            threads = min(connections, 2)  # two cores: one wrk thread a core at most
            command = [
                self.wrk,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(duration_s))}s",  # wrk takes whole seconds
                "--timeout",
                "5s",
                "--latency",
                "-s",
                str(WRK_SCRIPT),
                url,
                "--",
                str(requests),
                str(offset),
            ]
        else:
            command = [
                sys.executable,
                str(LOADGEN),
                "--url",
                url,
                "--requests",
                str(requests),
                "-c",
                str(connections),
                "-d",
                str(duration_s),
                "--offset",
                str(offset),
            ]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=duration_s + 120,
            check=False,
            preexec_fn=pinned(self.cpus),
        )
        for line in done.stdout.splitlines():
            if line.startswith("BENCH_JSON "):
                figures: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
                seconds = figures["duration_us"] / 1e6
                figures["rps"] = round(figures["requests"] / seconds, 1) if seconds else 0.0
                return figures
        raise SystemExit(
            f"{self.name} printed no figures (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        )


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    requests: Path
    lines: int
    decisions_per_request: float
    targets_apply: bool


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    is_sidecar: bool
    pid: int
    metrics_url: str = ""  # where its /metrics is, when not at `url` (the check listener's sidecar)

    @property
    def scraped(self) -> str:
        return self.metrics_url or self.url


def measure(
    generator: Generator, scenario: Scenario, target: Target, duration_s: float, warmup_s: float
) -> dict[str, Any]:
    """Warm-up at 1 connection, then 1 connection, then 32; each run starts at its own place in
    the request file, so the cold scenario never meets a key an earlier run left in the cache."""
    n = scenario.lines
    samples = [scrape(target.scraped)] if target.is_sidecar else []
    generator.run(target.url, scenario.requests, 1, warmup_s, offset=0)
    result: dict[str, Any] = {}
    for label, connections, offset in (("c1", 1, n // 8), ("c32", 32, n // 2)):
        if target.is_sidecar:
            samples.append(scrape(target.scraped))
        cpu_before = process_cpu_s(target.pid)
        result[label] = generator.run(target.url, scenario.requests, connections, duration_s, offset)
        # Server CPU per request: what bounds requests/s once the server's one core is busy.
        cpu = process_cpu_s(target.pid) - cpu_before
        requests = result[label]["requests"]
        result[label]["server_cpu_us_per_request"] = round(cpu * 1e6 / requests, 1) if requests else None
        if target.is_sidecar:
            after = scrape(target.scraped)
            cache = delta(samples[-1], after, "tiergate_decision_cache_total")
            hits = cache.get('tiergate_decision_cache_total{result="hit"}', 0.0)
            lookups = hits + cache.get('tiergate_decision_cache_total{result="miss"}', 0.0)
            result[label]["cache_hit_ratio"] = round(hits / lookups, 3) if lookups else None
            reasons: dict[str, float] = {}
            for key, value in delta(samples[-1], after, "tiergate_decisions_total").items():
                reason = re.search(r'reason="([^"]*)"', key)
                name = reason.group(1) if reason else key
                reasons[name] = reasons.get(name, 0.0) + value
            total = sum(reasons.values())
            result[label]["decisions"] = int(total)
            result[label]["deny_ratio"] = round(1 - reasons.get("ok", 0.0) / total, 3) if total else None
            result[label]["reasons"] = {k: int(v) for k, v in sorted(reasons.items())}
    return result


# -- in process ------------------------------------------------------------------------------


async def metered_check(service: Any, reader: Any, hot: list[str]) -> Callable[[], Awaitable[object]] | None:
    """GET /v1/check's path for a metered allow, each call after one unit of the feature's usage
    recorded (or taken back, alternately, to stay under the limit): the answer survives it."""
    from tiergate.periods import rfc3339
    from tiergate.sidecar.decisions.policy_io import period_for

    now = datetime.now(UTC)
    await service.learn_usage_scope()
    for tenant in hot:
        decision = await service.decide(tenant, METERED_FEATURE)
        if decision.allow and decision.limit is not None and decision.remaining > 10:
            start = period_for(reader.account(tenant), now, rfc3339(now) or "")[0]
            return functools.partial(
                _metered_check, service, (tenant, METERED_FEATURE, start), itertools.cycle((1, -1))
            )
    return None


async def _metered_check(service: Any, key: tuple[str, str, str], steps: Iterator[int]) -> object:
    service.ledger.add(key, next(steps))
    return await service.decide_json(key[0], key[1])


def per_call_us(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {
        "p50_us": round(ordered[len(ordered) // 2] / 1000, 2),
        "p99_us": round(ordered[int(len(ordered) * 0.99)] / 1000, 2),
        "mean_us": round(sum(ordered) / len(ordered) / 1000, 2),
        "calls": len(ordered),
    }


async def time_async(call: Callable[[], Awaitable[object]], n: int) -> dict[str, float]:
    for _ in range(min(n, 200)):
        await call()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        began = clock()
        await call()
        samples.append(clock() - began)
    return per_call_us(samples)


def time_sync(call: Callable[[], object], n: int) -> float:
    """Mean µs per call, loop overhead included (~0.03 µs)."""
    for _ in range(min(n, 200)):
        call()
    began = time.perf_counter_ns()
    for _ in range(n):
        call()
    return round((time.perf_counter_ns() - began) / n / 1000, 2)


async def in_process(
    env: dict[str, str],
    hot: list[str],
    features: list[str],
    routes: list[tuple[str, str]],
    n: int,
    log_file: BinaryIO,
) -> dict[str, Any]:
    """Time DecisionService.decide and its parts on the app the sidecar builds, without HTTP."""
    import orjson
    from aiohttp import web

    from tiergate.log import configure_logging
    from tiergate.models import CheckRequest
    from tiergate.policy.document import build_input
    from tiergate.policy.engine import DECISION_PATH
    from tiergate.sidecar.api.query import check_query
    from tiergate.sidecar.app import create_app
    from tiergate.sidecar.decisions.cache import DecisionCache
    from tiergate.sidecar.decisions.policy_io import account_document, period_for
    from tiergate.sidecar.decisions.service import DecisionService
    from tiergate.sidecar.metrics import SidecarMetrics
    from tiergate.sidecar.settings import SidecarSettings
    from tiergate.sidecar.state import DECISIONS, POLICIES, READER, ROUTES
    from tiergate.sidecar.usage.ledger import UsageLedger
    from tiergate.web import validate

    os.environ.update({k: v for k, v in env.items() if k != "TIERGATE_SIDECAR_PORT"})
    settings = SidecarSettings()
    # Deny lines are still rendered and written, as in the sidecar, but to /dev/null.
    configure_logging(json=settings.log_json, level=settings.log_level, sink=log_file)
    runner = web.AppRunner(create_app(settings))
    await runner.setup()  # runs the sidecar's start-up: replica, engine, policies, decision service
    try:
        app = runner.app
        service, reader, engine = app[DECISIONS], app[READER], app[POLICIES].engine
        # An allowed (tenant, feature) for the hit path, and a sample of keys for the miss path.
        # Representative keys: an allowed check on a paid tier within its billing period (the
        # common case), an allowed check on a row without a period (a free-tier row imported as
        # static entitlements), and a deny (logged: TIERGATE_DECISION_LOG_DENIES is on by default).
        rows = {t: reader.account(t) for t in hot}
        paid: tuple[str, str] | None = None
        periodless: tuple[str, str] | None = None
        denied: tuple[str, str] | None = None
        for candidate in hot:
            row = rows[candidate]
            for name in features:
                decision = await service.decide(candidate, name)
                if decision.allow and row is not None and row.current_period_start is not None:
                    paid = paid or (candidate, name)
                elif decision.allow and row is not None:
                    periodless = periodless or (candidate, name)
                elif not decision.allow:
                    denied = denied or (candidate, name)
            if paid and periodless and denied:
                break
        tenant, feature = paid or (hot[0], features[0])
        keys = [(t, f) for t in hot[:400] for f in features]
        uncached = DecisionService(
            reader,
            engine,
            SidecarMetrics(replica_age=lambda: 0.0),
            cache=DecisionCache(0, 0.0),
            ledger=UsageLedger(),
            log_sample=settings.decision_log_sample,
            log_denies=settings.decision_log_denies,
        )
        cursor = iter(range(10**12))

        async def miss_mixed() -> object:
            t, f = keys[next(cursor) % len(keys)]
            return await uncached.decide(t, f)

        registry = service.metrics.registry
        hits_before = registry.get_sample_value("tiergate_decision_cache_total", {"result": "hit"}) or 0.0
        figures: dict[str, Any] = {
            "tenant": tenant,
            "feature": feature,
            "decide_cache_hit": await time_async(lambda: service.decide(tenant, feature), n),
        }
        hits = (
            registry.get_sample_value("tiergate_decision_cache_total", {"result": "hit"}) or 0.0
        ) - hits_before
        figures["decide_cache_hit"]["hit_ratio"] = round(hits / (n + min(n, 200)), 3)
        if periodless:
            figures["decide_cache_hit_periodless_row"] = await time_async(
                lambda: service.decide(*periodless), n
            )
        if denied:
            figures["decide_cache_hit_deny_logged"] = await time_async(lambda: service.decide(*denied), n)
        if hasattr(service, "decide_json"):  # GET /v1/check's path (rendered answers)
            figures["decide_json_cache_hit"] = await time_async(
                lambda: service.decide_json(tenant, feature), n
            )
            if denied:
                figures["decide_json_cache_hit_deny_logged"] = await time_async(
                    lambda: service.decide_json(*denied), n
                )
        metered = await metered_check(service, reader, hot)
        if metered is not None:  # each check after a usage change of its feature (ADR 40)
            figures["decide_json_metered_hit"] = await time_async(metered, n)
        figures["decide_cache_miss_same_key"] = await time_async(
            lambda: uncached.decide(tenant, feature), n // 4
        )
        figures["decide_cache_miss_mixed"] = await time_async(miss_mixed, n // 4)

        now = time.time()
        now_text = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        row = reader.account(tenant)
        period = period_for(row, datetime.fromtimestamp(now, UTC), now_text)
        usage = reader.usage(tenant, period[0])
        document = build_input(
            tenant=tenant,
            feature=feature,
            quantity=1,
            now_text=now_text,
            account=account_document(row),
            usage=usage,
            period=period,
            replica_age_s=service.replica_age(now),
        )
        figures["engine_eval"] = await time_async(lambda: engine.evaluate(DECISION_PATH, document), n // 4)
        figures["engine"] = f"{settings.engine} (compiled VM: {settings.engine_vm})"
        bundle = app[POLICIES].reloader.bundle
        if settings.engine == "embedded" and bundle is not None:
            from tiergate.policy.embedded import EmbeddedEngine

            other = EmbeddedEngine(compiled=not settings.engine_vm)
            await other.load(bundle)
            name = "engine_eval_interpreter" if settings.engine_vm else "engine_eval_compiled_vm"
            figures[name] = await time_async(lambda: other.evaluate(DECISION_PATH, document), n // 4)
            await other.close()
        route = routes[0] if routes else ("GET", "/api/v1/things")
        figures["route_resolve_cached"] = await time_async(lambda: app[ROUTES].resolve(*route), n)

        # The decision path, piece by piece (mean µs a call); a cache hit skips the SQLite reads.
        no_period = rows[periodless[0]] if periodless else None
        when = datetime.fromtimestamp(now, UTC)
        revision = engine.revision or ""
        decision = await service.decide(tenant, feature)
        metrics = service.metrics

        def count_metrics() -> None:
            metrics.decisions.hits += 1
            metrics.decisions.count("ok", True, 3e-5)

        pieces: dict[str, float] = {
            "check_query (plain validation of the GET query)": time_sync(
                lambda: check_query({"tenant": tenant, "feature": feature}), n
            ),
            "validate CheckRequest (pydantic, POST bodies)": time_sync(
                lambda: validate(CheckRequest, {"tenant": tenant, "feature": feature}), n
            ),
            "reader.refresh (PRAGMA data_version; the 50 ms watch, not per request)": time_sync(
                reader.refresh, n
            ),
            "reader.account (in-memory index)": time_sync(lambda: reader.account(tenant), n),
            "reader.usage (in-memory index)": time_sync(lambda: reader.usage(tenant, period[0]), n),
            "period_for (in-period row)": time_sync(lambda: period_for(row, when, now_text), n),
            "cache get (hit path)": time_sync(lambda: service.cache.get(tenant, feature, 1, now, False), n),
            "counters (hit, decision, histogram bucket; folded at scrape)": time_sync(count_metrics, n),
            "Decision + lineage": time_sync(
                lambda: dataclasses.replace(
                    decision,
                    tenant=tenant,
                    feature=feature,
                    quantity=1,
                    decision_id=f"abcd-{n}",
                    policy_revision=revision,
                    data_as_of=rfc3339(reader.meta.data_as_of),
                    stale=False,
                ),
                n,
            ),
            "orjson.dumps(decision)": time_sync(lambda: orjson.dumps(decision), n),
            "datetime.fromtimestamp + replica_age": time_sync(
                lambda: (datetime.fromtimestamp(now, UTC), service.replica_age(now)), n
            ),
        }
        if no_period is not None:
            pieces["period_for (row without a period: Account.model_validate)"] = time_sync(
                lambda: period_for(no_period, when, now_text), n // 4
            )
        figures["hit_path_pieces_us"] = pieces
        return figures
    finally:
        await runner.cleanup()


# -- report ----------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def summarise(scenarios: list[Scenario], figures: dict[str, Any]) -> None:
    """Add ratios and target verdicts to each scenario's figures (in place)."""
    for scenario in scenarios:
        entry = figures[scenario.key]
        side, base = entry["sidecar"], entry["baseline"]
        p50 = ratio(side["c1"]["p50_us"], base["c1"]["p50_us"])
        rps = ratio(side["c32"]["rps"], base["c32"]["rps"])
        p99 = ratio(side["c1"]["p99_us"], base["c1"]["p99_us"])
        cpu = ratio(
            side["c32"].get("server_cpu_us_per_request"), base["c32"].get("server_cpu_us_per_request")
        )
        entry["ratios"] = {"p50_c1": p50, "rps_c32": rps, "p99_c1": p99, "cpu_per_request_c32": cpu}
        floor = figures.get("check_hot", {}).get("floor")
        if floor is not None:
            entry["ratios"]["cpu_per_request_c32_vs_floor"] = ratio(
                side["c32"].get("server_cpu_us_per_request"), floor["c32"].get("server_cpu_us_per_request")
            )
        entry["per_decision_us_c1"] = round(side["c1"]["p50_us"] / scenario.decisions_per_request, 1)
        other, limit = TARGET_VS_SCENARIO.get(scenario.key, ("", 0.0))
        if other in figures:
            there = figures[other]["sidecar"]
            vs = ratio(side["c1"]["p50_us"], there["c1"]["p50_us"])
            entry["ratios"][f"p50_c1_vs_{other}"] = vs
            entry["ratios"][f"cpu_per_request_c32_vs_{other}"] = ratio(
                side["c32"].get("server_cpu_us_per_request"), there["c32"].get("server_cpu_us_per_request")
            )
            entry["targets"] = {f"p50 <= {limit}x {other}": verdict(vs is not None and vs <= limit)}
        if scenario.targets_apply:
            entry["targets"] = check_targets(p50, rps, p99)
        if "listener" in entry:
            fast = entry["listener"]
            l50 = ratio(fast["c1"]["p50_us"], base["c1"]["p50_us"])
            lrps = ratio(fast["c32"]["rps"], base["c32"]["rps"])
            l99 = ratio(fast["c1"]["p99_us"], base["c1"]["p99_us"])
            lcpu = ratio(
                fast["c32"].get("server_cpu_us_per_request"), base["c32"].get("server_cpu_us_per_request")
            )
            entry["listener_ratios"] = {
                "p50_c1": l50,
                "rps_c32": lrps,
                "p99_c1": l99,
                "cpu_per_request_c32": lcpu,
            }
            if scenario.targets_apply:
                entry["listener_targets"] = check_targets(l50, lrps, l99)


def check_targets(p50: float | None, rps: float | None, p99: float | None) -> dict[str, str]:
    return {
        f"p50 <= {TARGET_P50_RATIO}x baseline": verdict(p50 is not None and p50 <= TARGET_P50_RATIO),
        f"rps >= {TARGET_RPS_RATIO}x baseline": verdict(rps is not None and rps >= TARGET_RPS_RATIO),
        f"p99 <= {TARGET_P99_RATIO}x baseline at 1 connection": verdict(
            p99 is not None and p99 <= TARGET_P99_RATIO
        ),
    }


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def print_table(scenarios: list[Scenario], results: dict[str, Any]) -> None:
    figures = results["scenarios"]
    header = (
        f"{'scenario':<22} {'server':<9} {'p50':>6} {'p90':>6} {'p99':>6} {'rps@1':>7} {'rps@32':>7} "
        f"{'cpu/req':>7} {'hit@1':>6} {'hit@32':>6} {'deny':>5} {'p50 x':>6} {'rps x':>6}"
    )
    print()
    print(
        "p50/p90/p99: µs at 1 connection; rps: requests/s at 1 and 32 connections; cpu/req: server CPU µs "
        "a request at 32; hit: decision cache hits; deny: share of denied decisions; x = sidecar / baseline"
    )
    print(header)
    print("-" * len(header))
    for scenario in scenarios:
        entry = figures[scenario.key]
        for server in ("sidecar", "listener", "baseline", "floor"):
            if server not in entry:
                continue
            c1, c32 = entry[server]["c1"], entry[server]["c32"]
            label = scenario.label if server == "sidecar" else ""
            ratios = entry.get("listener_ratios" if server == "listener" else "ratios", {})
            line = (
                f"{label:<22} {server:<9} {c1['p50_us']:>6} {c1['p90_us']:>6} {c1['p99_us']:>6} "
                f"{c1['rps']:>7.0f} {c32['rps']:>7.0f} {c32.get('server_cpu_us_per_request') or 0:>7.1f}"
            )
            if server in ("sidecar", "listener"):
                line += (
                    f" {pct(c1.get('cache_hit_ratio')):>6} {pct(c32.get('cache_hit_ratio')):>6}"
                    f" {pct(c32.get('deny_ratio')):>5}"
                    f" {ratios.get('p50_c1') or 0:>6.2f} {ratios.get('rps_c32') or 0:>6.2f}"
                )
            print(line)
    print()
    for scenario in scenarios:
        targets = figures[scenario.key].get("targets")
        if targets:
            print(f"targets, {scenario.label}: " + "; ".join(f"{k}: {v}" for k, v in targets.items()))
        listener = figures[scenario.key].get("listener_targets")
        if listener:
            print("  on the check listener: " + "; ".join(f"{k}: {v}" for k, v in listener.items()))
        versus = {k: v for k, v in figures[scenario.key].get("ratios", {}).items() if "_vs_" in k}
        if versus and scenario.key != "check_hot":
            print(f"  {scenario.label}, ratios: " + ", ".join(f"{k} {v}" for k, v in versus.items()))
    errors = {
        f"{key}/{server}/{run}": {k: v for k, v in figs.items() if k.startswith("errors") and v}
        for key, entry in figures.items()
        for server in ("sidecar", "listener", "baseline", "floor")
        if server in entry
        for run, figs in entry[server].items()
    }
    errors = {k: v for k, v in errors.items() if v}
    if errors:
        print(f"transport errors: {errors}")
    inproc = results.get("in_process_us")
    if inproc:
        print()
        print(
            f"in process (µs a call; tenant {inproc['tenant']}, feature {inproc['feature']}; "
            f"engine {inproc['engine']}):"
        )
        for name in (
            "decide_cache_hit",
            "decide_cache_hit_periodless_row",
            "decide_cache_hit_deny_logged",
            "decide_json_cache_hit",
            "decide_json_cache_hit_deny_logged",
            "decide_json_metered_hit",
            "decide_cache_miss_same_key",
            "decide_cache_miss_mixed",
            "engine_eval",
            "engine_eval_interpreter",
            "engine_eval_compiled_vm",
            "route_resolve_cached",
        ):
            f = inproc.get(name)
            if f is None:
                continue
            print(f"  {name:<32} p50 {f['p50_us']:>7.2f}  p99 {f['p99_us']:>7.2f}  mean {f['mean_us']:>7.2f}")
        plain, metered = inproc.get("decide_json_cache_hit"), inproc.get("decide_json_metered_hit")
        if plain and metered:
            ratio_metered = metered["mean_us"] / plain["mean_us"]
            print(
                f"  metered check (after a usage change) / plain check, mean: {ratio_metered:.2f} (target <= 1.2)"
            )
        print("  hit path, piece by piece (mean):")
        for name, value in inproc["hit_path_pieces_us"].items():
            print(f"    {name:<52} {value:>6.2f}")
    rss = results["rss_kib"]
    print()
    print(
        f"RSS after the load: sidecar {rss['sidecar']['VmRSS'] / 1024:.0f} MiB "
        f"(peak {rss['sidecar']['VmHWM'] / 1024:.0f}), baseline {rss['baseline']['VmRSS'] / 1024:.0f} MiB; "
        f"sidecar at start {rss['sidecar_at_start']['VmRSS'] / 1024:.0f} MiB"
    )
    meta = results["meta"]
    print(
        f"generator: {meta['generator']}; {meta['tenants']} tenants, hot set {meta['hot_tenants']}; "
        f"{meta['duration_s']} s a run; decision log sample {meta['sidecar_env'].get('TIERGATE_DECISION_LOG_SAMPLE')}"
        f", deny lines logged {meta['decision_log_lines']}"
    )


# -- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Sidecar latency and throughput against a bare aiohttp baseline."
    )
    parser.add_argument("--tenants", type=int, default=100_000, help="tenants in the replica")
    parser.add_argument("--hot-tenants", type=int, default=1000, help="tenants the hot scenarios draw from")
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds a measured run (two per scenario)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2,000 tenants, 1 s a run")
    parser.add_argument(
        "--generator", choices=("auto", "wrk", "python"), default="auto", help="auto: wrk when on PATH"
    )
    parser.add_argument(
        "--install-wrk", action="store_true", help="apt-get install -y wrk when it is missing"
    )
    parser.add_argument(
        "--sidecar-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra TIERGATE_* setting for the sidecar (repeatable), e.g. TIERGATE_DECISION_CACHE_TTL_S=30",
    )
    parser.add_argument(
        "--pin", action="store_true", help="pin the servers to CPU 0 and the load generator to CPU 1"
    )
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process timings")
    parser.add_argument(
        "--scenarios",
        default="",
        help=f"comma-separated subset of the scenarios to run (default: all of {', '.join(SCENARIO_KEYS)})",
    )
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.scenarios = [k for k in args.scenarios.split(",") if k] or list(SCENARIO_KEYS)
    unknown = sorted(set(args.scenarios) - set(SCENARIO_KEYS))
    if unknown:
        parser.error(f"--scenarios: unknown {unknown}; choose from {', '.join(SCENARIO_KEYS)}")
    if args.quick:
        args.tenants, args.duration = min(args.tenants, 2000), 1.0
        if args.output == RESULTS:  # a smoke run keeps the figures docs/performance.md cites
            args.output = Path(tempfile.gettempdir()) / RESULTS.name
    args.hot_tenants = min(args.hot_tenants, args.tenants)
    return args


def pick_generator(choice: str, install: bool, cpus: set[int] | None) -> Generator:
    wrk = shutil.which("wrk")
    if wrk is None and install and choice != "python":
        print("wrk is not installed: running apt-get install -y wrk (--install-wrk)", flush=True)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=False)
        wrk = shutil.which("wrk")
    if choice == "python":
        return Generator("loadgen.py (Python, --generator python)", None, cpus)
    if wrk is None:
        if choice == "wrk":
            raise SystemExit("wrk is not on PATH (apt-get install wrk, or pass --install-wrk)")
        print(
            "wrk not found on PATH: falling back to bench/loadgen.py, a Python load generator that "
            "shares the 2 cores with the servers (apt-get install wrk, or --install-wrk, for wrk)",
            flush=True,
        )
        return Generator("loadgen.py (Python fallback: wrk not found)", None, cpus)
    version = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    return Generator(f"wrk ({(version.stdout or version.stderr).splitlines()[0].strip()})", wrk, cpus)


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    pin = args.pin and (os.cpu_count() or 1) >= 2
    server_cpus, generator_cpus = ({0}, {1}) if pin else (None, None)
    generator = pick_generator(args.generator, args.install_wrk, generator_cpus)
    load_before, busy_before = load_average(), cpu_busy()
    if busy_before > 0.05:
        print(
            f"warning: {busy_before:.0%} of the CPU was busy before the run started (load average "
            f"{load_before:.2f}): something else is running, and the figures will show it",
            flush=True,
        )
    bin_dir = Path(sys.executable).parent
    tiergate = str(bin_dir / "tiergate")
    rng = random.Random(args.seed)
    catalog = load_catalog(REPO / "plans" / "plans.yaml")
    features = [f for f in CHECK_FEATURES if f in catalog.features] or sorted(catalog.features)[:5]
    routes = route_examples(catalog)

    with tempfile.TemporaryDirectory(prefix="tiergate-bench-") as tmpdir:
        tmp = Path(tmpdir)
        now = datetime.now(UTC)
        began = time.monotonic()
        document = make_replica(catalog, args.tenants, rng, now)
        (tmp / "replica.json").write_text(json.dumps(document))
        tenants = [a["tenant"] for a in document["accounts"]]
        n_usage = len(document["usage"])
        del document
        sidecar_port, baseline_port, floor_port = free_port(), free_port(), free_port()
        quiet_port, fast_port, check_port = free_port(), free_port(), free_port()
        env = {
            "TIERGATE_SIDECAR_HOST": "127.0.0.1",
            "TIERGATE_SIDECAR_PORT": str(sidecar_port),
            "TIERGATE_REPLICA_PATH": str(tmp / "replica.db"),
            "TIERGATE_PLANS": str(REPO / "plans" / "plans.yaml"),
            "TIERGATE_POLICIES": str(REPO / "policies"),
            "TIERGATE_LOG_JSON": "true",
            "TIERGATE_DECISION_LOG_SAMPLE": "0",
        }
        for item in args.sidecar_env:
            key, sep, value = item.partition("=")
            if not sep or not key.startswith("TIERGATE_"):
                raise SystemExit(f"--sidecar-env {item!r}: expected TIERGATE_NAME=VALUE")
            env[key] = value
        process_env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")} | env
        imported = subprocess.run(
            [tiergate, "replica", "import", str(tmp / "replica.json")],
            env=process_env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if imported.returncode != 0:
            raise SystemExit(f"tiergate replica import failed:\n{imported.stderr}")
        print(imported.stdout.strip(), f"({time.monotonic() - began:.1f} s with generation)", flush=True)

        hot = rng.sample(tenants, args.hot_tenants)
        header = env.get("TIERGATE_TENANT_HEADER", "X-Tenant-Id")
        files = {
            "check_hot": check_lines(hot, features, 20_000, rng),
            "check_zipf": zipf_lines(tenants, features, 200_000, rng),
            "check_uniform": check_lines(tenants, features, 200_000, rng),
            "check_cold": cold_lines(tenants, features, rng),
            "metered": metered_lines(hot, METERED_FEATURE, 50_000, rng),
            "reserve": reserve_lines(hot, METERED_FEATURE, 20_000, rng),
            "batch_100": batch_lines(hot, features, 100, 500, rng),
            "authz": authz_lines(hot, routes, header, 20_000, rng),
        }
        for key, lines in files.items():
            (tmp / f"{key}.txt").write_text("\n".join(lines) + "\n")
        scenarios = [
            Scenario("check_hot", "check, hot set", tmp / "check_hot.txt", len(files["check_hot"]), 1, True),
            Scenario(
                "check_zipf", "check, Zipf (all)", tmp / "check_zipf.txt", len(files["check_zipf"]), 1, True
            ),
            Scenario(
                "check_uniform",
                "check, uniform (all)",
                tmp / "check_uniform.txt",
                len(files["check_uniform"]),
                1,
                True,
            ),
            Scenario(
                "check_cold", "check, cold (all)", tmp / "check_cold.txt", len(files["check_cold"]), 1, False
            ),
            # Requests alternate check / usage record: the hit ratio is the checks' (usage is no decision).
            Scenario(
                "metered", "metered (check+usage)", tmp / "metered.txt", len(files["metered"]), 0.5, False
            ),
            Scenario("reserve", "check-and-reserve", tmp / "reserve.txt", len(files["reserve"]), 1, False),
            Scenario("batch_100", "batch of 100", tmp / "batch_100.txt", len(files["batch_100"]), 100, False),
            # A route with a feature and a usage code asks for two decisions; the average is ~1.3.
            Scenario("authz", "authz (ingress)", tmp / "authz.txt", len(files["authz"]), 1, False),
            # The same requests to a second sidecar that records no usage (TIERGATE_AUTHZ_RECORD_USAGE=false).
            Scenario("authz_no_usage", "authz, no usage", tmp / "authz.txt", len(files["authz"]), 1, False),
        ]
        scenarios = [s for s in scenarios if s.key in args.scenarios]

        sidecar_log, baseline_log = tmp / "sidecar.log", tmp / "baseline.log"
        with sidecar_log.open("wb") as slog, baseline_log.open("wb") as blog:

            def spawn(argv: list[str], log: IO[bytes], extra: dict[str, str] | None = None) -> Popen:
                """A server process on the servers' CPUs; a sidecar with `extra` settings over `env`'s."""
                environ = process_env | extra if extra is not None else None
                return subprocess.Popen(
                    argv,
                    env=environ,
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=pinned(server_cpus),
                )

            sidecar = spawn([tiergate, "sidecar"], slog, {})
            loop = env.get("TIERGATE_EVENT_LOOP", "uvloop")
            baseline = spawn(
                [sys.executable, str(BASELINE), "--port", str(baseline_port), "--loop", loop], blog
            )
            quiet: Popen | None = None
            if "authz_no_usage" in args.scenarios:
                quiet = spawn(
                    [tiergate, "sidecar"],
                    slog,
                    {
                        "TIERGATE_SIDECAR_PORT": str(quiet_port),
                        "TIERGATE_AUTHZ_RECORD_USAGE": "false",
                        "TIERGATE_OUTBOX_PATH": str(tmp / "outbox-quiet.db"),
                    },
                )
            # The check listener (TIERGATE_CHECK_PORT) on a sidecar of its own: the same replica and
            # requests, and a decision cache the main port's runs did not warm.
            fast: Popen | None = None
            if any(s.key in LISTENER_SCENARIOS for s in scenarios):
                fast = spawn(
                    [tiergate, "sidecar"],
                    slog,
                    {
                        "TIERGATE_SIDECAR_PORT": str(fast_port),
                        "TIERGATE_CHECK_PORT": str(check_port),
                        "TIERGATE_OUTBOX_PATH": str(tmp / "outbox-fast.db"),
                    },
                )
            floor = spawn([sys.executable, str(FLOOR), "--port", str(floor_port)], blog)
        results: dict[str, Any] = {}
        try:
            sidecar_url, baseline_url = (
                f"http://127.0.0.1:{sidecar_port}",
                f"http://127.0.0.1:{baseline_port}",
            )
            wait_ready(sidecar_url + "/healthz", sidecar, sidecar_log)
            wait_ready(baseline_url + "/healthz", baseline, baseline_log)
            floor_url = f"http://127.0.0.1:{floor_port}"
            wait_ready(floor_url + "/healthz", floor, baseline_log)
            ready_status, ready_body = http_get(sidecar_url + "/readyz")
            if ready_status != 200:
                print(f"warning: sidecar /readyz is {ready_status}: {ready_body.decode()[:500]}", flush=True)
            rss_start = rss_kib(sidecar.pid)
            targets = [
                Target("sidecar", sidecar_url, True, sidecar.pid),
                Target("baseline", baseline_url, False, baseline.pid),
            ]
            # The floor answers every GET /v1/check alike: measured once, on the hot set's file.
            floor_target = Target("floor", floor_url, False, floor.pid)
            listener_targets: list[Target] = []
            if fast is not None:
                fast_url = f"http://127.0.0.1:{fast_port}"
                wait_ready(fast_url + "/healthz", fast, sidecar_log)
                listener_url = f"http://127.0.0.1:{check_port}"
                listener_targets = [Target("listener", listener_url, True, fast.pid, metrics_url=fast_url)]
            quiet_targets = targets
            if quiet is not None:
                quiet_url = f"http://127.0.0.1:{quiet_port}"
                wait_ready(quiet_url + "/healthz", quiet, sidecar_log)
                quiet_targets = [Target("sidecar", quiet_url, True, quiet.pid), targets[1]]
            figures: dict[str, Any] = {}
            warmup = 1.0
            for scenario in scenarios:
                figures[scenario.key] = {}
                here = [*targets, floor_target] if scenario.key == "check_hot" else targets
                here = [*here, *listener_targets] if scenario.key in LISTENER_SCENARIOS else here
                here = quiet_targets if scenario.key == "authz_no_usage" else here
                for target in here:
                    print(f"  {scenario.label:<20} {target.name:<9} ...", end="", flush=True)
                    figures[scenario.key][target.name] = measure(
                        generator, scenario, target, args.duration, warmup
                    )
                    c1, c32 = (
                        figures[scenario.key][target.name]["c1"],
                        figures[scenario.key][target.name]["c32"],
                    )
                    print(
                        f" p50 {c1['p50_us']} µs, p99 {c1['p99_us']} µs, {c32['rps']:.0f} req/s @32",
                        flush=True,
                    )
            rss = {
                "sidecar": rss_kib(sidecar.pid),
                "baseline": rss_kib(baseline.pid),
                "sidecar_at_start": rss_start,
            }
        finally:
            stop(sidecar)
            stop(baseline)
            stop(floor)
            if quiet is not None:
                stop(quiet)
            if fast is not None:
                stop(fast)
        load_after = load_average()
        log_text = sidecar_log.read_text(errors="replace")
        decision_lines = sum(bool(re.search(r'"event": ?"decision"', line)) for line in log_text.splitlines())
        summarise(scenarios, figures)

        inproc: dict[str, Any] | None = None
        if not args.no_in_process:
            print("  in-process decision timings ...", flush=True)
            with open(os.devnull, "wb") as devnull:
                calls = 4_000 if args.quick else 20_000
                inproc = asyncio.run(in_process(env, hot, features, routes, calls, devnull))

    results = {
        "meta": {
            "when": now.isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "cpu": _cpu_model(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "generator": generator.name,
            "tenants": args.tenants,
            "usage_counters": n_usage,
            "hot_tenants": args.hot_tenants,
            "features": features,
            "duration_s": args.duration,
            "warmup_s": warmup,
            "connections": [1, 32],
            "pinned": bool(server_cpus),
            "load_average_before": load_before,
            "cpu_busy_before": busy_before,
            "load_average_after_load": load_after,
            "sidecar_env": {k: v for k, v in env.items() if k not in ("TIERGATE_SIDECAR_PORT",)},
            "decision_log_lines": decision_lines,
            "elapsed_s": None,
        },
        "targets": {
            "check_p50_ratio_max": TARGET_P50_RATIO,
            "check_rps_ratio_min": TARGET_RPS_RATIO,
            "check_p99_ratio_max_c1": TARGET_P99_RATIO,
        },
        "scenarios": figures,
        "in_process_us": inproc,
        "rss_kib": rss,
    }
    results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    print_table(scenarios, results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(f"figures written to {args.output} ({results['meta']['elapsed_s']} s)")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
