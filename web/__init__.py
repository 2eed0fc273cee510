"""The web service: sign-in, albums, upload, the live album page and its JSON API.

`create_app` is the only entry point (gunicorn: `web:create_app()`); nothing happens at import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from imagerec import logs
from imagerec.config import load_settings
from web.bodies import MAX_FILES_PER_REQUEST

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)


class _SessionInterface(SecureCookieSessionInterface):
    """The session cookie is Secure whenever the request came in over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    logs.configure("web")
    app.config.from_mapping(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=False,
        LOGIN_MAX_FAILURES=5,
        LOGIN_LOCKOUT_SECONDS=300,
        SEND_TIMEOUT_SECONDS=10.0,
        SEND_ATTEMPTS=3,
        RETRY_UPLOADED_AFTER_SECONDS=30,
    )
    settings = load_settings()
    app.config.from_mapping(
        DATABASE_URL=settings.database_url,
        BLOB_URL=settings.blob_url,
        SINK=settings.sink,
        MAX_UPLOAD_BYTES=settings.max_upload_bytes,
        STUCK_AFTER_SECONDS=settings.stuck_after_seconds,
        MAX_IMAGE_PIXELS=settings.max_image_pixels,
    )
    if test_config is not None:
        app.config.from_mapping(test_config)
    if not app.config.get("SECRET_KEY"):
        # Only now: the key file lives in the data folder, which a test config may not want made.
        app.config["SECRET_KEY"] = settings.secret_key
    # Room for a batch of files plus the form around them; each file is checked on its own.
    # (Flask's defaults hold MAX_CONTENT_LENGTH = None, so setdefault would change nothing.)
    if app.config.get("MAX_CONTENT_LENGTH") is None:
        app.config["MAX_CONTENT_LENGTH"] = (
            app.config["MAX_UPLOAD_BYTES"] * MAX_FILES_PER_REQUEST + 1024 * 1024
        )
    app.session_interface = _SessionInterface()
    # Knative's queue-proxy and ingress terminate TLS and say so in X-Forwarded-Proto.
    app.wsgi_app = ProxyFix(app.wsgi_app, x_proto=1)  # type: ignore[method-assign]

    from web import albums, api, auth, bodies, broker, db, errors, photos

    bodies.init_app(app)  # first: the JSON cap must be set before anything reads a body
    db.init_app(app)
    broker.init_app(app)
    auth.init_app(app)
    errors.init_app(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(albums.bp)
    app.register_blueprint(photos.bp)
    app.register_blueprint(api.bp)

    @app.after_request
    def _security_headers(response):
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app
