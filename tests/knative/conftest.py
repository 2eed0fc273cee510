"""Fixtures of the real-Knative tests: one cluster per session (harness.py), the Serving
stand-in, and local HTTP sinks standing where the steps' pods would.

Missing components (tests/knative/build.sh not run, no root, no nft) skip these tests on a
developer's machine and fail them in CI (CI=true), like the PostgreSQL and Redis tests.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import VERSIONS, Cluster, HarnessError, missing_components  # noqa: E402
from sinks import Sink  # noqa: E402
from standin import ServingStandIn  # noqa: E402

# Only `make test-knative` (IMAGEREC_KNATIVE=1) collects these: a plain `pytest` of tests/ does
# not build or start a cluster.
if os.environ.get("IMAGEREC_KNATIVE") != "1":
    collect_ignore_glob = ["test_*.py"]


# What the cluster fixture started, printed after the results (pytest captures fixture output).
RAN_AGAINST: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    for line in RAN_AGAINST:
        terminalreporter.write_line(line)


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message + " (CI needs it: make test-setup builds it)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    missing = missing_components()
    if missing:
        _unavailable(f"Knative harness components missing: {', '.join(missing)}")
    if os.geteuid() != 0:
        _unavailable("the Knative harness needs root (network namespaces)")
    c = Cluster(tmp_path_factory.mktemp("knative"))
    try:
        c.start()
    except HarnessError as error:
        pytest.fail(f"{error}\nlogs: {c.logs}")
    kube = c.kubectl("version", "-o", "json").stdout
    server = json.loads(kube)["serverVersion"]["gitVersion"]
    RAN_AGAINST.append(
        f"knative harness: kube-apiserver {server}, "
        f"Knative Eventing {VERSIONS['EVENTING_VERSION']} (knative-v1.22.2), "
        f"Serving webhook {VERSIONS['SERVING_VERSION']} (knative-v1.23.0), "
        f"kn {VERSIONS['CLIENT_VERSION']} "
        f"(with knative.dev/client/pkg {VERSIONS['KN_PKG_VERSION']}); "
        f"logs in {c.logs}"
    )
    yield c
    c.stop()


@pytest.fixture(scope="session")
def standin(cluster: Cluster) -> Iterator[ServingStandIn]:
    s = ServingStandIn(cluster).start()
    yield s
    s.stop()


@pytest.fixture
def sink_factory(cluster: Cluster, standin: ServingStandIn) -> Iterator:
    """sink_factory(namespace, service, delay=0.0) -> Sink: a local HTTP server answering for a
    Knative Service, registered with the stand-in."""
    made: list[Sink] = []

    def make(namespace: str, service: str, **kw) -> Sink:
        sink = Sink(cluster.host_address(), **kw).start()
        standin.serve(namespace, service, sink.ip)
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.stop()
