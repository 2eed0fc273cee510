"""Helpers for driving workflow steps over HTTP in tests: owners, originals, events, replies.

A step is served exactly as `functions-framework --source functions/<module>.py --target <name>`
serves it (`step_app`), and spoken to with real CloudEvents in binary or structured mode.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask
import functions_framework
import requests
from cloudevents.http import CloudEvent
from conftest import MODEL
from sqlalchemy import select
from werkzeug.test import TestResponse

from imagerec.blobstore import original_key
from imagerec.config import load_settings
from imagerec.events import UPLOADED, encode, new_event, parse_event
from imagerec.formats import extension_for
from imagerec.models import Album, Detection, Image, User
from workflows.dev import DevStack, free_port

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ROOT / "functions"


def step_app(module: str, target: str | None = None) -> flask.Flask:
    """The Flask app functions-framework builds for functions/<module>.py (target: same name)."""
    return functions_framework.create_app(
        target=target or module, source=str(FUNCTIONS / f"{module}.py")
    )


def make_owner(backend: Any, username: str | None = None) -> tuple[int, int]:
    """A user with one album, as rows in `backend`'s database: (user id, album id)."""
    with backend.session() as session:
        user = User(username=username or f"user-{uuid.uuid4().hex[:12]}", password_hash="x")
        album = Album(owner=user, name="Holiday")
        session.add_all([user, album])
        session.commit()
        return user.id, album.id


def dump(backend: Any, image_id: str) -> dict[str, Any]:
    """Every column of the image row, its detection rows under "detections" and its labels."""
    with backend.session() as session:
        image = session.get(Image, image_id)
        assert image is not None
        row = {c.key: getattr(image, c.key) for c in Image.__table__.columns}
        detections = session.scalars(
            select(Detection).where(Detection.image_id == image_id).order_by(Detection.id)
        )
        row["detections"] = [
            {c.key: getattr(d, c.key) for c in Detection.__table__.columns} for d in detections
        ]
        row["labels"] = image.labels()
        return row


def put_original(
    backend: Any,
    path: Path,
    user_id: int,
    album_id: int,
    image_id: str | None = None,
    content_type: str | None = "image/jpeg",
) -> dict[str, Any]:
    """Store the file at `path` as an original, as the web service would, and return the
    data of the dev.imagerec.image.uploaded event that announces it (no image row is made:
    extract-metadata registers it, as for an outside emitter)."""
    content = path.read_bytes()
    image_id = image_id or uuid.uuid4().hex
    key = original_key(user_id, album_id, image_id, extension_for(content[:32]))
    backend.blobs().put(key, content)
    return {
        "imageId": image_id,
        "userId": user_id,
        "albumId": album_id,
        "blobKey": key,
        "fileName": path.name,
        "contentType": content_type,
        "size": len(content),
    }


def event_for(
    data: dict[str, Any], event_type: str = UPLOADED, source: str = "/tests"
) -> CloudEvent:
    """A CloudEvent of `event_type` carrying `data`, its subject the image id."""
    return new_event(event_type, source, data, subject=data.get("imageId"))


def post_event(
    client: flask.testing.FlaskClient, event: CloudEvent, structured: bool = False
) -> TestResponse:
    """POST `event` to a step as Knative delivers it (binary mode unless `structured`)."""
    headers, body = encode(event, structured=structured)
    return client.post("/", data=body, headers=headers)


def reply_event(response: TestResponse) -> CloudEvent:
    """The CloudEvent a step replied with; fails loudly when the reply is not one."""
    assert response.status_code == 200, (response.status_code, response.get_data(as_text=True))
    return parse_event(dict(response.headers), response.get_data())


def reply_data(response: TestResponse) -> dict[str, Any]:
    """The JSON data of a step's reply event."""
    data = reply_event(response).data
    assert isinstance(data, dict), data
    return data


@contextlib.contextmanager
def running_step(module: str, env: dict[str, str], timeout: float = 60.0) -> Iterator[str]:
    """Serve functions/<module>.py with the command its container runs (imagerec/serve.py) on
    a free port; yields the URL once the step answers its readiness probe."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        *(sys.executable, "-m", "imagerec.serve"),
        *("--source", f"functions/{module}.py", "--target", module),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{module} exited: {process.stderr.read().decode()[-2000:]}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass  # still importing (TensorFlow, under load): ask again until the deadline
            if time.monotonic() > deadline:
                raise TimeoutError(f"{module} did not become ready on port {port}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stderr.close()


def start_dev_stack(
    data_dir: Path,
    monkeypatch: Any,
    ready_timeout: float = 120.0,
    log_fd: int | None = None,
    **env: str,
) -> DevStack:
    """`imagerec dev`'s whole stack on free ports, its data in `data_dir`, the offline detector.

    Its reconciler checks every second but finds nothing stuck for an hour, so a test sees
    what the runner itself delivers; a test of the reconciler sets IMAGEREC_STUCK_AFTER_SECONDS.
    With `log_fd`, every part writes its log lines there (a file the test reads back).
    """
    settings_env = {
        "IMAGEREC_DATA_DIR": str(data_dir),
        "IMAGEREC_DETECTOR_MODEL": str(MODEL),
        "IMAGEREC_STUCK_AFTER_SECONDS": "3600",
        **env,
    }
    for key, value in settings_env.items():
        monkeypatch.setenv(key, value)
    stack = DevStack(load_settings(), port=free_port(), reconcile_interval=1.0, log_fd=log_fd)
    return stack.start(ready_timeout)
