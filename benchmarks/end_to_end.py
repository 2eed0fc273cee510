"""End to end on `imagerec dev`: N uploads from C clients through the JSON API, each client
uploading a photo and polling it until final before the next, as a person at a browser does.

The stack runs as its own process tree (`imagerec dev`), so /proc gives each part's CPU:
the runner lives in the dev process itself, every step and the web are its children.
"""

from __future__ import annotations

import collections
import os
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import photos
from benchmarks.figures import Figure, Report
from benchmarks.services import (
    DETECTOR,
    IMAGEREC,
    STEPS,
    children_of,
    cpu_seconds,
    free_port,
    peak_rss_bytes,
    tree,
)
from web.client import FINAL_STATES, ApiSession

# A client polls its photo this often; the latency comes from the photo's own updatedAt (the
# database's time of its final state), so polling seldom costs the web little and loses no
# precision.
POLL_SECONDS = 0.2
# List prices, USD, on-demand, us-east-1, as published by the vendor (checked 2026):
# Rekognition Image, Group 1 APIs (DetectLabels), first 1 million images a month.
REKOGNITION_PER_1000 = 1.00
REKOGNITION_SOURCE = "https://aws.amazon.com/rekognition/pricing/ (Group 1, first 1M images/mo)"
# What a CPU-second costs to rent: AWS Fargate Linux/x86, per vCPU-hour.
FARGATE_VCPU_HOUR = 0.04048
FARGATE_SOURCE = "https://aws.amazon.com/fargate/pricing/ (Linux/x86, us-east-1, per vCPU-hour)"


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def end_to_end(report: Report, uploads: int, clients: int, bare_model_cpu: float) -> None:
    mix = photos.step_photos()
    with tempfile.TemporaryDirectory(prefix="imagerec-bench-e2e-") as tmp:
        stack = _DevStack(Path(tmp))
        try:
            stack.start()
            before = stack.cpu_by_part()
            outcome, wall = _drive(stack.url, mix, uploads, clients)
            after = stack.cpu_by_part()
            rss = stack.peak_rss_by_part()
        finally:
            stack.stop()
    used = {part: after[part] - before.get(part, 0.0) for part in after}
    total = sum(used.values())
    done = len(outcome.latencies)
    per_photo = total / max(uploads, 1)
    latencies = sorted(outcome.latencies) or [float("nan")]
    throughput = done / wall
    cpu_bound_rate = (os.cpu_count() or 1) / per_photo if per_photo else float("inf")
    scope = f"{uploads} uploads, {clients} clients, mixed shared photos"
    report.add(Figure("e2e.throughput", throughput, "photos/s", scope, None, "upload to done"))
    report.add(
        Figure(
            "e2e.throughput.vs_cpu_bound",
            throughput / cpu_bound_rate,
            "x",
            "throughput / (cores / whole-stack CPU per photo)",
            (">=", 0.85),
            f"the rate the stack's CPU allows on {os.cpu_count()} cores: {cpu_bound_rate:.2f}/s",
        )
    )
    report.add(
        Figure("e2e.latency.p50", _pct(latencies, 50), "s", scope, ("<=", 0.5), "upload→done")
    )
    report.add(
        Figure("e2e.latency.p95", _pct(latencies, 95), "s", scope, ("<=", 1.5), "upload→done")
    )
    report.add(Figure("e2e.latency.max", latencies[-1], "s", scope, None, "upload→done"))
    report.add(
        Figure(
            "e2e.errors",
            float(len(outcome.errors)),
            "",
            "uploads not done (refused, rejected, failed, timed out)",
            ("==", 0),
            None,
            {"first": outcome.errors[:5]},
        )
    )
    report.add(
        Figure(
            "e2e.cpu_per_photo.vs_bare_model",
            per_photo / bare_model_cpu,
            "x",
            f"whole-stack CPU per photo {per_photo * 1000:.0f} ms / bare model call",
            ("<=", 1.5),
            f"bare model call {bare_model_cpu * 1000:.0f} CPU-ms (median, same photos, same run)",
            {"cpu_ms_per_photo": per_photo * 1000, "bare_model_cpu_ms": bare_model_cpu * 1000},
        )
    )
    for part, seconds in sorted(used.items(), key=lambda kv: -kv[1]):
        report.add(
            Figure(
                f"e2e.cpu_share.{part}",
                seconds / total if total else None,
                "",
                "share of the whole stack's CPU",
                None,
                f"{seconds / max(uploads, 1) * 1000:.0f} CPU-ms per photo",
            )
        )
    for part, peak in sorted(rss.items()):
        limit = ("<=", 1.2) if part == DETECTOR else None
        report.add(
            Figure(
                f"peak_rss.{part}",
                peak / 2**30,
                "GiB",
                f"peak resident set (VmHWM) of its largest process, {clients} clients",
                limit,
                None,
            )
        )
    cpu_per_1000 = per_photo * 1000
    price = cpu_per_1000 / 3600 * FARGATE_VCPU_HOUR
    report.add(
        Figure(
            "cost.cpu_seconds_per_1000_photos",
            cpu_per_1000,
            "CPU-s",
            "whole stack, per 1000 mixed photos",
            None,
            f"≈ USD {price:.4f} at USD {FARGATE_VCPU_HOUR}/vCPU-h ({FARGATE_SOURCE}); "
            f"Rekognition DetectLabels: USD {REKOGNITION_PER_1000:.2f} per 1000 "
            f"({REKOGNITION_SOURCE})",
            {
                "usd_per_1000_cpu": price,
                "usd_per_1000_rekognition": REKOGNITION_PER_1000,
                "sources": [FARGATE_SOURCE, REKOGNITION_SOURCE],
            },
        )
    )
    report.add(
        Figure(
            "cost.vs_rekognition",
            price / REKOGNITION_PER_1000,
            "x",
            "CPU rent per 1000 photos / Rekognition list price per 1000 (CPU only, no memory)",
            None,
            REKOGNITION_SOURCE,
        )
    )


def _pct(values: list[float], p: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def _drive(url: str, mix: list[str], uploads: int, clients: int) -> tuple[Outcome, float]:
    outcome, lock = Outcome(), threading.Lock()
    shares = [list(range(c, uploads, clients)) for c in range(clients)]

    def client(number: int, indices: list[int]) -> None:
        try:
            api = ApiSession(url)
            user = {"username": f"bench{number}", "password": "x" * 16}
            api.csrf = api.call("POST", "/api/users", json=user)["csrfToken"]
        except Exception as e:
            with lock:
                outcome.errors += [f"client {number} cannot sign up: {e}"] * len(indices)
            return
        albums: dict[int, int] = {}
        for i in indices:
            name = mix[i % len(mix)]
            # Each photo once per album: the same bytes twice in one album are a duplicate.
            round_ = i // len(mix)
            started = time.time()
            try:
                if round_ not in albums:
                    albums[round_] = api.album_id(f"bench {number} {round_}")
                result = api.upload_file(albums[round_], photos.IMAGES / name, None)
                if result.outcome != "uploaded" or result.image is None:
                    raise RuntimeError(f"{result.outcome}: {result.message}")
                image = _poll(api, result.image["id"], started + 60)
                if image["status"] != "done":
                    raise RuntimeError(f"ended {image['status']}")
            except Exception as e:
                with lock:
                    outcome.errors.append(f"{name}: {e}")
                continue
            finished = datetime.fromisoformat(image["updatedAt"])
            if finished.tzinfo is None:  # SQLite hands back UTC without its zone
                finished = finished.replace(tzinfo=UTC)
            with lock:
                outcome.latencies.append(finished.timestamp() - started)

    threads = [
        threading.Thread(target=client, args=(n, share), daemon=True)
        for n, share in enumerate(shares)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcome, time.perf_counter() - started


def _poll(api: ApiSession, image_id: str, deadline: float) -> dict:
    while True:
        image = api.call("GET", f"/api/images/{image_id}")["image"]
        if image["status"] in FINAL_STATES or time.time() > deadline:
            return image
        time.sleep(POLL_SECONDS)


class _DevStack:
    """`imagerec dev` as a child process tree on free ports, its data in a temporary folder."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "IMAGEREC_DATA_DIR": str(data_dir),
            "IMAGEREC_DETECTOR_MODEL": str(photos.MODEL),
            "PYTHONPATH": str(photos.ROOT),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self.up = threading.Event()

    def start(self, timeout: float = 180.0) -> None:
        self.process = subprocess.Popen(
            [*IMAGEREC, "dev", "--port", str(self.port)],
            env=self.env,
            cwd=photos.ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.up.wait(0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("imagerec dev did not come up:\n" + "\n".join(self.lines))

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if "imagerec is up" in line:
                self.up.set()

    def parts(self) -> dict[str, list[int]]:
        """Each part's processes: the dev process (runner, reconciler) and each child's tree."""
        assert self.process is not None
        parts = {"runner (imagerec dev)": [self.process.pid]}
        for child in children_of(self.process.pid):
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            name = _part_name([a.decode(errors="replace") for a in cmdline])
            if name is not None:
                parts[name] = tree(child)
        return parts

    def cpu_by_part(self) -> dict[str, float]:
        return {part: cpu_seconds(pids) for part, pids in self.parts().items()}

    def peak_rss_by_part(self) -> dict[str, int]:
        return {part: peak_rss_bytes(pids) for part, pids in self.parts().items()}

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()


def _part_name(argv: list[str]) -> str | None:
    """The service a direct child of `imagerec dev` runs (its workers are in its tree)."""
    if "--target" in argv:
        function = argv[argv.index("--target") + 1]
        return next(name for name, step in STEPS.items() if step.function == function)
    if any("web:create_app" in a for a in argv):
        return "web"
    return None
