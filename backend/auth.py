"""API keys: writes need an `x-api-key` header; reads too when CIRCUITS_READS_REQUIRE_KEY is set.

Keys are 256-bit random strings, so a plain SHA-256 is a safe way to store them (no salt or slow hash
needed: there is nothing to brute-force). Job submission is rate limited per key, counted from the
jobs table so the limit holds across API processes and restarts.

The browser on the machine itself signs in once, as with notebook servers: `circuits serve` on a
loopback address makes a key for it and a one-time token, and prints `/login?token=...`; that URL sets
an HttpOnly cookie carrying the key. The cookie stands in for the header only for requests from a
loopback client address and from the app's own origin (browser_key), so anything reachable from
another host still needs a key.

Why the cookie is no CSRF hole: it is SameSite=Strict, so a browser attaches it to no request that
another site starts (form posts, fetches, top-level navigations). SameSite ignores ports, though, so a
page served by another program on localhost is "same-site"; for that case a request that says where it
comes from (browsers send `Origin` with every POST, and `Sec-Fetch-Site`) must come from this origin,
or the cookie does not count. Cross-origin fetches with JSON bodies would also need a CORS preflight,
which this app never grants.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
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


# ---------------------------------------------------------------- the browser's one-time sign-in

BROWSER_COOKIE = "circuits_key"
BROWSER_KEY_NAME = "browser (circuits serve)"


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or `localhost`: an address only this machine can use."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class BrowserLogin:
    """The sign-in of this process's browser: the key made for it and its token, good once."""

    key: str
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    used: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def redeem(self, token: str) -> bool:
        with self.lock:
            if self.used or not secrets.compare_digest(token.encode(), self.token.encode()):
                return False
            self.used = True
            return True


def browser_login(session: Session, host: str) -> BrowserLogin | None:
    """For `circuits serve --host HOST`: on a loopback address, a new key for the browser and its
    one-time token; elsewhere None (whoever can reach the server must bring a key)."""
    if not is_loopback(host):
        return None
    _, key = create_api_key(session, BROWSER_KEY_NAME)
    return BrowserLogin(key)


def login_url(host: str, port: int, login: BrowserLogin) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/login?token={login.token}"


login_router = APIRouter()


@login_router.get("/login", include_in_schema=False)
def login(request: Request, token: str = "") -> Response:
    """The printed sign-in URL: the first visit sets the cookie and goes to the app; any other is 403."""
    pending: BrowserLogin | None = getattr(request.app.state, "browser_login", None)
    if pending is None:
        return PlainTextResponse(
            "403: this server has no sign-in link (it was started on a non-loopback address, or not by "
            "`circuits serve`); paste an API key (`circuits apikey create`) into the page's key box",
            403,
        )
    if not is_loopback(request.client.host if request.client else None):
        return PlainTextResponse("403: the sign-in link works only from the machine the server runs on", 403)
    if not pending.redeem(token):
        return PlainTextResponse(
            "403: this sign-in link is wrong or was already used; restart `circuits serve` for a new one, "
            "or paste an API key (`circuits apikey create`) into the page's key box",
            403,
        )
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(BROWSER_COOKIE, pending.key, httponly=True, samesite="strict", path="/")
    return response


def same_origin(request: Request) -> bool:
    """The request does not say it comes from another origin (see the module's note on CSRF)."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def browser_key(request: Request) -> str | None:
    """The sign-in cookie's key when it may stand in for the header: from a loopback client, same origin."""
    key = request.cookies.get(BROWSER_COOKIE)
    if not key or not is_loopback(request.client.host if request.client else None):
        return None
    return key if same_origin(request) else None


def caller(session: Session, request: Request, header_key: str | None) -> ApiKey:
    """The caller's key row: the header's, else the browser's cookie (see browser_key), else 401."""
    if header_key:
        return lookup_key(session, header_key)
    cookie = browser_key(request)
    if cookie:
        try:
            return lookup_key(session, cookie)
        except HTTPException:
            raise HTTPException(
                401, "this browser's sign-in key was revoked: open the URL `circuits serve` printed again"
            ) from None
    if request.cookies.get(BROWSER_COOKIE):
        raise HTTPException(
            401,
            "the browser sign-in counts only on the server's machine and from its own pages; send an "
            "x-api-key header (create a key with `circuits apikey create`)",
        )
    return lookup_key(session, None)


def require_key(
    request: Request, session: SessionDep, key: Annotated[str | None, Security(api_key_header)]
) -> ApiKey:
    """Dependency for write endpoints: the caller's ApiKey row, or 401."""
    return caller(session, request, key)


ApiKeyHeader = Annotated[str | None, Security(api_key_header)]


async def read_access(request: Request, key: ApiKeyHeader) -> ApiKey | None:
    """Dependency applied to every /api/v1 route: a key is needed only if the settings close reads.
    Async, with a session only when reads are closed, so open reads never wait for a worker thread."""
    if not request.app.state.settings.reads_require_key:
        return None

    def check() -> ApiKey:
        with request.app.state.db.session() as session:
            return caller(session, request, key)

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
