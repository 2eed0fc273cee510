"""CPU the `imagerec dev` process spends per 100 events it relays: the runner and its log relay.

    .venv/bin/python benchmarks/runner_cpu.py [events] [rounds]

Two stand-in steps run as `imagerec dev` runs its steps (functions-framework children of this
process, through the shared step plumbing, so they log as a step does); a Broker routes each
posted event to the first, whose reply goes back through the Broker to the second: per event,
two deliveries and one reply forwarded. A separate process posts the events (its CPU is not
counted). Printed on stdout (the services log on stderr): CPU-ms of this process (the runner,
and the relay threads while there were any) per 100 posted events, the median of `rounds`
rounds, and the wall time.
"""

from __future__ import annotations

import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from textwrap import dedent

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workflows.dev import Child, free_port  # noqa: E402
from workflows.runner import Runner  # noqa: E402

STEP = """
from imagerec.events import new_event
from imagerec.steps import cloudevent_step


def first(event):
    return new_event("second", "/functions/first", {"n": 1}, subject=event.get("subject"))


def second(event):
    return None


first = cloudevent_step(first)
second = cloudevent_step(second)
"""

MANIFESTS = """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  namespace: bench
  annotations: {messaging.knative.dev/async-handler: "true"}  # as knative/ deploys it
spec: {delivery: {retry: 2}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-first, namespace: bench}
spec:
  broker: default
  filter: {attributes: {type: first}}
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: first}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-second, namespace: bench}
spec:
  broker: default
  filter: {attributes: {type: second}}
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: second}}
"""

PRODUCER = """
import sys, uuid, requests
url, count = sys.argv[1], int(sys.argv[2])
session = requests.Session()
for i in range(count):
    headers = {"ce-specversion": "1.0", "ce-id": uuid.uuid4().hex, "ce-source": "/bench",
               "ce-type": "first", "ce-subject": f"img-{i}", "Content-Type": "application/json"}
    assert session.post(url, data=b"{}", headers=headers, timeout=10).status_code == 202
"""


def log_as_dev_does() -> None:
    """The runner's log lines go where `imagerec dev` sends them (they are part of its cost)."""
    import workflows.dev as dev

    if hasattr(dev, "configure_logging"):
        dev.configure_logging()
    else:  # before JSON logs: the prefixing handler `imagerec dev` installed
        handler = dev._PrefixedLogHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        logging.getLogger().handlers[:] = [handler]
        logging.getLogger().setLevel(logging.INFO)


def main() -> None:
    log_as_dev_does()
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "bench_steps.py"
        source.write_text(dedent(STEP))
        (Path(folder) / "routing.yaml").write_text(MANIFESTS)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "IMAGEREC_DATA_DIR": folder,
            "THREADS": "4",
            "PYTHONUNBUFFERED": "1",
        }
        children = {}
        for name in ("first", "second"):
            port = free_port()
            argv = [sys.executable, "-m", "functions_framework", "--source", str(source)]
            argv += ["--target", name, "--host", "127.0.0.1", "--port", str(port)]
            children[name] = Child(name, argv, env, f"http://127.0.0.1:{port}")
        for child in children.values():
            child.start()
        for child in children.values():
            assert child.wait_ready(60), f"{child.name} did not start"
        runner = Runner.from_manifests(Path(folder), {n: c.url for n, c in children.items()})
        server = runner.serve("127.0.0.1", 0)
        try:
            post(server.broker_url, 50)  # warm up: connections, imports, caches
            runner.wait_idle(60)
            figures = []
            for _ in range(rounds):
                cpu, wall = time.process_time(), time.monotonic()
                post(server.broker_url, events)
                runner.wait_idle(120)
                figures.append(
                    ((time.process_time() - cpu) * 1000 * 100 / events, time.monotonic() - wall)
                )
        finally:
            server.stop()
            for child in children.values():
                child.signal_stop()
            for child in children.values():
                child.wait_stopped()
    cpu_ms = statistics.median(f[0] for f in figures)
    wall = statistics.median(f[1] for f in figures)
    print(
        f"runner process: {cpu_ms:.1f} CPU-ms per 100 events "
        f"(rounds: {', '.join(f'{f[0]:.1f}' for f in figures)}); "
        f"{events} events in {wall:.2f} s wall"
    )


def post(url: str, count: int) -> None:
    subprocess.run([sys.executable, "-c", PRODUCER, url, str(count)], check=True)


if __name__ == "__main__":
    main()
