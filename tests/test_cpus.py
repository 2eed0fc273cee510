"""The CPU limit read from the container's cgroup, as thread pools are sized from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagerec.cpus import cpu_limit, request_threads, tensorflow_threads, usable_cpus


def cgroup_v2(tmp_path: Path, cpu_max: str) -> Path:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


def cgroup_v1(tmp_path: Path, quota: int, period: int = 100000) -> Path:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


def test_a_v2_quota_is_read_in_cpus(tmp_path):
    assert cpu_limit(cgroup_v2(tmp_path, "150000 100000")) == 1.5


def test_v2_without_a_quota_is_no_limit(tmp_path):
    assert cpu_limit(cgroup_v2(tmp_path, "max 100000")) is None


def test_a_v1_quota_is_read_when_there_is_no_v2_file(tmp_path):
    assert cpu_limit(cgroup_v1(tmp_path, 200000)) == 2.0


def test_v1_without_a_quota_or_no_cgroup_is_no_limit(tmp_path):
    assert cpu_limit(cgroup_v1(tmp_path, -1)) is None
    assert cpu_limit(tmp_path / "nothing-here") is None


@pytest.mark.parametrize(("cpu_max", "expected"), [("50000 100000", 1), ("150000 100000", 2)])
def test_a_fractional_quota_rounds_up_to_whole_cpus(tmp_path, cpu_max, expected):
    cgroup = cgroup_v2(tmp_path, cpu_max)
    assert usable_cpus(cgroup) == min(expected, len(os.sched_getaffinity(0)))


def test_no_more_cpus_than_the_process_may_run_on(tmp_path):
    cgroup = cgroup_v2(tmp_path, "6400000 100000")  # a 64-CPU quota on a smaller machine
    assert usable_cpus(cgroup) == len(os.sched_getaffinity(0))


def test_thread_pools_follow_the_limit(tmp_path):
    cgroup = cgroup_v2(tmp_path, "100000 100000")
    assert tensorflow_threads(cgroup) == (1, 1)
    assert request_threads(cgroup) == 2
