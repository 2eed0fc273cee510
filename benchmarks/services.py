"""Cold start of every service against a bare `python -c "import …"` of what it must import,
and the /proc figures (CPU, peak RSS) of running process trees."""

from __future__ import annotations

import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from benchmarks import photos
from benchmarks.figures import Figure, Report
from benchmarks.timing import ratio
from workflows.manifests import load_manifests

# The pipeline's steps, as knative/ lists them; the detector is measured apart (its model).
STEPS = load_manifests(photos.ROOT / "knative").steps
DETECTOR = "detect-objects"
LIGHT_STEPS = tuple(name for name in STEPS if name != DETECTOR)
# The third-party modules a service cannot start without: the floor of its cold start.
BARE_IMPORTS = {
    "extract-metadata": "functions_framework, waitress.server, PIL.Image, pillow_heif, exifread,"
    " sqlalchemy.orm, jsonschema",
    "make-thumbnail": "functions_framework, waitress.server, PIL.Image, pillow_heif,"
    " sqlalchemy.orm, jsonschema",
    "store-results": "functions_framework, waitress.server, sqlalchemy.orm, jsonschema",
    "record-failure": "functions_framework, waitress.server, sqlalchemy.orm, jsonschema",
    "web": "waitress.server, flask, sqlalchemy.orm, PIL.Image, jsonschema",
}
_DETECTOR_BARE = """
import os; os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import functions_framework, waitress.server, PIL.Image, pillow_heif
import tensorflow as tf, tensorflow_hub as hub
model = hub.load({model!r}).signatures["default"]
model(tf.zeros([1, 64, 64, 3], tf.float32))
"""
# The `imagerec` command as the console script runs it (workflows.cli has no __main__).
IMAGEREC = (sys.executable, "-c", "import sys; from workflows.cli import main; sys.exit(main())")
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cold_starts(report: Report, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="imagerec-bench-") as tmp:
        env = _service_env(Path(tmp))
        subprocess.run(
            [*IMAGEREC, "migrate"],
            env=env,
            cwd=photos.ROOT,
            check=True,
            capture_output=True,
        )
        python_start = statistics.median(_bare("pass", env)[0] for _ in range(repeat))
        services = (*LIGHT_STEPS, "web", DETECTOR)
        results: dict[str, dict[str, float]] = {}
        for service in services:
            bare_code = (
                _DETECTOR_BARE.format(model=str(photos.MODEL))
                if service == DETECTOR
                else f"import {BARE_IMPORTS[service]}"
            )
            bare, subject = [], []
            for _ in range(repeat):  # interleaved: load from outside hits both alike
                bare.append(_bare(bare_code, env))
                subject.append(_service_start(service, env))
            results[service] = {
                "cpu_seconds": statistics.median(c for c, _ in subject),
                "wall_seconds": statistics.median(w for _, w in subject),
                "bare_cpu_seconds": statistics.median(c for c, _ in bare),
                "bare_wall_seconds": statistics.median(w for _, w in bare),
            }
    report.note(
        f"python -c pass takes {python_start:.3f} CPU-s here (included in every start); cold "
        "starts are counted in CPU-seconds (a start is one thread: on an idle machine its wall "
        "time), as the wall time of a start on a shared machine is mostly waiting for a core"
    )
    for service, r in results.items():
        bare_ratio = ratio(r["cpu_seconds"], r["bare_cpu_seconds"])
        if service == DETECTOR:
            report.add(
                Figure(
                    cold_start(service, "vs_bare"),
                    bare_ratio,
                    "x",
                    "start to ready (model loaded, warmed) / bare import TF + load + one call",
                    ("<=", 1.2),
                    f"bare {r['bare_cpu_seconds']:.2f} CPU-s; service {r['cpu_seconds']:.2f} CPU-s",
                    r,
                )
            )
            continue
        limit = 0.8 if service == "web" else 0.6
        report.add(
            Figure(
                cold_start(service, "seconds"),
                r["cpu_seconds"],
                "CPU-s",
                "process start to first good answer",
                ("<=", limit),
                f"bare python -c 'import {BARE_IMPORTS[service]}': "
                f"{r['bare_cpu_seconds']:.3f} CPU-s",
                r,
            )
        )
        report.add(
            Figure(
                cold_start(service, "vs_bare"),
                bare_ratio,
                "x",
                "start to first good answer / bare import of what it must import",
                None,
                "python -c 'import …' (same run, interleaved), CPU-seconds",
            )
        )


def cold_start(service: str, kind: str) -> str:
    """The name of one of a service's cold-start figures."""
    return f"cold_start.{service.replace('-', '_')}.{kind}"


def _service_env(data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "IMAGEREC_DATA_DIR": str(data_dir),
        "IMAGEREC_DETECTOR_MODEL": str(photos.MODEL),
        "IMAGEREC_SECRET_KEY": "bench",
        "PYTHONPATH": str(photos.ROOT),
    }


def _bare(code: str, env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of `python -c code`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall


def service_argv(service: str, port: int) -> list[str]:
    """The command its container runs (imagerec/serve.py), on a local port."""
    address = ("--host", "127.0.0.1", "--port", str(port))
    if service == "web":
        return [*(sys.executable, "-m", "imagerec.serve", "--app", "web:create_app()"), *address]
    module = STEPS[service].function
    return [
        *(sys.executable, "-m", "imagerec.serve"),
        *("--source", str(photos.ROOT / "functions" / f"{module}.py"), "--target", module),
        *address,
    ]


def _service_start(
    service: str, env: dict[str, str], timeout: float = 120.0
) -> tuple[float, float]:
    """(CPU seconds, wall seconds) from exec to the first 200 of its readiness URL (steps:
    GET /; web: /healthz), the CPU of all its processes."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/" + ("healthz" if service == "web" else "")
    started = time.perf_counter()
    process = subprocess.Popen(
        service_argv(service, port),
        env=env,
        cwd=photos.ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    http = requests.Session()
    try:
        while time.perf_counter() - started < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"{service} exited with {process.returncode} while starting")
            try:
                if http.get(url, timeout=2).status_code == 200:
                    wall = time.perf_counter() - started
                    return cpu_seconds(tree(process.pid)), wall
            except requests.RequestException:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"{service} not ready in {timeout} s")
    finally:
        os.killpg(process.pid, 15)
        process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- /proc: CPU and peak RSS of process trees ---------------------------------------------


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if _stat(int(entry))[1] == pid:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def tree(pid: int) -> list[int]:
    pids, frontier = [pid], [pid]
    while frontier:
        below = [c for p in frontier for c in children_of(p)]
        pids += below
        frontier = below
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            utime, stime = _stat(pid)[11:13]
        except OSError:
            continue
        total += (utime + stime) / _TICKS
    return total


def peak_rss_bytes(pids: list[int]) -> int:
    """The largest VmHWM (peak resident set) among the processes."""
    peak = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            continue
    return peak


def _stat(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is the state; from index 1 on they are numbers (ppid, pgrp, ...).
    return [0, *map(int, fields[1:15])]
