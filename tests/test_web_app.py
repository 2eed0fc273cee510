"""The web app as a whole (headers, cookies, errors), and the fixtures the other
tests/test_web_*.py files import: an app per backend and signed-in accounts on it."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import IMAGES, Backend
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from imagerec.models import Detection, Image, Status, User
from web import create_app

PASSWORD = "correct horse battery"
DOG = IMAGES / "objects" / "dog.jpg"
BUS = IMAGES / "objects" / "bus.jpg"
HOSTILE = "<script>alert('x')</script>"


def make_app(backend: Backend, **config: Any) -> Flask:
    return create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test secret",
            "DATABASE_URL": backend.database_url,
            "BLOB_URL": backend.blob_url,
            "SINK": None,
            **config,
        }
    )


@pytest.fixture
def app(backend: Backend) -> Iterator[Flask]:
    app = make_app(backend)
    yield app
    app.extensions["imagerec_events"].join()


@dataclass
class Account:
    """A test client signed in as one user, sending its CSRF token like the page's script."""

    client: FlaskClient
    username: str
    csrf: str = ""
    id: int = 0

    def refresh_csrf(self) -> str:
        self.csrf = self.client.get("/api/session").json["csrfToken"]
        return self.csrf

    def get(self, url: str, **kw):
        return self.client.get(url, **kw)

    def api(self, method: str, url: str, **kw):
        headers = {"X-CSRF-Token": self.csrf, **kw.pop("headers", {})}
        return self.client.open(url, method=method, headers=headers, **kw)

    def form(self, url: str, data: dict | None = None, **kw):
        """A browser form post, no header: the token as a form field, or for an upload
        (files: multipart) in the query, where the upload form's action carries it."""
        data = dict(data or {})
        if any(isinstance(value, list | tuple) for value in data.values()):
            url += ("&" if "?" in url else "?") + f"csrf_token={self.csrf}"
        else:
            data["csrf_token"] = self.csrf
        return self.client.post(url, data=data, **kw)

    def create_album(self, name: str = "Holiday") -> int:
        response = self.api("POST", "/api/albums", json={"name": name})
        assert response.status_code == 201, response.json
        return response.json["album"]["id"]

    def upload(self, album_id: int, *files: Path | tuple[bytes, str]):
        parts = []
        for f in files:
            data, name = (f.read_bytes(), f.name) if isinstance(f, Path) else f
            parts.append((_stream(data), name))
        return self.api("POST", f"/api/albums/{album_id}/images", data={"file": parts})

    def upload_one(self, album_id: int, file: Path | tuple[bytes, str]) -> dict:
        response = self.upload(album_id, file)
        assert response.status_code == 201, response.json
        return response.json["images"][0]


def _stream(data: bytes):
    import io

    return io.BytesIO(data)


def sign_up(app: Flask, username: str) -> Account:
    account = Account(app.test_client(), username)
    account.refresh_csrf()
    response = account.api("POST", "/api/users", json={"username": username, "password": PASSWORD})
    assert response.status_code == 201, response.json
    account.csrf = response.json["csrfToken"]
    account.id = response.json["user"]["id"]
    return account


@pytest.fixture
def accounts(app: Flask) -> Callable[[str], Account]:
    return lambda username: sign_up(app, username)


@pytest.fixture
def ann(accounts) -> Account:
    return accounts("ann")


@pytest.fixture
def bob(accounts) -> Account:
    return accounts("bob")


def page_csrf(html: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


@dataclass
class Recorder:
    """A tiny real HTTP server standing in for the Broker: it records every POST."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    hold: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def broker() -> Iterator[Recorder]:
    recorder = Recorder("")
    recorder.hold.set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            recorder.hold.wait(10)
            recorder.requests.append({"headers": dict(self.headers), "body": body})
            recorder.arrived.set()
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recorder.url = f"http://127.0.0.1:{server.server_port}/ns/default"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield recorder
    recorder.hold.set()
    server.shutdown()
    server.server_close()


def set_done(
    backend: Backend,
    image_id: str,
    detections: list[tuple[str, float, list[float]]] = (),
    **columns: Any,
) -> None:
    """What store-results writes when the pipeline finishes (simulated, for page rendering)."""
    with backend.session() as db:
        image = db.get(Image, image_id)
        image.status = columns.pop("status", Status.DONE)
        for name, value in columns.items():
            setattr(image, name, value)
        for label, score, (ymin, xmin, ymax, xmax) in detections:
            db.add(
                Detection(
                    image_id=image_id,
                    label=label,
                    score=score,
                    box_ymin=ymin,
                    box_xmin=xmin,
                    box_ymax=ymax,
                    box_xmax=xmax,
                )
            )
        db.commit()


def count(backend: Backend, model) -> int:
    with backend.session() as db:
        return db.scalar(select(func.count()).select_from(model))


# --- the app as a whole ----------------------------------------------------------------------


def test_every_response_has_csp_and_nosniff(app, ann):
    for response in (
        app.test_client().get("/auth/signin"),
        ann.get("/"),
        ann.get("/api/albums"),
        ann.get("/api/nothing-here"),
        app.test_client().get("/static/album.js"),
    ):
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "img-src 'self' data:" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_pages_have_no_inline_script(app, ann):
    album_id = ann.create_album()
    image = ann.upload_one(album_id, DOG)
    for url in ("/", f"/albums/{album_id}", f"/photos/{image['id']}", "/auth/signin"):
        html = (ann.get(url) if url != "/auth/signin" else app.test_client().get(url)).text
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
        assert scripts, url
        # Data blocks (type="application/json") are not run; every other script is a file.
        code = [(a, b) for a, b in scripts if 'type="application/json"' not in a]
        assert all('src="/static/' in attrs and not body.strip() for attrs, body in code), url
        assert all("</" not in body for _, body in scripts), url  # nothing ends a block early
        assert not re.search(r"\son[a-z]+=", html), url
        assert "style=" not in html, url


def test_session_cookie_is_httponly_and_lax(app):
    client = app.test_client()
    response = client.get("/api/session")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie


def test_session_cookie_is_secure_behind_https_proxy(app):
    response = app.test_client().get("/api/session", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in response.headers["Set-Cookie"]


def test_unknown_api_path_is_json_404(ann):
    response = ann.get("/api/no/such/thing")
    assert response.status_code == 404
    assert response.is_json and response.json["error"]


def test_unknown_page_is_html_404(ann):
    response = ann.get("/no/such/page")
    assert response.status_code == 404
    assert "text/html" in response.content_type


def test_missing_static_file_is_a_plain_404(app):
    assert app.test_client().get("/static/nothing.js").status_code == 404


def test_healthz(app):
    assert app.test_client().get("/healthz").json == {"status": "ok"}


def test_password_is_stored_hashed(backend, ann):
    with backend.session() as db:
        user = db.scalar(select(User).where(User.username == "ann"))
    assert PASSWORD not in user.password_hash
    assert user.password_hash.startswith(("scrypt:", "pbkdf2:"))


def test_app_does_not_migrate_at_creation(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    create_app({"TESTING": True, "SECRET_KEY": "x", "DATABASE_URL": url, "BLOB_URL": str(tmp_path)})
    assert not (tmp_path / "fresh.db").exists()


def test_a_request_over_the_whole_limit_is_413_before_it_is_read(backend):
    app = make_app(backend, MAX_UPLOAD_BYTES=1000)
    limit = app.config["MAX_CONTENT_LENGTH"]
    assert limit == 1000 * 20 + 1024 * 1024
    client = app.test_client()
    token = client.get("/api/session").json["csrfToken"]
    response = client.post(
        "/api/session",
        data=b"{" + b" " * limit + b"}",
        headers={"X-CSRF-Token": token, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json["error"] == "The request is larger than the 48 KB limit for JSON bodies."
