"""Shared helpers of the benchmarks: processes, free ports, percentiles, CPU and memory, quotas.

Every script in bench/ runs as `python bench/NAME.py`, so bench/ is on `sys.path` and they
import this module as `harness`. It holds only what more than one benchmark needs:

* processes: `spawn()` starts a server with a clean `TIERGATE_*` environment and its log in a
  file (`Server.wait`, `.stop`, `.tail`); `free_port()` and `tiergate_command()` come from
  demo/processes.py, shared with the demo and the end-to-end tests;
* figures: `percentiles_ms()` for samples in seconds, `percentile()` (nearest rank, as wrk
  reports it), `median()` and `ratio()` for the median of per-run ratios;
* the machine: `process_cpu_s()` and `rss_kib()` from /proc, `load_average()`, `cpu_busy()`,
  `machine()` (recorded with every result), `table()` (a Markdown table on stdout);
* `CpuQuota`: a CPU quota for one process, the way Kubernetes enforces a container's CPU limit.
  Kubernetes turns `resources.limits.cpu: 500m` into a CFS quota of 50 ms per 100 ms period on
  the container's cgroup; `CpuQuota.create("daemon-0", cpus=0.5)` does the same (cgroup v2
  `cpu.max` or v1 `cpu.cfs_quota_us`), or returns why it cannot (it needs write access to
  /sys/fs/cgroup), then `.add(pid)` and `.remove()`.
"""

from __future__ import annotations

import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the benchmarks import tiergate, demo and tests from the checkout
    sys.path.insert(0, str(REPO))

from demo.processes import free_port, http_status, tiergate_command  # noqa: E402

__all__ = ["REPO", "RESULTS", "CpuQuota", "Server", "free_port", "http_status", "spawn", "tiergate_command"]

RESULTS = REPO / "bench" / "results"
_TICK = os.sysconf("SC_CLK_TCK")


# -- processes -------------------------------------------------------------------------------


@dataclass
class Server:
    """A server process started by `spawn`, its stdout and stderr in `log`."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str

    def wait(self, path: str, timeout_s: float = 600.0) -> float:
        """Seconds until `path` answers 200 (the server's exit or a timeout ends the run)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.popen.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")
            if http_status(self.url + path) == 200:
                return time.monotonic() - started
            time.sleep(0.02)
        raise SystemExit(f"{self.name}: {path} not 200 within {timeout_s:.0f} s\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def rss_mb(self) -> dict[str, float]:
        return {key: round(kib / 1024, 1) for key, kib in rss_kib(self.popen.pid).items()}

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)  # run_app shuts down cleanly on SIGINT
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def spawn(name: str, argv: list[str], env: dict[str, str], tmp: Path, url: str) -> Server:
    """Start `argv` in `tmp` with `env` over this environment less its `TIERGATE_*` variables."""
    log = tmp / f"{name}.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")}
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv,
            env={**base, "TIERGATE_LOG_LEVEL": "warning", **env},
            cwd=tmp,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Server(name, popen, log, url)


# -- figures ---------------------------------------------------------------------------------


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    """p50/p90/p99, max and mean in milliseconds of samples in seconds."""
    ordered = sorted(samples_s)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {
        "n": len(ordered),
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1] * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


def percentile(sorted_values: list[int], p: float) -> int:
    """Nearest-rank percentile of an ascending list (what wrk's histogram reports too)."""
    if not sorted_values:
        return 0
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil(n * p / 100)
    return sorted_values[int(rank) - 1]


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values present, rounded to 2 decimals (None when there are none)."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def ratio(a: float | None, b: float | None, digits: int | None = None) -> float | None:
    """a / b, None when either is missing (or b is 0); rounded to `digits` when given."""
    if a is None or not b:
        return None
    return a / b if digits is None else round(a / b, digits)


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """Print a Markdown table under `title`."""
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


# -- the machine -----------------------------------------------------------------------------


def process_cpu_s(pid: int | None = None) -> float:
    """User + system CPU seconds of one process (all its threads; default this one), 0 when gone."""
    try:
        fields = Path(f"/proc/{pid or os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) from /proc/<pid>/status, in KiB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            figures[key] = int(value.split()[0])
    return figures


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of the machine's CPU time that was not idle over `seconds` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return round(1 - (idle1 - idle0) / max(total1 - total0, 1), 3)


def machine() -> dict[str, Any]:
    """What a result was measured on, recorded beside it."""
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average": load_average(),
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


# -- CPU quota -------------------------------------------------------------------------------

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


@dataclass
class CpuQuota:
    path: Path
    procs_file: str

    @classmethod
    def create(cls, name: str, cpus: float, root: Path = ROOT) -> CpuQuota | str:
        """A new cgroup limited to `cpus` CPUs, or why none could be made."""
        quota_us = max(1000, int(cpus * PERIOD_US))
        group = f"tiergate-bench-{os.getpid()}-{name}"
        try:
            if (root / "cgroup.controllers").exists():  # v2, unified
                path = root / group
                path.mkdir(exist_ok=True)
                (path / "cpu.max").write_text(f"{quota_us} {PERIOD_US}\n")
                return cls(path, "cgroup.procs")
            path = root / "cpu" / group  # v1
            path.mkdir(exist_ok=True)
            (path / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
            (path / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
            return cls(path, "cgroup.procs")
        except OSError as exc:
            return f"no CPU quota ({exc.strerror or exc}: {exc.filename})"

    def add(self, pid: int) -> None:
        (self.path / self.procs_file).write_text(f"{pid}\n")

    def throttled_s(self) -> float:
        """Seconds the group's processes waited for quota (v1 `throttled_time` ns, v2 `throttled_usec`)."""
        try:
            stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        except (OSError, ValueError):
            return 0.0
        if "throttled_usec" in stat:
            return int(stat["throttled_usec"]) / 1e6
        return int(stat.get("throttled_time", 0)) / 1e9

    def remove(self) -> None:
        """Remove the group (its processes have exited; a live one is moved back to the root)."""
        try:
            for pid in (self.path / self.procs_file).read_text().split():
                (self.path.parent / self.procs_file).write_text(f"{pid}\n")
            self.path.rmdir()
        except OSError:
            pass
