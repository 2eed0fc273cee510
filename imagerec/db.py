"""Engines, sessions and migrations: one engine per database URL per process."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config

_MIGRATIONS = Path(__file__).parent / "migrations"
_engines: dict[str, Engine] = {}
_sessionmakers: dict[str, sessionmaker[Session]] = {}


def normalise_url(url: str) -> str:
    # Kubernetes and Heroku-style URLs say postgres:// or postgresql://; use psycopg2 explicitly.
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def get_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url not in _engines:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # Several step processes share one SQLite file: wait for locks instead of failing.
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        _engines[url] = engine
    return _engines[url]


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def session_factory(url: str) -> sessionmaker[Session]:
    url = normalise_url(url)
    if url not in _sessionmakers:
        _sessionmakers[url] = sessionmaker(get_engine(url), expire_on_commit=False)
    return _sessionmakers[url]


def alembic_config(url: str) -> Config:
    # Imported here: only migrating needs Alembic, and importing it costs every process that
    # opens a session (each step) about a tenth of a second at start.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to `revision`; safe to run on every start."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)
