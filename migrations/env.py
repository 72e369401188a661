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
        # Batch mode lets later migrations alter tables on SQLite (copy-and-move).
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            render_item=render_item,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
