"""Request bodies at the web service: JSON routes take only a small, sane JSON object, forms a
small form; an upload takes at most MAX_FILES_PER_REQUEST files, and only from a signed-in
session with its token; what a route cannot take is refused unread, by the server before the
body is sent; an early answer keeps the connection usable or says `Connection: close`."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import time

import pytest
import requests
from conftest import ROOT
from test_web_app import DOG, Account, count

from imagerec.models import Image
from web.bodies import MAX_FILES_PER_REQUEST, MAX_JSON_BYTES, UPLOAD_NEEDS_SESSION
from workflows.dev import server_argv

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
            f"The request is larger than the {MAX_JSON_BYTES // 1024} KB limit for JSON bodies."
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
        self.total_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = len(buffer)
        buffer[:n] = b"[" * n
        self.largest_read = max(self.largest_read, n)
        self.total_read += n
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
    assert body.total_read == 0


MULTIPART = "multipart/form-data; boundary=b"


@pytest.mark.parametrize("url", ["/auth/signin", "/auth/signup", "/api/session"])
def test_a_300_mb_anonymous_form_is_refused_unread(app, url):
    body = _Endless()
    response = app.test_client().open(
        url,
        method="POST",
        headers={"Content-Type": MULTIPART},
        environ_overrides={"wsgi.input": body, "CONTENT_LENGTH": str(300 * 1024 * 1024)},
    )
    # No token (a multipart body is not parsed to look for one): 403, before the form's cap.
    assert response.status_code == 403
    assert body.total_read == 0


def test_an_upload_with_its_token_only_in_the_body_is_403_unparsed(ann):
    album_id = ann.create_album()
    body = _Endless()
    response = ann.client.open(
        f"/api/albums/{album_id}/images",
        method="POST",
        headers={"Content-Type": MULTIPART},  # no X-CSRF-Token; a form field is not looked for
        environ_overrides={"wsgi.input": body, "CONTENT_LENGTH": str(300 * 1024 * 1024)},
    )
    assert response.status_code == 403
    assert body.total_read == 0


def test_an_upload_of_1001_parts_is_told_it_has_too_many_files(backend, ann):
    album_id = ann.create_album()
    files = [(io.BytesIO(b"x"), f"f{i}.jpg") for i in range(1001)]

    response = ann.api(
        "POST", f"/api/albums/{album_id}/images", data={"file": files},
        content_type="multipart/form-data",
    )  # fmt: skip

    assert response.status_code == 413
    assert response.json["error"].startswith(f"Send at most {MAX_FILES_PER_REQUEST} files")
    assert count(backend, Image) == 0


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


# --- against the server as the dev stack runs it (imagerec/serve.py) -------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> int:
    data = tmp_path_factory.mktemp("served-data")
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
    command = server_argv(
        *("--app", "web:create_app()", "--threads", "8"),
        *("--port", str(port), "--host", "127.0.0.1"),
    )
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
def test_an_early_answer_keeps_the_connection_usable_or_closes_it(served, path, size):
    first, second = _exchange(served, path, size)
    assert first.split(" ")[1] in ("403", "404", "413"), first
    if "connection: close" in first.lower():
        return  # the client knows to open a new connection
    assert second.startswith(b"HTTP/1.1 200"), (first, second[:100])


def _head_only(port: int, head: str) -> tuple[str, str]:
    """Send a request's headers and none of its body: the status line and body answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head.encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    status, _, body = answer.decode().partition("\r\n\r\n")
    return status.split("\r\n")[0], body


@pytest.mark.parametrize("url", ["/auth/signin", "/api/session", "/api/albums/1/images"])
def test_the_server_refuses_a_300_mb_anonymous_body_before_it_is_sent(served, url):
    head = (
        f"POST {url} HTTP/1.1\r\nHost: x\r\nContent-Type: {MULTIPART}\r\n"
        f"Content-Length: {300 * 1024 * 1024}\r\n\r\n"
    )
    status, body = _head_only(served, head)  # answered at once, the connection closed
    if url.endswith("/images"):
        assert status.startswith("HTTP/1.1 403"), status
        assert json.loads(body)["error"] == UPLOAD_NEEDS_SESSION
    else:
        assert status.startswith("HTTP/1.1 413"), status
        assert "larger than the 48 KB limit for forms" in body


def test_the_server_admits_a_big_upload_from_a_session_with_its_token(served):
    with requests.Session() as user:
        url = f"http://127.0.0.1:{served}"
        token = user.get(f"{url}/api/session").json()["csrfToken"]
        user.post(f"{url}/api/users", json={"username": "big", "password": "a long passphrase"},
                  headers={"X-CSRF-Token": token})  # fmt: skip
        token = user.get(f"{url}/api/session").json()["csrfToken"]
        cookie = "; ".join(f"{k}={v}" for k, v in user.cookies.items())
    # Headers only: past admission, the server waits for the body instead of answering.
    with socket.create_connection(("127.0.0.1", served), timeout=2) as s:
        s.sendall(
            f"POST /api/albums/1/images HTTP/1.1\r\nHost: x\r\nContent-Type: {MULTIPART}\r\n"
            f"Cookie: {cookie}\r\nX-CSRF-Token: {token}\r\n"
            f"Content-Length: {100 * 1024 * 1024}\r\n\r\n".encode()
        )
        with pytest.raises(TimeoutError):
            s.recv(1)


def test_the_server_holds_a_chunked_body_to_the_routes_limit(served):
    """A chunked body declares no length: it is cut off once past the route's limit."""
    with socket.create_connection(("127.0.0.1", served), timeout=10) as s:
        s.sendall(
            b"POST /auth/signin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (16 * 1024, b"a" * 16 * 1024)
        answer = b""
        with contextlib.suppress(OSError):  # refused and closed while we were still sending
            for _ in range(64):  # 1 MiB at most, far past 48 KB
                s.sendall(chunk)
        with contextlib.suppress(OSError):
            while piece := s.recv(65536):
                answer += piece
    status, _, body = answer.decode().partition("\r\n\r\n")
    assert status.startswith("HTTP/1.1 413"), answer[:200]
    assert "larger than the 48 KB limit for forms" in body
