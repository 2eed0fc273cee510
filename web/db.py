"""Database session and blob store for the current request; views never make their own."""

from __future__ import annotations

from flask import Flask, current_app, g
from sqlalchemy.orm import Session

from imagerec.blobstore import BlobStore, open_blob_store
from imagerec.db import session_factory
from imagerec.models import aware  # noqa: F401 (the web's views import it from here)


def get_session() -> Session:
    """One session per request, closed (and rolled back if uncommitted) at teardown."""
    if "db_session" not in g:
        g.db_session = session_factory(current_app.config["DATABASE_URL"])()
    return g.db_session


def get_blobs() -> BlobStore:
    return open_blob_store(current_app.config["BLOB_URL"])


def close_session(_error: BaseException | None = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()


def init_app(app: Flask) -> None:
    app.teardown_appcontext(close_session)
