"""Jobs: submit (202 + id), inspect, list, follow progress over SSE, cancel. The request body and the
kind filter come from the job registry, so the router is made per app (make_router)."""

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy import func, select

from ..auth import WriteKey
from ..db import SessionDep
from ..jobs import registry
from ..jobs.checks import Conflict, LimitExceeded
from ..jobs.service import BrokerUnavailable, JobService, NotYours
from ..models import TERMINAL, Job
from ..schemas import ErrorBody, JobList, JobRead, JobStatusName

ERRORS = {404: {"model": ErrorBody, "description": "no such job"}}


def service(request: Request) -> JobService:
    return request.app.state.jobs


JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def get_job(session, job_id: str) -> Job:
    job = session.get(Job, job_id) if JOB_ID.match(job_id) else None
    if job is None:
        raise HTTPException(404, f"job {job_id!r} not found")
    return job


def existing_job_id(session: SessionDep, job_id: str) -> str:
    """Dependency: 404 before a stream starts (a generator's own checks would run too late)."""
    get_job(session, job_id)
    session.close()
    return job_id


def make_router() -> APIRouter:
    router = APIRouter(prefix="/jobs", tags=["jobs"])
    JobCreate = registry.job_create()  # noqa: N806 (a type)
    JobKindName = registry.kind_names()  # noqa: N806

    @router.post(
        "",
        status_code=202,
        responses={
            401: {"model": ErrorBody, "description": "missing or invalid x-api-key"},
            409: {"model": ErrorBody, "description": "conflicts with existing data (e.g. model name taken)"},
            422: {"model": ErrorBody, "description": "invalid parameters or a cap exceeded (named)"},
            429: {"model": ErrorBody, "description": "job submission rate limit of this key"},
            503: {"model": ErrorBody, "description": "the job queue (broker) is unreachable"},
        },
    )
    def submit_job(
        request: Request,
        response: Response,
        session: SessionDep,
        key: WriteKey,
        body: Annotated[JobCreate, Body()],
    ) -> JobRead:
        """Queue a job of any kind below. Poll GET /jobs/{id} or stream GET /jobs/{id}/events."""
        jobs = service(request)
        try:
            job = jobs.submit(session, body.kind, body.params, key)
        except LimitExceeded as e:
            raise HTTPException(422, str(e)) from None
        except Conflict as e:
            raise HTTPException(409, str(e)) from None
        except BrokerUnavailable as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "30"}) from None
        except ValueError as e:  # unknown model/task, invalid config overrides
            raise HTTPException(422, str(e).strip().splitlines()[0]) from None
        response.headers["Location"] = f"{request.url.path}/{job.id}"
        return jobs.read(job)

    @router.get("", response_model=JobList)
    def list_jobs(
        request: Request,
        session: SessionDep,
        status: JobStatusName | None = None,
        kind: JobKindName | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> JobList:
        """Jobs, newest first, optionally filtered by status and kind."""
        query = select(Job)
        if status:
            query = query.where(Job.status == status)
        if kind:
            query = query.where(Job.kind == kind)
        total = session.scalar(select(func.count()).select_from(query.subquery()))
        rows = session.scalars(
            query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
        ).all()
        jobs = service(request)
        return JobList(items=[jobs.read(j) for j in rows], total=total, limit=limit, offset=offset)

    @router.get("/{job_id}", responses=ERRORS)
    def read_job(request: Request, session: SessionDep, job_id: str) -> JobRead:
        return service(request).read(get_job(session, job_id))

    @router.post(
        "/{job_id}/cancel",
        status_code=202,
        responses={
            **ERRORS,
            401: {"model": ErrorBody, "description": "missing or invalid x-api-key"},
            403: {"model": ErrorBody, "description": "the job was submitted with another key"},
            409: {"model": ErrorBody, "description": "the job already finished"},
        },
    )
    def cancel_job(request: Request, session: SessionDep, key: WriteKey, job_id: str) -> JobRead:
        """Cancel a queued job at once, or ask a running one to stop (at its next progress report).
        Only the key that submitted the job may cancel it."""
        jobs = service(request)
        try:
            return jobs.read(jobs.cancel(session, get_job(session, job_id), key))
        except NotYours as e:
            raise HTTPException(403, str(e)) from None
        except Conflict as e:
            raise HTTPException(409, str(e)) from None

    @router.get("/{job_id}/events", response_class=EventSourceResponse, responses=ERRORS)
    async def job_events(
        request: Request,
        job_id: Annotated[str, Depends(existing_job_id)],
        interval: Annotated[float, Query(ge=0.1, le=10)] = 0.5,
    ) -> AsyncIterator[ServerSentEvent]:
        """Server-sent events: a `progress` event (the job as JSON) whenever the job changes, then a final
        `end` event once it reached succeeded, failed or cancelled."""
        jobs, db = service(request), request.app.state.db

        def snapshot() -> JobRead:
            with db.sessions() as s:
                return jobs.read(s.get(Job, job_id))

        last = None
        while True:
            job = await asyncio.to_thread(snapshot)
            state = job.model_dump(mode="json", exclude={"heartbeat_at"})
            if state != last:
                last = state
                yield ServerSentEvent(data=job.model_dump(mode="json"), event="progress")
            if job.status in TERMINAL:
                yield ServerSentEvent(data=job.model_dump(mode="json"), event="end")
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(interval)

    return router
