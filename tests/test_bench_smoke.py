"""`benchmarks/run.py --smoke`: every part of `make bench` runs, and the JSON it writes has
every figure the issue asks for, each with its target and met / not met. The figures of a
smoke run mean nothing (one repetition, a few photos); only their presence is checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.run import FIGURE_KEYS  # noqa: E402

pytestmark = pytest.mark.slow


def test_smoke_run_writes_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads(output.read_text())["figures"]
    missing = [key for key in FIGURE_KEYS if key not in figures]
    assert not missing, missing
    for key in FIGURE_KEYS:
        figure = figures[key]
        assert isinstance(figure["value"], int | float), (key, figure)
        assert set(figure) >= {"unit", "target", "met", "baseline", "what"}, key
        # A figure with a target says whether it was met.
        assert (figure["met"] is None) == (figure["target"] is None), (key, figure)
    # The same figures are printed as a table.
    assert [key for key in FIGURE_KEYS if key not in run.stdout] == []
    # Every upload of the smoke run went through the whole pipeline.
    assert figures["e2e.errors"]["value"] == 0, figures["e2e.errors"]
    assert figures["labels.prominent_objects_lost"]["value"] == 0
