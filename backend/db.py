"""Engine and sessions: a SQLite file by default, PostgreSQL by URL. Schema changes go through Alembic."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from .settings import Settings

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def make_engine(url: str, connect_retry_seconds: float = 0.0) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the job writer
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)

    @event.listens_for(engine, "do_connect")
    def _connect_with_retries(dialect, _record, cargs, cparams):
        """A server restarting refuses connections for a moment: wait for it (bounded) rather than
        fail the request; pool_pre_ping replaces the pooled connections it dropped."""
        deadline = time.monotonic() + connect_retry_seconds
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    return engine


class Database:
    """One engine and session factory per process (the API app, a worker, a test)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        if settings.database_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(settings.db_url, settings.database_connect_retry_seconds)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self.sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the database schema to `revision` (creates the SQLite file if needed)."""
    from alembic import command

    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings.db_url), revision)


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_session(request: Request) -> Iterator[Session]:
    """FastAPI dependency: one session per request, committed when the handler returns normally."""
    with request.app.state.db.session() as s:
        yield s


# scope="function": committed (and closed) before the response is sent, so a failed commit (e.g. the
# database restarting) is the request's own error, a 503 that RetryReads runs again, never a response
# torn off after its start nor a 2xx for a write that was not committed.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
