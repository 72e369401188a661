"""The bounded executor of interactive forward passes (playground, live ablation, steering, task
samples): their own threads, so reads never wait behind them; a fixed number admitted at once (running
plus waiting), 503 with Retry-After beyond; a cap on the tokens one request runs through a model (422);
and a token bucket per client for callers without an API key (429 with Retry-After)."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, TypeVar

from fastapi import Depends, Header, HTTPException, Request

from .auth import browser_key, lookup_key
from .jobs.checks import LimitExceeded, cap
from .schemas import ErrorBody
from .settings import Settings

T = TypeVar("T")
CLIENTS = 10_000  # token buckets kept (least recently seen clients forgotten first)


class TokenBuckets:
    """`rate` requests per second per client, in bursts of at most `burst`."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, time)
        self.lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 if the client may go now, else the seconds until it may."""
        now = time.monotonic()
        with self.lock:
            tokens, then = self.buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self.buckets[client] = (tokens - 1 if wait == 0 else tokens, now)
            while len(self.buckets) > CLIENTS:
                self.buckets.popitem(last=False)
        return wait


class Interactive:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.pool: ThreadPoolExecutor | None = None  # started on first use, again after stop()
        self.pool_lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(settings.interactive_workers + settings.interactive_queue)
        self.buckets = TokenBuckets(settings.anonymous_rate, settings.anonymous_burst)

    async def run(self, request: Request, anonymous: bool, fn: Callable[..., T], *args) -> T:
        """fn(*args) on the interactive threads, or 429 / 503 at once."""
        if anonymous:
            client = request.client.host if request.client else "unknown"
            wait = self.buckets.take(client)
            if wait:
                retry = math.ceil(wait)
                raise HTTPException(
                    429,
                    f"rate limit: at most {self.settings.anonymous_burst} interactive requests at once and "
                    f"{self.settings.anonymous_rate:g} per second without an x-api-key "
                    f"(CIRCUITS_ANONYMOUS_RATE); retry in {retry} s",
                    headers={"Retry-After": str(retry)},
                )
        if not self.slots.acquire(blocking=False):
            raise HTTPException(
                503,
                f"busy: {self.settings.interactive_workers} interactive requests running and "
                f"{self.settings.interactive_queue} waiting (CIRCUITS_INTERACTIVE_WORKERS, "
                "CIRCUITS_INTERACTIVE_QUEUE); retry shortly",
                headers={"Retry-After": "1"},
            )
        try:
            with self.pool_lock:
                if self.pool is None:
                    self.pool = ThreadPoolExecutor(
                        self.settings.interactive_workers, thread_name_prefix="interactive"
                    )
                future = self.pool.submit(fn, *args)
        except BaseException:
            self.slots.release()
            raise
        future.add_done_callback(lambda _: self.slots.release())  # also if the client went away
        return await asyncio.wrap_future(future)

    def stop(self) -> None:
        with self.pool_lock:
            if self.pool is not None:
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = None


def work_cap(settings: Settings, tokens: int, what: str) -> None:
    """422 when one request would run more than CIRCUITS_INTERACTIVE_MAX_TOKENS tokens."""
    try:
        cap(tokens, settings.interactive_max_tokens, what, "interactive_max_tokens")
    except LimitExceeded as e:
        raise HTTPException(422, str(e)) from None


OptionalKey = Annotated[
    str | None, Header(alias="x-api-key", description="optional here: without one, rate limited per client")
]


def caller_key(request: Request, key: OptionalKey = None) -> bool:
    """Dependency of the interactive routes: True for a caller with a valid key (401 for an invalid
    one) or the signed-in browser's valid cookie, False for an anonymous caller (rate limited per client)."""
    cookie = None if key else browser_key(request)
    if not key and not cookie:
        return False
    with request.app.state.db.session() as session:
        if key:
            lookup_key(session, key)
            return True
        try:
            lookup_key(session, cookie)
        except HTTPException:  # a stale sign-in (an earlier server's key): anonymous, not refused
            return False
    return True


HasKey = Annotated[bool, Depends(caller_key)]
ERRORS = {  # the responses of every route run by Interactive.run (with HasKey), for its OpenAPI entry
    401: {"model": ErrorBody, "description": "invalid x-api-key"},
    409: {"model": ErrorBody, "description": "the model is not trained yet"},
    429: {"model": ErrorBody, "description": "rate limit of callers without a key (Retry-After)"},
    503: {"model": ErrorBody, "description": "interactive requests at capacity (Retry-After)"},
}
