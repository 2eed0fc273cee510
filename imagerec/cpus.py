"""How many CPUs this process may really use: a container's CPU limit, not the host's cores.

`os.cpu_count()` reports the node's cores (64 on a big node) while the container may be
limited to 2 (Knative's `resources.limits.cpu`, enforced as a CFS quota). Thread pools sized
from the host's count oversubscribe the quota and get throttled; these are sized from this.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cpu_limit(cgroup: Path = CGROUP) -> float | None:
    """The CFS quota in CPUs (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), or None."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """Whole CPUs available: the quota rounded up, never more than the CPUs we may run on."""
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count() or 1
    limit = cpu_limit(cgroup)
    if limit is not None:
        available = min(available, math.ceil(limit))
    return max(1, available)


def tensorflow_threads(cgroup: Path = CGROUP) -> tuple[int, int]:
    """(intra-op, inter-op) threads for TensorFlow: one op spread over every usable CPU, and
    as many independent ops at once (TensorFlow's own default asks the host, not the quota)."""
    cpus = usable_cpus(cgroup)
    return cpus, cpus


def request_threads(cgroup: Path = CGROUP, per_cpu: int = 2) -> int:
    """functions-framework's THREADS for a step: a few requests per CPU overlap their I/O;
    more only queue for the CPU while each holds a decoded image in memory."""
    return usable_cpus(cgroup) * per_cpu
