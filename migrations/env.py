"""Alembic environment: the URL comes from backend.settings (CIRCUITS_DATABASE_URL / CIRCUITS_DATA_DIR)
unless the caller put one in the config (backend.db.upgrade does)."""

from alembic import context
from sqlalchemy import create_engine, pool

from backend.db import make_engine
from backend.models import Base, UTCDateTime
from backend.settings import Settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or Settings().db_url
target_metadata = Base.metadata


def render_item(type_, obj, autogen_context):
    """Migrations spell UTCDateTime as the plain column type it stores, so they never import app code."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = make_engine(url) if url.startswith("sqlite") else create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # Batch mode rebuilds a table by copy, drop and rename; with foreign keys on, the drop would
            # cascade to every child row. The pragma only takes effect outside a transaction.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        # Batch mode lets later migrations alter tables on SQLite (copy-and-move).
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            render_item=render_item,
        )
        with context.begin_transaction():
            context.run_migrations()
        if connection.dialect.name == "sqlite":
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"migration left rows whose foreign keys point nowhere: {broken[:5]}")
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
