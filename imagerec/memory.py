"""How much memory one photo may use in a step: the container's memory limit, less what the
process holds before its first photo, shared by the requests it serves at once.

On a cluster the limit is the Service's `resources.limits.memory` (enforced as the cgroup's
`memory.max`) and the requests at once are its `containerConcurrency`, which knative/ sets
THREADS to (functions-framework serves that many requests in parallel, no more). Without a
container limit (`imagerec dev`) the machine's memory is shared the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
# An idle step (Python, Flask, Pillow, pillow-heif, exifread, SQLAlchemy, the Redis client)
# holds 62-76 MiB of RSS (measured with benchmarks' photos); the rest is the photos'.
STEP_RESERVE = 96 * 2**20
# detect-objects holds TensorFlow and its model besides; its budget is reckoned like the
# others' all the same (never stricter than extract-metadata's, where photos are judged), and
# tests/test_budgets.py checks that knative/ leaves it as much per photo, model and all.
# cgroup v1 writes "no limit" as a number near 2**63.
_UNLIMITED = 2**60


def memory_limit(cgroup: Path = CGROUP) -> int | None:
    """The container's memory limit in bytes (cgroup v2 `memory.max`, else v1), or None."""
    for path in (cgroup / "memory.max", cgroup / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            limit = int(text)
        except ValueError:
            continue
        return limit if limit < _UNLIMITED else None
    return None


def concurrent_requests(env: Mapping[str, str]) -> int:
    """How many requests the step serves at once: THREADS, as functions-framework reads it."""
    return max(1, int(env.get("THREADS") or (os.cpu_count() or 1) * 4))


def photo_memory(env: Mapping[str, str], cgroup: Path = CGROUP) -> int:
    """Bytes one photo may use while a step decodes it, so that every request the step serves
    at once fits in its memory together."""
    limit = memory_limit(cgroup)
    if limit is None:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(0, limit - STEP_RESERVE) // concurrent_requests(env)
