"""The `imagerec` command: migrate, reconcile, and `dev` starting and stopping cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import MODEL
from sqlalchemy import create_engine, inspect

from workflows.dev import free_port

IMAGEREC = [sys.executable, "-c", "import sys; from workflows.cli import main; sys.exit(main())"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEREC_", "K_SINK"))}
    env.update(IMAGEREC_DATA_DIR=str(tmp_path / "data"), IMAGEREC_DETECTOR_MODEL=str(MODEL))
    return env


def test_migrate_creates_the_schema(tmp_path):
    result = subprocess.run(
        [*IMAGEREC, "migrate"], env=_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'imagerec.db'}")
    assert {"users", "albums", "images", "detections"} <= set(inspect(engine).get_table_names())


def test_reconcile_needs_a_sink(tmp_path):
    result = subprocess.run(
        [*IMAGEREC, "reconcile"], env=_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "no sink" in result.stderr


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            children = (task / "children").read_text().split()
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return "?"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_dev_serves_the_album_page_and_ctrl_c_leaves_no_orphans(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [*IMAGEREC, "dev", "--port", str(port)],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "album page at" in line:
                break
        assert any(f"http://127.0.0.1:{port}/" in line for line in lines), "".join(lines)
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
        services = {json.loads(line)["service"] for line in lines}  # every line is JSON
        assert {"web", "dev", "runner"} <= services
        children = _descendants(process.pid)
        assert len(children) >= 6  # five steps and the web service, each with its workers
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        process.wait(timeout=30)
        survivors = {pid: _cmdline(pid) for pid in children if _alive(pid)}
        assert survivors == {}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
