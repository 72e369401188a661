"""create_app(settings): the FastAPI application (routers under /api/v1, OpenAPI, error bodies)."""

from __future__ import annotations

import asyncio
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
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from worker.engine.errors import UserError

from .auth import login_router, read_access
from .db import Database
from .interactive import Interactive
from .jobs.service import JobService
from .routes import discover
from .schemas import ErrorBody, ValidationErrorBody
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
            headers = {"Retry-After": "1", RETRYABLE: "1"}
            return JSONResponse({"detail": "database unavailable; retry later"}, 503, headers=headers)
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


RETRYABLE = "x-circuits-retryable"  # a read that failed on a lost database connection (never sent)


def replaying(messages: list[dict], receive):
    """An ASGI `receive` that gives `messages` first, then what `receive` gives."""
    pending = iter(messages)

    async def replayed():
        return next(pending, None) or await receive()

    return replayed


class RetryReads:
    """A GET or HEAD whose database connection was lost mid-request (e.g. the server restarting) is run
    again, up to `attempts` times: reads are idempotent, and the new try gets a fresh connection. The
    request's messages are read once and replayed to every try (a second read of the server's `receive`
    would wait for the client to go away)."""

    def __init__(self, app, attempts: int = 3, pause: float = 0.5):
        self.app, self.attempts, self.pause = app, attempts, pause

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        request = []
        while not request or request[-1].get("more_body"):
            request.append(await receive())
            if request[-1]["type"] != "http.request":  # the client went away
                return
        for attempt in range(self.attempts):
            retry = False

            async def filtered(message, last=attempt == self.attempts - 1):
                nonlocal retry
                if message["type"] == "http.response.start":
                    headers = [(k, v) for k, v in message.get("headers", []) if k != RETRYABLE.encode()]
                    retry = not last and len(headers) < len(message.get("headers", []))
                    message = {**message, "headers": headers}
                if not retry:
                    await send(message)

            await self.app(scope, replaying(request, receive), filtered)
            if not retry:
                return
            await asyncio.sleep(self.pause)


class BodyLimit:
    """413 with a JSON body for a request body above CIRCUITS_MAX_BODY_BYTES: declared by its
    Content-Length, or (sent in chunks) found by reading it here first, up to the limit."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        detail = f"request body larger than {self.limit:,} bytes (CIRCUITS_MAX_BODY_BYTES)"
        too_large = JSONResponse({"detail": detail}, 413)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit():
            if int(length) > self.limit:
                return await too_large(scope, receive, send)
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await too_large(scope, receive, send)
            if not message.get("more_body"):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, replaying([whole], receive), send)


def document_errors(doc: dict, reads_require_key: bool) -> dict:
    """FastAPI's OpenAPI document, with the error responses this app really sends: every 422 is a
    ValidationErrorBody; every operation with a body may answer 400 (not JSON) and 413; every one 401
    when reads need a key (and those taking a key, an invalid one); every one touching the database
    503; error bodies are application/json also on routes sending another type (the SSE stream)."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorBody, ValidationErrorBody):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(body.pop("$defs", {}))
        schemas[model.__name__] = body
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)

    def content(name: str) -> dict:
        return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}

    for path, operations in doc["paths"].items():
        for op in operations.values():
            responses = op["responses"]
            for code, response in responses.items():  # error bodies are JSON whatever the route sends
                media = response.get("content", {})
                if code >= "400" and media and "application/json" not in media:
                    response["content"] = {"application/json": media.popitem()[1]}
            if path != f"{API}/health":  # every other route reaches the database (database_error)
                unavailable = {"description": "database unavailable (Retry-After)"}
                responses.setdefault("503", {**unavailable, "content": content("ErrorBody")})
            if "422" in responses or op.get("parameters") or "requestBody" in op:
                description = responses.get("422", {}).get("description", "invalid input (named)")
                responses["422"] = {"description": description, "content": content("ValidationErrorBody")}
            if "requestBody" in op:
                responses["400"] = {"description": "request body not JSON", "content": content("ErrorBody")}
                responses["413"] = {"description": "request body too large", "content": content("ErrorBody")}
            if reads_require_key or "security" in op:
                responses.setdefault(
                    "401", {"description": "missing or invalid x-api-key", "content": content("ErrorBody")}
                )
    return doc


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
    )
    app.state.settings = settings
    app.state.db = Database(settings)
    app.state.jobs = JobService(settings, app.state.db)
    app.state.interactive = Interactive(settings)
    app.state.browser_login = None  # `circuits serve` on loopback sets one (auth.browser_login)
    add_error_handlers(app)
    app.include_router(login_router)

    @app.get(f"{API}/health", tags=["meta"])
    async def health() -> dict[str, str]:
        """Liveness: answers without touching the database (also the benchmarks' trivial endpoint)."""
        return {"status": "ok"}

    reads = [Depends(read_access)] if settings.reads_require_key else []  # open reads declare no auth
    for router in discover():
        app.include_router(router, prefix=API, dependencies=reads)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RetryReads)

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(FastAPI.openapi(app), settings.reads_require_key)
        return app.openapi_schema

    app.openapi = openapi
    if FRONTEND.is_dir():
        app.router.routes.append(
            FrontendMount("/", StaticFiles(directory=FRONTEND, html=True), name="frontend")
        )
    return app
