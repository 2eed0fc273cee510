"""End to end on `imagerec dev`'s stack: every step as its own HTTP service, the local runner
routing by knative/, the reconciler; events posted as an outside CloudEvent emitter would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from uuid import uuid4

import pytest
import redis
import requests
from conftest import IMAGES, MODEL, manifest
from pipeline import start_dev_stack

from imagerec.blobstore import original_key
from imagerec.cpus import request_threads, tensorflow_threads, usable_cpus
from imagerec.db import session_factory
from imagerec.events import UPLOADED, encode, new_event
from imagerec.formats import extension_for
from imagerec.images import register_upload
from imagerec.models import Album, Image, Status, User
from web.client import ApiSession
from workflows.dev import DevStack, free_port
from workflows.manifests import load_manifests

pytestmark = pytest.mark.slow
FINAL = {Status.DONE, Status.REJECTED, Status.FAILED}


def expected_outcomes() -> dict[str, str]:
    m = manifest()
    outcome = {}
    for entry in m["exif"] + m["objects"]:
        outcome[entry["file"]] = Status.DONE if entry["supported_per_design"] else Status.REJECTED
    for entry in m["bad"]:
        outcome[entry["file"]] = (
            Status.DONE if entry["file"] == "bad/jpeg_named.png" else (Status.REJECTED)
        )
    return outcome


class Emitter:
    """An outside system: puts the bytes in the blob store, then posts the uploaded event."""

    def __init__(self, stack: DevStack) -> None:
        self.stack = stack
        self.sessions = session_factory(stack.settings.database_url)
        from imagerec.blobstore import open_blob_store

        self.blobs = open_blob_store(stack.settings.blob_url)
        with self.sessions() as s:
            user = User(username=f"emitter-{uuid4().hex[:6]}", password_hash="x")
            s.add(user)
            s.commit()
            self.user_id = user.id
        self.album_id = self.new_album("inbox")

    def new_album(self, name: str) -> int:
        with self.sessions() as s:
            album = Album(user_id=self.user_id, name=name)
            s.add(album)
            s.commit()
            return album.id

    def post(self, path: Path, web_row: bool = False, send: bool = True) -> str:
        """Store the original and announce it; with `web_row`, first make the image row as the
        web service does before it sends (an outside emitter makes none); without `send`, the
        announcement is lost on its way (the broker was down)."""
        data = path.read_bytes()
        image_id = uuid4().hex
        key = original_key(self.user_id, self.album_id, image_id, extension_for(data[:16]))
        self.blobs.put(key, data)
        uploaded = {
            "imageId": image_id,
            "userId": self.user_id,
            "albumId": self.album_id,
            "blobKey": key,
            "fileName": path.name,
            "contentType": None,
            "size": len(data),
        }
        if web_row:
            with self.sessions() as s:
                register_upload(s, uploaded, self.blobs)
                s.commit()
        if not send:
            return image_id
        event = new_event(UPLOADED, "https://emitter.example/camera", uploaded, subject=image_id)
        headers, body = encode(event, structured=True)
        response = requests.post(
            self.stack.server.broker_url, data=body, headers=headers, timeout=10
        )
        assert response.status_code == 202, response.text
        return image_id

    def wait_final(self, ids: list[str], timeout: float) -> dict[str, Image]:
        deadline = time.monotonic() + timeout
        while True:
            with self.sessions() as s:
                rows = {i: s.get(Image, i) for i in ids}
                for row in rows.values():
                    if row is not None:
                        _ = row.detections
            if all(r is not None and r.status in FINAL for r in rows.values()):
                return rows
            if time.monotonic() > deadline:
                states = {i: r.status if r else None for i, r in rows.items()}
                pytest.fail(f"not finished in {timeout}s: {states}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    stack = start_dev_stack(tmp_path_factory.mktemp("dev"), monkeypatch)
    yield stack
    stack.stop()
    monkeypatch.undo()


def test_every_test_image_reaches_its_outcome(stack):
    emitter = Emitter(stack)
    outcomes = expected_outcomes()
    ids = {}
    for folder in ("exif", "objects", "bad"):
        # bad/jpeg_named.png has the same bytes as a photo in exif/: one album each, no duplicate.
        emitter.album_id = emitter.new_album(folder)
        ids.update({emitter.post(IMAGES / n): n for n in outcomes if n.startswith(folder)})
    rows = emitter.wait_final(list(ids), timeout=240)
    wrong = {ids[i]: (r.status, r.reason) for i, r in rows.items() if r.status != outcomes[ids[i]]}
    assert not wrong
    for row in rows.values():
        if row.status == Status.REJECTED:
            assert row.reason and len(row.reason) > 10
        else:
            assert row.width and row.height and row.format and row.thumbnail_key
            assert row.content_hash and row.model
    dog = next(r for i, r in rows.items() if ids[i] == "objects/dog.jpg")
    assert {"Dog", "Bicycle"} <= {d.label for d in dog.detections}


def test_a_killed_step_loses_nothing(stack):
    emitter = Emitter(stack)
    names = ["objects/dog.jpg", "objects/eagle.jpg", "exif/canon_40d.jpg"]
    child = stack.children["make-thumbnail"]
    child.process.send_signal(signal.SIGKILL)
    ids = [emitter.post(IMAGES / n) for n in names]
    rows = emitter.wait_final(ids, timeout=120)
    assert {r.status for r in rows.values()} == {Status.DONE}
    assert child.restarts >= 1


def test_unknown_album_is_refused_and_nothing_is_stored(stack):
    emitter = Emitter(stack)
    emitter.album_id = 999_999
    image_id = emitter.post(IMAGES / "objects/dog.jpg")
    time.sleep(3)
    with emitter.sessions() as s:
        assert s.get(Image, image_id) is None


def test_a_permanently_failing_step_ends_failed(tmp_path, monkeypatch):
    stack = start_dev_stack(
        tmp_path,
        monkeypatch,
        ready_timeout=5,  # the detector never gets ready: the stack goes on without it
        IMAGEREC_DETECTOR_MODEL=str(tmp_path / "no-such-model"),
    )
    try:
        emitter = Emitter(stack)
        image_id = emitter.post(IMAGES / "objects/eagle.jpg")
        row = emitter.wait_final([image_id], timeout=180)[image_id]
        assert row.status == Status.FAILED
        assert "503" in row.reason and "cannot be loaded" in row.reason
    finally:
        stack.stop()


def test_a_restarted_runner_is_caught_up_by_the_reconciler(tmp_path, monkeypatch):
    stack = start_dev_stack(tmp_path, monkeypatch, IMAGEREC_STUCK_AFTER_SECONDS="4")
    try:
        emitter = Emitter(stack)
        # Rows first, as the web service makes them: the reconciler knows only images with a
        # row (an outside emitter's event lost before extract-metadata is the emitter's to send).
        ids = [
            emitter.post(IMAGES / name, web_row=True)
            for name in ("objects/bus.jpg", "objects/horses.jpg")
        ]
        stack.restart_runner()  # whatever it was delivering is gone
        ids.append(emitter.post(IMAGES / "objects/eagle.jpg", web_row=True, send=False))
        rows = emitter.wait_final(ids, timeout=120)
        assert {r.status for r in rows.values()} == {Status.DONE}
    finally:
        stack.stop()


def test_the_stack_runs_on_postgresql_and_redis(real_backend, tmp_path, monkeypatch):
    stack = start_dev_stack(
        tmp_path,
        monkeypatch,
        IMAGEREC_DATABASE_URL=real_backend.database_url,
        IMAGEREC_BLOB_URL=real_backend.blob_url,
    )
    try:
        emitter = Emitter(stack)
        names = ["objects/dog.jpg", "exif/iphone11_gps.heic", "bad/truncated.jpg"]
        ids = {emitter.post(IMAGES / name): name for name in names}
        rows = emitter.wait_final(list(ids), timeout=120)
    finally:
        stack.stop()

    outcome = {ids[image_id]: row.status for image_id, row in rows.items()}
    assert outcome == {
        "objects/dog.jpg": Status.DONE,
        "exif/iphone11_gps.heic": Status.DONE,
        "bad/truncated.jpg": Status.REJECTED,
    }
    dog = next(row for image_id, row in rows.items() if ids[image_id] == "objects/dog.jpg")
    assert "Dog" in {d.label for d in dog.detections}
    store = redis.Redis.from_url(real_backend.blob_url)  # plain strings, as design.md fixes
    assert store.get(dog.blob_key) == (IMAGES / "objects/dog.jpg").read_bytes()
    assert store.get(dog.thumbnail_key).startswith(b"\xff\xd8\xff")


def test_every_service_logs_json_lines_and_one_photo_is_one_trace(tmp_path, monkeypatch):
    log_path = tmp_path / "stack.log"
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    # Long enough that the uploaded photo is done before the reconciler would touch it.
    stack = start_dev_stack(
        tmp_path / "data", monkeypatch, log_fd=log_fd, IMAGEREC_STUCK_AFTER_SECONDS="30"
    )
    try:
        web = ApiSession(stack.web_url)
        user = {"username": f"tracer-{uuid4().hex[:6]}", "password": "long enough 1"}
        web.csrf = web.call("POST", "/api/users", json=user)["csrfToken"]
        upload = web.upload_file(web.album_id("trip"), IMAGES / "objects/dog.jpg", None)
        assert upload.outcome == "uploaded", upload.message
        uploaded = upload.image["id"]
        assert web.wait_for([uploaded], poll=0.5, timeout=120)[uploaded]["status"] == "done"
        # And a photo whose event was lost: the reconciler sends it, in a trace of its own.
        emitter = Emitter(stack)
        stuck = emitter.post(IMAGES / "objects/eagle.jpg", web_row=True, send=False)
        assert emitter.wait_final([stuck], timeout=120)[stuck].status == Status.DONE
    finally:
        stack.stop()
        os.close(log_fd)

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    for line in lines:
        assert {"time", "level", "service", "message"} <= set(line), line

    def about(image_id):
        return [line for line in lines if line.get("imageId") == image_id]

    # Every step the manifests route an event to (not the dead-letter sink).
    steps = {name for names in load_manifests(stack.manifests).routes().values() for name in names}
    assert {line["service"] for line in about(uploaded)} >= {"web", "runner"} | steps
    assert all(line.get("ceId") for line in about(uploaded))
    assert len({line.get("traceId") for line in about(uploaded)}) == 1, about(uploaded)
    assert {line["service"] for line in about(stuck)} >= {"reconciler", "runner"} | steps
    assert len({line.get("traceId") for line in about(stuck)}) == 1, about(stuck)
    assert about(stuck)[0]["traceId"] != about(uploaded)[0]["traceId"]


def test_the_detector_sizes_its_threads_from_the_cpu_limit(stack):
    """TensorFlow's pools and the request threads follow the container's CPU limit (cgroup),
    not the host's core count: measured in the running detector, not taken from its config."""
    answer = requests.get(stack.children["detect-objects"].url, timeout=10)

    assert answer.status_code == 200
    state = answer.json()
    assert state["usableCpus"] == usable_cpus()
    assert (state["intraOpThreads"], state["interOpThreads"]) == tensorflow_threads()
    assert stack.children["detect-objects"].env["THREADS"] == str(usable_cpus())
    assert stack.children["make-thumbnail"].env["THREADS"] == str(request_threads())


def _start_imagerec_dev(data_dir: Path, port: int) -> subprocess.Popen[str]:
    """`imagerec dev` as a person runs it (default thresholds: 3 h 20 min for processing)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEREC_", "K_SINK"))}
    env.update(IMAGEREC_DATA_DIR=str(data_dir), IMAGEREC_DETECTOR_MODEL=str(MODEL))
    command = "import sys; from workflows.cli import main; sys.exit(main())"
    process = subprocess.Popen(
        [sys.executable, "-c", command, "dev", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "album page at" in line:
            break
    else:
        pytest.fail(f"imagerec dev ended with {process.wait()}")
    # Keep reading its output, so its pipe never fills and blocks it.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    return process


def test_a_killed_runner_strands_nothing_it_accepted(tmp_path):
    """kill -9 of `imagerec dev` mid-batch (its runner held every event in flight, in memory),
    then a restart: every accepted photo is done within two minutes of the restart."""
    data_dir = tmp_path / "data"
    names = [e["file"] for e in manifest()["objects"] + manifest()["exif"]]
    outcomes = expected_outcomes()
    names = [n for n in names if outcomes[n] == Status.DONE][:12]
    processes = [_start_imagerec_dev(data_dir, port := free_port())]
    try:
        web = ApiSession(f"http://127.0.0.1:{port}/")
        user = {"username": "kill-nine", "password": "long enough 1"}
        web.csrf = web.call("POST", "/api/users", json=user)["csrfToken"]
        album = web.album_id("batch")
        ids = []
        for name in names:
            upload = web.upload_file(album, IMAGES / name, None)
            assert upload.outcome == "uploaded", upload.message
            ids.append(upload.image["id"])
        sessions = session_factory(f"sqlite:///{data_dir / 'imagerec.db'}")

        def statuses() -> dict[str, str]:
            with sessions() as s:
                return {i: s.get(Image, i).status for i in ids}

        deadline = time.monotonic() + 120
        while Status.DONE not in statuses().values() and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(processes[0].pid, signal.SIGKILL)  # its children get SIGTERM (PDEATHSIG)
        processes[0].wait(timeout=10)
        in_flight = [i for i, s in statuses().items() if s in (Status.UPLOADED, Status.PROCESSING)]
        assert in_flight, "the batch was done before the kill: nothing was tested"

        restarted = time.monotonic()
        processes.append(_start_imagerec_dev(data_dir, free_port()))
        while time.monotonic() < restarted + 120:
            if set(statuses().values()) == {Status.DONE}:
                break
            time.sleep(0.5)
        assert set(statuses().values()) == {Status.DONE}, (
            f"{len(in_flight)} in flight at the kill; not done 2 min after the restart: "
            f"{ {i: s for i, s in statuses().items() if s != Status.DONE} }"
        )
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
