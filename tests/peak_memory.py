"""Peak memory of each pixel step's work on one photo, for tests/test_budgets.py.

    python tests/peak_memory.py PHOTO   ->  {"extract-metadata": bytes, ...} on stdout

Runs in its own process: the kernel's high-water mark (VmHWM) is reset before each step
(/proc/self/clear_refs), and glibc is told to give every large block back when freed, so one
step's leftovers do not hide the next one's peak.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

from functions import detect_objects, extract_metadata, make_thumbnail


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def peak(work) -> int:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    work()
    return _status("VmHWM") - before


def main(photo: str) -> None:
    original = Path(photo).read_bytes()
    steps = {
        "extract-metadata": lambda: extract_metadata._metadata(original),
        "make-thumbnail": lambda: make_thumbnail._renditions(original, 256, working_copy=True),
        "detect-objects": lambda: detect_objects._decode(original),
    }
    print(json.dumps({name: peak(work) for name, work in steps.items()}))


if __name__ == "__main__":
    assert os.environ.get("MALLOC_MMAP_THRESHOLD_"), "run with a fixed mmap threshold"
    main(sys.argv[1])
