"""Service commands of `circuits`: serve, worker, db upgrade, apikey create/list/revoke.
backend/cli.py mounts these; settings come from CIRCUITS_* environment variables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

HELP = {"add_completion": False, "no_args_is_help": True, "rich_markup_mode": None}


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _settings():
    from pydantic import ValidationError

    from backend.settings import Settings

    try:
        return Settings()
    except ValidationError as e:
        _fail("; ".join(f"CIRCUITS_{'.'.join(map(str, x['loc'])).upper()}: {x['msg']}" for x in e.errors()))


def _upgrade(settings) -> None:
    from sqlalchemy.exc import OperationalError

    from backend.db import upgrade

    try:
        upgrade(settings)
    except OperationalError as e:
        _fail(f"cannot reach the database {settings.db_url}: {str(e.orig).strip().splitlines()[0]}")


def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port", min=1, max=65535)] = 8000,
) -> None:
    """Run the web app and API. Defaults: SQLite + artifacts under CIRCUITS_DATA_DIR (./data), jobs run
    in this process; set CIRCUITS_DATABASE_URL / CIRCUITS_BROKER_URL for PostgreSQL / Celery workers.
    On a loopback host it prints a one-time URL that signs this machine's browser in (no key needed)."""
    import uvicorn

    from backend.app import create_app
    from backend.auth import browser_login, login_url
    from backend.jobs.lifecycle import limit_torch_threads

    settings = _settings()
    _upgrade(settings)
    if settings.demo:
        _load_demo(settings)
    limit_torch_threads(settings)
    jobs = f"Celery via {settings.broker_url}" if settings.broker_url else "in-process"
    typer.echo(f"database {settings.db_url}; jobs {jobs}; http://{host}:{port}/", err=True)
    app = create_app(settings)
    with app.state.db.session() as s:
        app.state.browser_login = browser_login(s, host)
    if app.state.browser_login is None:
        typer.echo("not a loopback address: writes need an x-api-key (`circuits apikey create`)", err=True)
    else:
        typer.echo(f"open {login_url(host, port, app.state.browser_login)}")
    uvicorn.run(app, host=host, port=port, log_level="info")


def _load_demo(settings) -> None:
    """On the first start (no model in the database) add the shipped demo, with its progress."""
    from backend.db import Database
    from backend.demo import load_if_fresh

    db = Database(settings)
    try:
        ids = load_if_fresh(db, settings, progress=lambda m: typer.echo(m, err=True))
    finally:
        db.dispose()
    if ids:
        typer.echo(
            f"demo loaded: models {', '.join(map(str, ids.values()))} (CIRCUITS_DEMO=false skips)", err=True
        )


def worker(
    concurrency: Annotated[int, typer.Option(help="jobs run at once (solo pool: 1)", min=1)] = 1,
    pool: Annotated[str, typer.Option(help="Celery pool: solo | threads | prefork")] = "solo",
    loglevel: Annotated[str, typer.Option(help="debug | info | warning")] = "info",
) -> None:
    """Run a Celery worker for jobs (needs CIRCUITS_BROKER_URL and a shared database and data dir)."""
    settings = _settings()
    if not settings.broker_url:
        _fail("CIRCUITS_BROKER_URL is not set (e.g. redis://localhost:6379/0); without it `serve` runs jobs")
    if pool not in ("solo", "threads", "prefork"):
        _fail(f"--pool must be solo, threads or prefork, not {pool!r}")
    from backend.jobs.lifecycle import limit_torch_threads
    from backend.jobs.queue import worker_app

    limit_torch_threads(settings)
    args = ["worker", f"--pool={pool}", f"--loglevel={loglevel}", "--queues=circuits", "--without-gossip"]
    args += ["--without-mingle", f"--concurrency={1 if pool == 'solo' else concurrency}"]
    worker_app(settings).worker_main(args)


db_app = typer.Typer(help="Database schema (Alembic migrations).", **HELP)


@db_app.callback()
def _db() -> None:
    """Database schema (Alembic migrations)."""


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    from alembic.util import CommandError

    from backend.db import upgrade

    settings = _settings()
    try:
        if revision == "head":
            _upgrade(settings)
        else:
            upgrade(settings, revision)
    except CommandError as e:
        _fail(str(e))
    typer.echo(f"database {settings.db_url} at revision {revision}")


apikey_app = typer.Typer(help="API keys for write requests (x-api-key header).", **HELP)


@apikey_app.callback()
def _apikey() -> None:
    """API keys for write requests (x-api-key header)."""


@apikey_app.command("create")
def apikey_create(name: Annotated[str, typer.Option(help="who or what the key is for")] = "default") -> None:
    """Create a key and print it once (only its hash is stored)."""
    from backend.auth import create_api_key
    from backend.db import Database

    settings = _settings()
    _upgrade(settings)
    db = Database(settings)
    with db.session() as s:
        _, key = create_api_key(s, name)
    db.dispose()
    typer.echo(key)
    typer.echo("store it now: it cannot be shown again", err=True)


@apikey_app.command("list")
def apikey_list() -> None:
    """Keys by prefix, name and state."""
    from sqlalchemy import select

    from backend.db import Database
    from backend.models import ApiKey

    db = Database(_settings())
    with db.session() as s:
        for k in s.scalars(select(ApiKey).order_by(ApiKey.id)):
            state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
            typer.echo(f"{k.prefix}...  {k.name}  created {k.created_at:%Y-%m-%d}  {state}")
    db.dispose()


@apikey_app.command("revoke")
def apikey_revoke(prefix: Annotated[str, typer.Argument(help="the key or its first characters")]) -> None:
    """Revoke the key starting with PREFIX."""
    from sqlalchemy import select

    from backend.db import Database
    from backend.models import ApiKey

    db = Database(_settings())
    with db.session() as s:
        keys = [
            k for k in s.scalars(select(ApiKey)) if k.prefix.startswith(prefix[:12]) and k.revoked_at is None
        ]
        if len(keys) != 1:
            _fail(f"{len(keys)} active keys match {prefix!r}; give more characters")
        keys[0].revoked_at = datetime.now(UTC)
    db.dispose()
    typer.echo(f"revoked {keys[0].prefix}...")
