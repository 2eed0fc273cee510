"""Request bodies at the web service: JSON routes take only a small, sane JSON object; an
upload takes at most MAX_FILES_PER_REQUEST files; an answer given before the body was read
keeps the connection usable or says `Connection: close`."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time

import pytest
import requests
from conftest import ROOT
from test_web_app import DOG, Account, count

from imagerec.models import Image
from web.bodies import MAX_FILES_PER_REQUEST, MAX_JSON_BYTES

pytest_plugins = ["test_web_app"]

DEEP = "[" * 20_000 + "]" * 20_000  # under the size cap


def _json_routes(ann: Account) -> list[tuple[str, str]]:
    album_id = ann.create_album("Trip")
    return [
        ("POST", "/api/session"),
        ("POST", "/api/users"),
        ("POST", "/api/albums"),
        ("PATCH", f"/api/albums/{album_id}"),
        ("POST", "/api/images/bulk"),
    ]


@pytest.mark.parametrize(
    "body, says",
    [
        (DEEP, "nested more than"),
        ('{"name": ' + "[" * 900 + "]" * 900 + "}", "nested more than"),
        ('{"username": "ann", "password": NaN, "name": NaN}', "NaN"),
        ('{"username": "ann", "password": 1e999, "name": 1e999}', "not finite"),
        ('{"username": "ann", "password": "x", "name": "x"', "not valid JSON"),
    ],
    ids=["deep-20000", "deep-900", "nan", "infinity", "truncated"],
)
def test_every_json_route_answers_bad_json_with_a_400(ann, body, says):
    for method, url in _json_routes(ann):
        response = ann.api(method, url, data=body, content_type="application/json")
        assert response.status_code == 400, (url, response.status_code)
        assert says in response.json["error"], (url, response.json)


def test_a_json_body_over_the_cap_is_413_with_a_sentence(ann):
    body = '{"name": "' + "x" * MAX_JSON_BYTES + '"}'
    for method, url in _json_routes(ann):
        response = ann.api(method, url, data=body, content_type="application/json")
        assert response.status_code == 413, url
        assert response.json["error"] == (
            f"The request is larger than the limit of {MAX_JSON_BYTES // 1024} KB."
        )


def test_the_largest_json_body_the_api_takes_is_under_the_cap(ann):
    ids = ["a" * 64] * 500  # a bulk request at its limit, of the longest ids
    body = {"action": "delete", "ids": ids}

    response = ann.api("POST", "/api/images/bulk", json=body)

    assert response.status_code == 200, response.json
    assert len(response.json["errors"]) == 1  # one distinct id, not this user's: 404


class _Endless(io.RawIOBase):
    """A request body that counts what is read of it."""

    def __init__(self) -> None:
        self.largest_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = len(buffer)
        buffer[:n] = b"[" * n
        self.largest_read = max(self.largest_read, n)
        return n


@pytest.mark.parametrize("url", ["/api/session", "/api/users"])
def test_a_200_mb_sign_in_body_is_refused_without_holding_it(ann, url):
    body = _Endless()
    response = ann.client.open(
        url,
        method="POST",
        headers={"X-CSRF-Token": ann.csrf, "Content-Type": "application/json"},
        environ_overrides={"wsgi.input": body, "CONTENT_LENGTH": str(200 * 1024 * 1024)},
    )
    assert response.status_code == 413
    # Read only to be thrown away (so the connection stays usable), a piece at a time.
    assert body.largest_read <= 64 * 1024


def test_an_upload_of_too_many_files_is_refused_and_stores_nothing(backend, ann):
    album_id = ann.create_album()
    files = [
        (io.BytesIO(DOG.read_bytes()), f"dog{i}.jpg") for i in range(MAX_FILES_PER_REQUEST + 1)
    ]

    response = ann.api(
        "POST",
        f"/api/albums/{album_id}/images",
        data={"file": files},
        content_type="multipart/form-data",
    )

    assert response.status_code == 413
    assert response.json["error"] == (
        f"Send at most {MAX_FILES_PER_REQUEST} files at once "
        f"({MAX_FILES_PER_REQUEST + 1} were sent)."
    )
    assert count(backend, Image) == 0


def test_the_upload_form_refuses_too_many_files_with_a_message(backend, ann):
    album_id = ann.create_album()
    files = [(io.BytesIO(b"x"), f"f{i}.jpg") for i in range(MAX_FILES_PER_REQUEST + 1)]

    response = ann.form(f"/albums/{album_id}/photos", {"file": files}, follow_redirects=True)

    assert f"Send at most {MAX_FILES_PER_REQUEST} files at once" in response.get_data(as_text=True)
    assert count(backend, Image) == 0


# --- an early answer on a kept-alive connection, against gunicorn as the dev stack runs it --


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory) -> str:
    data = tmp_path_factory.mktemp("gunicorn-data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "IMAGEREC_DATA_DIR": str(data),
        "IMAGEREC_DATABASE_URL": f"sqlite:///{data / 'imagerec.db'}",
        "IMAGEREC_BLOB_URL": f"file://{data / 'blobs'}",
    }
    from imagerec.db import upgrade

    upgrade(env["IMAGEREC_DATABASE_URL"])
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--threads",
        "8",
        "web:create_app()",
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                requests.get(f"{url}/healthz", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def _exchange(port: int, path: str, size: int) -> tuple[str, bytes]:
    """POST a body of `size` bytes on a fresh connection, then GET /healthz on the same one.
    Returns the first answer's head and whatever the second request got."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n"
        )
        s.sendall(head.encode())
        with contextlib.suppress(OSError):  # the server stopped reading: its answer says so
            s.sendall(b"x" * size)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
        first = answer.split(b"\r\n\r\n", 1)[0].decode()
        length = int(
            next(
                line.split(":")[1]
                for line in first.split("\r\n")
                if line.lower().startswith("content-length")
            )
        )
        rest = answer.split(b"\r\n\r\n", 1)[1]
        while len(rest) < length:
            rest += s.recv(65536)
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            second = s.recv(65536)
        except OSError:
            second = b""
        return first, second


@pytest.mark.parametrize("size", [10, 40_000, 5_000_000])
@pytest.mark.parametrize("path", ["/no-such-page", "/api/albums/1", "/api/session"])
def test_an_early_answer_keeps_the_connection_usable_or_closes_it(gunicorn, path, size):
    first, second = _exchange(gunicorn, path, size)
    assert first.split(" ")[1] in ("403", "404", "413"), first
    if "connection: close" in first.lower():
        return  # the client knows to open a new connection
    # gunicorn drops an application's Connection header, so the body must have been drained.
    assert second.startswith(b"HTTP/1.1 200"), (first, second[:100])
