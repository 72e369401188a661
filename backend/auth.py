"""API keys: writes need an `x-api-key` header; reads too when CIRCUITS_READS_REQUIRE_KEY is set.

Keys are 256-bit random strings, so a plain SHA-256 is a safe way to store them (no salt or slow hash
needed: there is nothing to brute-force). Job submission is rate limited per key, counted from the
jobs table so the limit holds across API processes and restarts.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .db import SessionDep
from .models import ApiKey, Job
from .settings import Settings

KEY_PREFIX = "sce_"
api_key_header = APIKeyHeader(
    name="x-api-key", auto_error=False, description="Create one with `circuits apikey create`."
)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, name: str) -> tuple[ApiKey, str]:
    """A new key row and the key itself (shown once; only its hash is stored)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, prefix=key[:12], key_hash=hash_key(key))
    session.add(row)
    session.flush()
    return row, key


def lookup_key(session: Session, key: str | None) -> ApiKey:
    if not key:
        raise HTTPException(401, "missing x-api-key header (create a key with `circuits apikey create`)")
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked_at is not None:
        raise HTTPException(401, "invalid or revoked x-api-key")
    return row


def require_key(session: SessionDep, key: Annotated[str | None, Security(api_key_header)]) -> ApiKey:
    """Dependency for write endpoints: the caller's ApiKey row, or 401."""
    return lookup_key(session, key)


ApiKeyHeader = Annotated[str | None, Security(api_key_header)]


async def read_access(request: Request, key: ApiKeyHeader) -> ApiKey | None:
    """Dependency applied to every /api/v1 route: a key is needed only if the settings close reads.
    Async, with a session only when reads are closed, so open reads never wait for a worker thread."""
    if not request.app.state.settings.reads_require_key:
        return None

    def check() -> ApiKey:
        with request.app.state.db.session() as session:
            return lookup_key(session, key)

    return await run_in_threadpool(check)


WriteKey = Annotated[ApiKey, Depends(require_key)]


def check_job_rate(session: Session, key: ApiKey, settings: Settings) -> None:
    """429 when this key has submitted job_rate_limit jobs within the last window. Locks the key's
    row first (a row lock on PostgreSQL, the write lock on SQLite) until the caller's transaction
    ends, so that counting and inserting the new job are one step for concurrent submissions."""
    session.execute(update(ApiKey).where(ApiKey.id == key.id).values(name=ApiKey.name))
    since = datetime.now(UTC) - timedelta(seconds=settings.job_rate_window_seconds)
    recent = select(Job.created_at).where(Job.api_key_id == key.id, Job.created_at >= since)
    count = session.scalar(select(func.count()).select_from(recent.subquery()))
    if count >= settings.job_rate_limit:
        oldest = session.scalar(
            select(func.min(Job.created_at)).where(Job.api_key_id == key.id, Job.created_at >= since)
        )
        retry = max(1, int((oldest - since).total_seconds()) + 1)
        raise HTTPException(
            429,
            f"rate limit: at most {settings.job_rate_limit} job submissions per "
            f"{settings.job_rate_window_seconds:g} s per key (CIRCUITS_JOB_RATE_LIMIT); retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )
