"""create_app(settings): the FastAPI application (routers under /api/v1, OpenAPI, error bodies)."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from sqlalchemy import inspect
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from worker.engine.errors import UserError

from .auth import read_access
from .db import Database
from .interactive import Interactive
from .jobs.service import JobService
from .routes import discover
from .settings import Settings, get_settings

log = logging.getLogger("circuits.api")
API = "/api/v1"
FRONTEND = Path(__file__).resolve().parent.parent / "frontend" / "dist"


def describe_errors(errors) -> str:
    """Pydantic/FastAPI errors as one line naming each offending field, e.g. `query.limit: ...`."""
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",) or len(e["loc"]) == 1)
        parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else e.get("msg", "invalid"))
    return "; ".join(parts)


def add_error_handlers(app: FastAPI) -> None:
    async def validation(_: Request, exc: RequestValidationError):
        errors = exc.errors()
        body = {
            "detail": describe_errors(errors),
            "errors": [{"loc": e["loc"], "msg": e["msg"]} for e in errors],
        }
        return JSONResponse(body, status_code=422)

    async def pydantic_error(_: Request, exc: ValidationError):
        return JSONResponse({"detail": describe_errors(exc.errors())}, status_code=422)

    async def user_error(_: Request, exc: Exception):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    async def http_error(_: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    async def database_error(_: Request, exc: DBAPIError):
        if isinstance(exc, DataError):  # e.g. a NUL character or an out-of-range number (PostgreSQL)
            return JSONResponse({"detail": f"invalid value: {str(exc.orig).strip().splitlines()[0]}"}, 422)
        if isinstance(exc, IntegrityError):
            return JSONResponse({"detail": "conflicts with existing data (a unique name or reference)"}, 409)
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            log.error("database error: %s", exc)
            return JSONResponse({"detail": "database unavailable; retry later"}, status_code=503)
        log.exception("database error", exc_info=exc)
        return JSONResponse({"detail": "internal error (logged on the server)"}, status_code=500)

    async def unexpected(_: Request, exc: Exception):
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse({"detail": "internal error (logged on the server)"}, status_code=500)

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(ValidationError, pydantic_error)
    app.add_exception_handler(UserError, user_error)  # the engine's bad input (unknown task, ...)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(Exception, unexpected)


class FrontendMount(Mount):
    """The built frontend at /, except under /api: there the API's own 404 and 405 (with its Allow
    header) answer, not the static files'."""

    def matches(self, scope):
        if scope["type"] == "http" and (scope["path"] + "/").startswith(API + "/"):
            return Match.NONE, {}
        return super().matches(scope)


def check_schema(db: Database) -> None:
    if not inspect(db.engine).has_table("jobs"):
        raise RuntimeError(f"database {db.engine.url!r} has no tables: run `circuits db upgrade` first")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        check_schema(app.state.db)
        app.state.jobs.start()
        try:
            yield
        finally:
            app.state.jobs.stop()
            app.state.interactive.stop()
            app.state.db.dispose()

    app = FastAPI(
        title="Sparse Circuit Explorer",
        version="0.1.0",
        description="Train weight-sparse transformers, prune them to task circuits, and explore them.",
        lifespan=lifespan,
        max_body_size=settings.max_body_bytes,
    )
    app.state.settings = settings
    app.state.db = Database(settings)
    app.state.jobs = JobService(settings, app.state.db)
    app.state.interactive = Interactive(settings)
    add_error_handlers(app)

    @app.get(f"{API}/health", tags=["meta"])
    async def health() -> dict[str, str]:
        """Liveness: answers without touching the database (also the benchmarks' trivial endpoint)."""
        return {"status": "ok"}

    for router in discover():
        app.include_router(router, prefix=API, dependencies=[Depends(read_access)])
    if FRONTEND.is_dir():
        app.router.routes.append(
            FrontendMount("/", StaticFiles(directory=FRONTEND, html=True), name="frontend")
        )
    return app
