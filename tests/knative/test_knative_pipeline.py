"""Issue 16, test 3: photos uploaded through the web go through the real Broker, Triggers,
Sequence and IMC dispatcher to the real steps (imagerec/serve.py, as `imagerec dev` starts
them), on PostgreSQL and Redis. Each step's address is a recording `Sink` in front of it, so a
test can make a step fail and see exactly what the dispatcher sent."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from harness import Cluster
from sinks import Sink
from test_knative_apply import KNATIVE_KINDS, ROOT, kustomization
from test_knative_delivery import deploy, render

from imagerec.db import get_engine, upgrade
from tests.conftest import IMAGES, MODEL, POSTGRES_URL, REDIS_URL, manifest
from web.client import ApiSession
from workflows.dev import Child, free_port, server_argv
from workflows.manifests import load_manifests

PHOTOS = 20


class Pipeline:
    def __init__(self, cluster: Cluster, standin, namespace: str, tmp: Path) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.children: list[Child] = []
        self.sinks: dict[str, Sink] = {}
        self.env = {
            **os.environ,
            "IMAGEREC_DATA_DIR": str(tmp),
            "IMAGEREC_DATABASE_URL": POSTGRES_URL,
            "IMAGEREC_BLOB_URL": REDIS_URL,
            "IMAGEREC_DETECTOR_MODEL": str(MODEL),
            "IMAGEREC_SECRET_KEY": uuid.uuid4().hex,
            "PYTHONUNBUFFERED": "1",
        }
        with get_engine(POSTGRES_URL).begin() as conn:
            conn.execute(sqlalchemy.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        upgrade(POSTGRES_URL)
        for name, step in load_manifests(ROOT / "knative").steps.items():
            port = free_port()
            argv = server_argv(
                *("--source", str(ROOT / "functions" / f"{step.function}.py")),
                *("--target", step.function, "--host", "127.0.0.1", "--port", str(port)),
            )
            child = Child(
                name,
                argv,
                {**self.env, "K_SERVICE": name, "THREADS": "4"},
                f"http://127.0.0.1:{port}",
            )
            child.start()
            self.children.append(child)
            sink = Sink(cluster.host_address(), upstream=child.url).start()
            standin.serve(namespace, name, sink.ip)
            self.sinks[name] = sink
        for child in self.children:
            assert child.wait_ready(180), f"{child.name} did not start"
        cluster.create_namespace(namespace)
        # Channels before the Sequence: main's render order races the Sequence controller
        # (test_knative_apply, test_knative_delivery); this test is about the data path.
        deploy(
            cluster,
            render(cluster, kustomization(tmp, "knative", namespace)),
            namespace,
            "channels-first",
        )
        cluster.wait_ready(namespace, KNATIVE_KINDS)
        # The web runs on this side of the bridge: the Broker's address, at the ingress's IP.
        broker = f"http://{cluster.pods['mt-broker-ingress'].ip}/{namespace}/default"
        port = free_port()
        web = Child(
            "web",
            server_argv(
                *("--app", "web:create_app()", "--threads", "8"),
                *("--host", "127.0.0.1", "--port", str(port)),
            ),
            {**self.env, "K_SINK": broker, "K_SERVICE": "web"},
            f"http://127.0.0.1:{port}",
        )
        web.start()
        self.children.append(web)
        assert web.wait_ready(60), "the web did not start"
        self.web = ApiSession(web.url)
        self.web.csrf = self.web.call(
            "POST",
            "/api/users",
            json={"username": f"u{uuid.uuid4().hex[:8]}", "password": "knative-harness"},
        )["csrfToken"]

    def upload(self, files: list[Path], album: str) -> list[str]:
        album_id = self.web.album_id(album)
        ids = []
        for path in files:
            result = self.web.upload_file(album_id, path, None)
            assert result.outcome == "uploaded", result
            ids.append(result.image["id"])
        return ids

    def stop(self) -> None:
        for child in self.children:
            child.signal_stop()
        for child in self.children:
            child.wait_stopped()
        for sink in self.sinks.values():
            sink.stop()


def supported_photos() -> list[Path]:
    m = manifest()
    return [
        IMAGES / e["file"] for k in ("exif", "objects") for e in m[k] if e["supported_per_design"]
    ]


@pytest.fixture(scope="module")
def pipeline(cluster: Cluster, standin, tmp_path_factory) -> Iterator[Pipeline]:
    p = Pipeline(cluster, standin, "pipeline", tmp_path_factory.mktemp("pipeline"))
    yield p
    p.stop()


def test_photos_uploaded_through_the_web_reach_done(pipeline: Pipeline) -> None:
    ids = pipeline.upload(supported_photos()[:PHOTOS], "twenty")
    images = pipeline.web.wait_for(ids, timeout=600)
    states = {i: images[i]["status"] for i in ids}
    assert set(states.values()) == {"done"}, states
    assert len(pipeline.sinks["make-thumbnail"].received) >= PHOTOS


def test_a_step_answering_500_twice_is_retried_with_the_backoff(pipeline: Pipeline) -> None:
    sink = pipeline.sinks["make-thumbnail"]
    before = len(sink.received)
    sink.statuses[:] = [500, 500]
    [image_id] = pipeline.upload(supported_photos()[PHOTOS : PHOTOS + 1], "flaky")
    image = pipeline.web.wait_for([image_id], timeout=120)[image_id]
    assert image["status"] == "done", image
    attempts = sink.received[before : before + 3]
    assert [a.status for a in attempts] == [500, 500, 0]
    gaps = [b.at - a.at for a, b in zip(attempts, attempts[1:], strict=False)]
    # backoffDelay PT1S, exponential: 1 s then 2 s (Knative adds no jitter to these).
    assert 0.9 <= gaps[0] <= 1.9 and 1.9 <= gaps[1] <= 3.5, gaps


def test_an_always_failing_step_dead_letters_with_knative_error_extensions(
    pipeline: Pipeline,
) -> None:
    sink = pipeline.sinks["detect-objects"]
    failure = pipeline.sinks["record-failure"]
    before, dead_before = len(sink.received), len(failure.received)
    sink.always = 500
    try:
        [image_id] = pipeline.upload(supported_photos()[PHOTOS + 1 : PHOTOS + 2], "broken")
        image = pipeline.web.wait_for([image_id], timeout=180)[image_id]
    finally:
        sink.always = None
    assert image["status"] == "failed", image
    assert len(sink.received) - before == 6  # the first attempt and retry: 5
    dead = failure.received[dead_before:]
    assert dead, "record-failure got nothing"
    headers = dead[-1].headers
    assert headers.get("ce-knativeerrorcode") == "500", headers
    assert "detect-objects" in headers.get("ce-knativeerrordest", ""), headers
    assert image.get("failure") or image.get("reason"), image
    retried = pipeline.web.call("POST", f"/api/images/{image_id}/retry")["image"]
    assert retried["status"] != "failed"
    image = pipeline.web.wait_for([image_id], timeout=120)[image_id]
    assert image["status"] == "done", image
