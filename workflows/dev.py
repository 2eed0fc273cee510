"""`imagerec dev`: the whole service on one machine.

Every step runs as its own HTTP service (its functions-framework app), the web service too,
each on imagerec/serve.py's server (which slow clients cannot starve), and the local runner
routes CloudEvents between them from the same knative/ manifests a cluster uses. Every process
writes JSON log lines naming its service (imagerec/logs.py) straight to the terminal (or
`log_fd`): nothing relays them. A child that dies is restarted; Ctrl-C stops everything.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path

import requests

from imagerec import logs
from imagerec.blobstore import open_blob_store
from imagerec.config import Settings
from imagerec.cpus import request_threads, usable_cpus
from imagerec.db import session_factory, upgrade
from workflows.manifests import load_manifests
from workflows.reconciler import Reconciler
from workflows.runner import Runner, own_sources

log = logging.getLogger("imagerec.dev")

MANIFESTS = Path(__file__).resolve().parents[1] / "knative"
_PR_SET_PDEATHSIG = 1
STABLE_AFTER_SECONDS = 60
MAX_RESTART_DELAY = 8
# The loggers of what runs inside `imagerec dev`'s own process, and the service each names.
IN_PROCESS = {
    "imagerec.dev": "dev",
    "workflows.runner": "runner",
    "imagerec.reconciler": "reconciler",
}


def configure_logging(fd: int | None = None) -> None:
    """JSON lines for `imagerec dev`'s own process: its runner, reconciler and itself."""
    logs.configure("dev", fd=fd)
    for name, service in IN_PROCESS.items():
        logs.name_service(logging.getLogger(name), service)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Looked up here, not in the child: between fork and exec only async-signal-safe work is safe,
# and loading a library could wait forever on a loader lock another thread held at the fork.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    # If `imagerec dev` is killed outright, the kernel stops its children too: no orphans.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One supervised process, restarted when it dies unless we are stopping."""

    name: str
    argv: list[str]
    env: dict[str, str]
    url: str
    output: int | None = None  # where its stdout and stderr go (None: inherited)
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _stopping: threading.Event = field(default_factory=threading.Event)
    # Held while a process is started or signalled: a restart never slips past a stop.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._spawn()
        threading.Thread(target=self._supervise, name=f"supervise-{self.name}", daemon=True).start()

    def _spawn(self) -> None:
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            # Its lines are whole JSON lines naming the service: they need no relaying.
            stdout=self.output,
            stderr=self.output,
            # Its own process group: the child and its workers are stopped together, and a
            # terminal's Ctrl-C reaches only `imagerec dev`, which stops them in order.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def _supervise(self) -> None:
        # One long-lived thread per child: PDEATHSIG fires when the *thread* that started the
        # child ends, so restarts must come from a thread that outlives them.
        crashes_in_a_row = 0
        while True:
            process = self.process
            assert process is not None
            started = time.monotonic()
            code = process.wait()
            if self._stopping.is_set():
                return
            self.restarts += 1
            # Back off only while it keeps crashing at once, and never past the runner's retry
            # window (about 30 s with knative/'s delivery): events in flight must find it back.
            ran_a_while = time.monotonic() - started > STABLE_AFTER_SECONDS
            crashes_in_a_row = 1 if ran_a_while else crashes_in_a_row + 1
            delay = min(2 ** (crashes_in_a_row - 1), MAX_RESTART_DELAY)
            log.warning("%s exited with %s; restarting in %ss", self.name, code, delay)
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self._spawn()

    def wait_ready(self, timeout: float, warm: bool = True) -> bool:
        """Wait until it answers; with `warm`, until it says it is ready (2xx-4xx)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
            try:
                if requests.get(self.url, timeout=2).status_code < 500 or not warm:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.3)
        return False

    def signal_stop(self) -> None:
        """Ask the child and every process it started (its workers) to stop."""
        with self._lock:
            self._stopping.set()
            if self.process and self.process.poll() is None:
                _signal_group(self.process.pid, signal.SIGTERM)

    def wait_stopped(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)
        # Whatever is left of its group (a worker slow to follow its master) goes now.
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()


def server_argv(*options: str) -> list[str]:
    """The command serving the web or a step (imagerec/serve.py), as the images run it."""
    return [sys.executable, "-m", "imagerec.serve", *options]


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def step_threads(name: str) -> int:
    """Request threads for a step: the detector one per usable CPU (TensorFlow already spreads
    each call over all of them), the light steps a few per CPU to overlap their I/O."""
    return usable_cpus() if name == "detect-objects" else request_threads()


class DevStack:
    """The web service, every step, the runner and the reconciler, started together."""

    def __init__(
        self,
        settings: Settings,
        host: str = "127.0.0.1",
        port: int = 5000,
        runner_port: int | None = None,
        reconcile_interval: float = 10.0,
        manifests: Path = MANIFESTS,
        log_fd: int | None = None,
    ) -> None:
        """`log_fd`: where every part writes its log lines (default: this process's stdout and
        stderr, which the children inherit); a test reads them back from a file."""
        self.settings, self.host, self.port = settings, host, port
        self.runner_port = runner_port or free_port()
        self.reconcile_interval = reconcile_interval
        self.manifests = manifests
        self.log_fd = log_fd
        self._log_handler: logging.Handler | None = None
        self.children: dict[str, Child] = {}
        self.runner: Runner | None = None
        self.runner_started: datetime | None = None
        self.server = None
        self.reconciler: Reconciler | None = None

    @property
    def web_url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def _env(self, service: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            K_SERVICE=service,  # as Knative sets it: the name its log lines carry
            IMAGEREC_DATA_DIR=str(self.settings.data_dir),
            IMAGEREC_DATABASE_URL=self.settings.database_url,
            IMAGEREC_BLOB_URL=self.settings.blob_url,
            IMAGEREC_DETECTOR_MODEL=self.settings.detector_model,
            IMAGEREC_SECRET_KEY=self.settings.secret_key,
            PYTHONUNBUFFERED="1",
        )
        return env

    def _step_child(self, name: str, module: str) -> Child:
        port = free_port()
        spec = find_spec(f"functions.{module}")
        if spec is None or spec.origin is None:
            raise RuntimeError(f"step module functions/{module}.py not found")
        argv = server_argv(
            *("--source", spec.origin, "--target", module),
            *("--host", "127.0.0.1", "--port", str(port)),
        )
        env = self._env(name)
        # Request threads: functions-framework's default is 4 per host core; each thread of the
        # detector holds a decoded photo and TensorFlow's buffers (8 of them: 2.6 GiB).
        env.setdefault("THREADS", str(step_threads(name)))
        return Child(name, argv, env, f"http://127.0.0.1:{port}", self.log_fd)

    def start(self, ready_timeout: float = 120.0) -> DevStack:
        if self.log_fd is not None:
            self._log_handler = logs.LineHandler(self.log_fd)
            self._log_handler.setFormatter(logs.JsonFormatter("dev"))
            for name, service in IN_PROCESS.items():
                logger = logs.name_service(logging.getLogger(name), service)
                logger.addHandler(self._log_handler)
                logger.setLevel(logging.INFO)  # whatever the host process's root level
        upgrade(self.settings.database_url)
        for name, step in load_manifests(self.manifests).steps.items():
            self.children[name] = self._step_child(name, step.function)
        self._start_runner()
        web_env = {**self._env("web"), "K_SINK": self.server.broker_url}
        self.children["web"] = Child(
            "web",
            # No access log: a line per request (every poll of an album) cost more CPU than
            # the request; what matters is in the app's own lines.
            server_argv(
                *("--app", "web:create_app()", "--threads", "8"),
                *("--host", self.host, "--port", str(self.port)),
            ),
            web_env,
            self.web_url,
            self.log_fd,
        )
        for child in self.children.values():
            child.start()
        for child in self.children.values():
            if child.wait_ready(ready_timeout):
                continue
            if not child.wait_ready(5, warm=False):
                self.stop()
                raise RuntimeError(f"{child.name} did not start in {ready_timeout}s")
            # E.g. a detector that cannot be loaded offline: the stack is still worth having,
            # the step answers 503 with the reason, and its events end in the dead-letter path.
            log.warning("%s is up but not ready after %ss; going on", child.name, ready_timeout)
        self.reconciler = Reconciler(
            session_factory(self.settings.database_url),
            self.server.broker_url,
            self.settings.patience,
            self.reconcile_interval,
            # What the runner held in memory before it started is lost: re-sent at once.
            carrier_since=lambda: self.runner_started,
            blobs=open_blob_store(self.settings.blob_url),
            orphan_grace=self.settings.untouched_after_seconds,
        ).start()
        return self

    def _start_runner(self) -> None:
        manifests = load_manifests(self.manifests)
        services = {name: self.children[name].url for name in manifests.steps}
        self.runner = Runner(manifests, services, trusted_sources=own_sources(manifests))
        self.runner_started = datetime.now(UTC)
        self.server = self.runner.serve("127.0.0.1", self.runner_port)

    def restart_runner(self) -> None:
        """Stop the runner, losing whatever it was delivering, and start a fresh one."""
        self.server.stop()
        self._start_runner()

    def stop(self) -> None:
        if self.reconciler:
            self.reconciler.stop()
        for child in self.children.values():
            child.signal_stop()
        for child in self.children.values():
            child.wait_stopped()
        if self.server:
            self.server.stop()
        if self._log_handler is not None:
            for name in IN_PROCESS:
                logging.getLogger(name).removeHandler(self._log_handler)
                logging.getLogger(name).setLevel(logging.NOTSET)


def run(settings: Settings, host: str, port: int) -> int:
    configure_logging()
    stack = DevStack(settings, host=host, port=port)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stack.start()
        log.info("imagerec is up: album page at %s", stack.web_url)
        log.info("broker ingress at %s; data in %s", stack.server.broker_url, settings.data_dir)
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        log.info("stopping")
        stack.stop()
    return 0
