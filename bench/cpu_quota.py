"""A CPU quota for one benchmark process, the way Kubernetes enforces a container's CPU limit.

    quota = CpuQuota.create("daemon-0", cpus=0.5)   # None where cgroups cannot be written
    quota.add(pid)                                  # the process and the threads it starts later
    quota.remove()

Kubernetes turns `resources.limits.cpu: 500m` into a CFS quota of 50 ms per 100 ms period on the
container's cgroup. Doing the same here lets "two daemons vs one" measure the design on a 2-core
machine whose cores the database and the load generator share: each daemon gets the same
slice of CPU whether one or two run, as two pods on two nodes would. Both cgroup layouts are
handled: v2 (`cpu.max`) and v1 (`cpu/cpu.cfs_quota_us`). Needs write access to /sys/fs/cgroup
(root in a container or VM); `create` returns None, with the reason, where it has none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
