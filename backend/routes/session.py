"""Who the caller is: signed in through the browser's cookie, by an x-api-key header, or not at all
(the page shows the key box then)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request

from ..auth import browser_key, lookup_key
from ..db import SessionDep
from ..schemas import SessionRead

router = APIRouter(tags=["meta"])


@router.get("/session", response_model=SessionRead)
def get_session(
    request: Request,
    session: SessionDep,
    key: Annotated[str | None, Header(alias="x-api-key", description="the key to check, if any")] = None,
) -> SessionRead:
    """Whether writes from this caller would be accepted, and by what: `key` (the x-api-key header) or
    `cookie` (the browser signed in through `circuits serve`'s printed URL, on the server's machine)."""
    for via, candidate in (("key", key), ("cookie", None if key else browser_key(request))):
        if candidate:
            try:
                row = lookup_key(session, candidate)
            except HTTPException:
                break
            return SessionRead(authenticated=True, via=via, key_prefix=row.prefix)
    return SessionRead(authenticated=False, via=None, key_prefix=None)
