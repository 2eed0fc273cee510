"""Fixtures shared by every test: the shared test data, and the two storage backends.

`backend` runs a test twice: on the embedded default (SQLite + blob folder) and on the real
PostgreSQL + Redis of this machine. In CI (CI=true) a missing server fails the test; on a
developer machine it skips it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import sqlalchemy
from sqlalchemy.orm import Session

import imagerec.steps
from imagerec.blobstore import BlobStore, open_blob_store
from imagerec.db import get_engine, session_factory, upgrade
from imagerec.models import Base

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMAGEREC_SHARED", ROOT.parent / "shared")).resolve()
IMAGES = SHARED / "testdata" / "images"
MODEL = SHARED / "models" / "centernet-coco-tfhub-style"
POSTGRES_URL = os.environ.get("IMAGEREC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("IMAGEREC_TEST_REDIS", "redis://127.0.0.1:6379/15")


def manifest() -> dict:
    return json.loads((IMAGES / "MANIFEST.json").read_text())


def require(service: str, error: Exception) -> None:
    message = f"{service} is not reachable: {error}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI needs it: run tests/start-services.sh)")
    pytest.skip(message)


@dataclass
class Backend:
    name: str
    env: dict[str, str]

    @property
    def database_url(self) -> str:
        return self.env["IMAGEREC_DATABASE_URL"]

    @property
    def blob_url(self) -> str:
        return self.env["IMAGEREC_BLOB_URL"]

    def session(self) -> Session:
        return session_factory(self.database_url)()

    def blobs(self) -> BlobStore:
        return open_blob_store(self.blob_url)


_postgres_migrated = False


def _fresh_postgres() -> None:
    global _postgres_migrated
    engine = get_engine(POSTGRES_URL)
    if not _postgres_migrated:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        upgrade(POSTGRES_URL)
        _postgres_migrated = True
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture
def embedded_backend(tmp_path: Path) -> Backend:
    data = tmp_path / "data"
    env = {
        "IMAGEREC_DATA_DIR": str(data),
        "IMAGEREC_DATABASE_URL": f"sqlite:///{data / 'imagerec.db'}",
        "IMAGEREC_BLOB_URL": f"file://{data / 'blobs'}",
    }
    upgrade(env["IMAGEREC_DATABASE_URL"])
    return Backend("embedded", env)


@pytest.fixture
def real_backend(tmp_path: Path) -> Backend:
    try:
        _fresh_postgres()
    except sqlalchemy.exc.OperationalError as e:
        require("PostgreSQL", e)
    try:
        redis.Redis.from_url(REDIS_URL).flushdb()
    except redis.exceptions.ConnectionError as e:
        require("Redis", e)
    env = {
        "IMAGEREC_DATA_DIR": str(tmp_path / "data"),
        "IMAGEREC_DATABASE_URL": POSTGRES_URL,
        "IMAGEREC_BLOB_URL": REDIS_URL,
    }
    return Backend("real", env)


@pytest.fixture(params=["embedded", "real"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(f"{request.param}_backend")


@pytest.fixture
def configured(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    """The process environment set to `backend`, as a step or the web service reads it."""
    for key, value in backend.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("IMAGEREC_DETECTOR_MODEL", str(MODEL))
    imagerec.steps.settings.cache_clear()
    yield backend
    imagerec.steps.settings.cache_clear()
