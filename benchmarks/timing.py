"""Interleaved timing: a subject and its baseline alternate, so load from other processes
hits both alike; the figure is the ratio of their medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Cost:
    cpu: float  # seconds of CPU of this process (all its threads): steady under outside load
    wall: float  # seconds of wall-clock time


def measure(work: Callable[[], object]) -> Cost:
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return Cost(time.process_time() - cpu, time.perf_counter() - wall)


def interleaved(works: dict[str, Callable[[], object]], repeat: int) -> dict[str, Cost]:
    """Median cost of each work, run in turn `repeat` times after one untimed warm-up."""
    for work in works.values():
        work()
    samples: dict[str, list[Cost]] = {name: [] for name in works}
    for _ in range(repeat):
        for name, work in works.items():
            samples[name].append(measure(work))
    return {
        name: Cost(
            statistics.median(c.cpu for c in costs), statistics.median(c.wall for c in costs)
        )
        for name, costs in samples.items()
    }


def ratio(subject: float, baseline: float) -> float:
    return subject / baseline if baseline > 0 else float("inf")
