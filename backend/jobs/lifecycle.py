"""The lifecycle every job shares, whichever runner (Celery worker or in-process thread) called it.

run_job(job_id, ctx) is the whole contract: it claims the job row atomically (so a redelivered message
or a second worker never runs a job twice), keeps a heartbeat while the kind's body runs, writes
progress, and commits the results together with the final status. A job whose worker died has a stale
heartbeat; recover_stale() puts it back in the queue and the next attempt resumes (training from its
checkpoint) or, for kinds that do not resume, starts over after the kind's cleanup. Job code never
knows which runner called it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from worker.engine.errors import UserError

from ..db import Database
from ..models import Job, JobStatus
from ..settings import Settings
from . import registry

log = logging.getLogger("circuits.jobs")


class JobCancelled(Exception):
    pass


class JobInterrupted(Exception):
    """The process is shutting down: put the job back in the queue."""


class JobLost(Exception):
    """Another attempt owns the job now (we were presumed dead): stop without writing anything."""


def now() -> datetime:
    return datetime.now(UTC)


BOOT = uuid.uuid4().hex[:8]  # tells this process from an earlier one that had the same pid


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{BOOT}"


def worker_gone(worker: str | None) -> bool:
    """The job's worker ran on this host and its process is gone (or was an earlier process with
    this pid, e.g. PID 1 of a restarted container). Workers on other hosts: unknown, so False."""
    host, _, rest = (worker or "").partition(":")
    pid, _, boot = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return boot != BOOT
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by another user
        return False
    return False


# Bad input or state, reported as the job's error without a traceback (UserError is a ValueError).
USER_ERRORS = (UserError, ValueError, ValidationError, FileNotFoundError)


@dataclass
class JobContext:
    """What a job needs from its runner: settings, database, and how to queue a job again."""

    settings: Settings
    db: Database
    dispatch: Callable[[str], None]
    shutdown: threading.Event = field(default_factory=threading.Event)
    worker: str = field(default_factory=this_worker)


class Attempt:
    """One claimed run of a job: heartbeat thread, throttled progress, cancel and loss detection."""

    def __init__(self, ctx: JobContext, job_id: str, claim: str):
        self.ctx, self.job_id, self.claim = ctx, job_id, claim
        self.cancelled, self.lost, self.done = threading.Event(), threading.Event(), threading.Event()
        self.last_write = 0.0
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> Attempt:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    def _mine(self):
        return and_(Job.id == self.job_id, Job.claim == self.claim, Job.status == JobStatus.running)

    def _beat(self) -> None:
        while not self.done.wait(self.ctx.settings.heartbeat_seconds):
            try:
                self.touch()
            except Exception as e:  # a database hiccup must not kill the heartbeat
                log.warning("heartbeat of job %s failed: %s", self.job_id, e)

    def touch(self, **values) -> None:
        """Heartbeat (plus any column values); notices cancellation and loss of the claim."""
        with self.ctx.db.session() as s:
            done = s.execute(update(Job).where(self._mine()).values(heartbeat_at=now(), **values)).rowcount
            cancel = s.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
        if not done:
            self.lost.set()
        if cancel:
            self.cancelled.set()

    def check(self) -> None:
        if self.lost.is_set():
            raise JobLost(self.job_id)
        if self.cancelled.is_set():
            raise JobCancelled(self.job_id)
        if self.ctx.shutdown.is_set():
            raise JobInterrupted(self.job_id)

    def progress(self, fraction: float, stage: str, message: str = "", force: bool = False) -> None:
        """Called often by job bodies: raises to stop the job; writes at most every progress_min_interval."""
        self.check()
        t = time.monotonic()
        if force or t - self.last_write >= self.ctx.settings.progress_min_interval:
            self.last_write = t
            try:
                self.touch(progress=min(max(fraction, 0.0), 1.0), stage=stage[:64], message=message)
            except DBAPIError as e:  # e.g. the database restarting: a later report writes it
                log.warning("progress of job %s not written: %s", self.job_id, str(e).splitlines()[0])
            self.check()

    def finish(self, s: Session, status: JobStatus, **values) -> None:
        """Final status, in the caller's transaction (so results and status commit together)."""
        values = {"status": status, "finished_at": now(), "heartbeat_at": now(), **values}
        if status == JobStatus.succeeded:
            values.setdefault("progress", 1.0)
        if not s.execute(update(Job).where(self._mine()).values(**values)).rowcount:
            raise JobLost(self.job_id)


def limit_torch_threads(settings: Settings) -> None:
    """Apply CIRCUITS_TORCH_THREADS. Call it from the process's main thread too: a value set only in a
    job thread does not reach every torch thread pool (backward stays oversubscribed)."""
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)


def job_device(settings: Settings, requested: str | None = None) -> str:
    """Where a job runs: its `device` parameter, else CIRCUITS_DEVICE ("auto": a GPU if there is one)."""
    device = requested or settings.device
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def claim(ctx: JobContext, job_id: str) -> tuple[str, Job] | None:
    """Atomically take a queued job (or a running one whose worker stopped heartbeating)."""
    token, t = uuid.uuid4().hex, now()
    stale = t - timedelta(seconds=ctx.settings.stale_after_seconds)
    claimable = or_(
        Job.status == JobStatus.queued,
        and_(Job.status == JobStatus.running, or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale)),
    )
    with ctx.db.session() as s:
        took = s.execute(
            update(Job)
            .where(Job.id == job_id, claimable, Job.cancel_requested.is_(False))
            .values(
                status=JobStatus.running,
                claim=token,
                worker=ctx.worker,
                attempts=Job.attempts + 1,
                heartbeat_at=t,
                stage="starting",
                message=f"started on {ctx.worker}",
                error=None,
            )
        ).rowcount
        if not took:
            # Cancelled before it started: record that (no-op for finished or running jobs).
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.queued, Job.cancel_requested.is_(True))
                .values(status=JobStatus.cancelled, finished_at=t, stage="cancelled", message="cancelled")
            )
            return None
        job = s.get(Job, job_id)
        if job.started_at is None:
            job.started_at = t
        return token, job


def run_job(job_id: str, ctx: JobContext) -> str | None:
    """Run one job to a final status (or back to the queue). Returns the status it left, None if the
    job was not ours to run (finished, cancelled, or running elsewhere)."""
    claimed = claim(ctx, job_id)
    if claimed is None:
        log.info("job %s not claimable; skipping", job_id)
        return None
    token, job = claimed
    kind = registry.kind(job.kind)
    if job.attempts > ctx.settings.job_max_attempts:
        with ctx.db.session() as s:
            Attempt(ctx, job_id, token).finish(
                s,
                JobStatus.failed,
                stage="failed",
                error=f"gave up after {job.attempts - 1} attempts whose worker was lost",
                message="worker lost too often",
            )
            kind.cleanup(ctx, s, job_id)
        return JobStatus.failed
    limit_torch_threads(ctx.settings)
    with Attempt(ctx, job_id, token) as attempt:
        try:
            try:
                params = kind.params.model_validate(job.params)  # (stored by an older version: may fail)
                if job.attempts > 1 and not kind.resumes:
                    with ctx.db.session() as s:  # starts over: first remove what the lost attempt left
                        kind.cleanup(ctx, s, job_id)
                kind.run(ctx, job, params, attempt)
                return JobStatus.succeeded
            except JobCancelled:
                with ctx.db.session() as s:
                    attempt.finish(s, JobStatus.cancelled, stage="cancelled", message="cancelled on request")
                    kind.cleanup(ctx, s, job_id)
                return JobStatus.cancelled
            except JobInterrupted:
                requeue(ctx, attempt)
                return JobStatus.queued
            except JobLost:
                raise
            except Exception as e:
                with ctx.db.session() as s:
                    attempt.finish(
                        s, JobStatus.failed, stage="failed", error=describe_failure(e), message="failed"
                    )
                    kind.cleanup(ctx, s, job_id)
                return JobStatus.failed
        except JobLost:
            log.warning("job %s: claim lost (presumed dead); stopped without writing results", job_id)
            return None


def describe_failure(e: Exception) -> str:
    """Bad input: its one-line message. Anything else: its type and first line; the traceback (with
    the server's paths) goes to the worker's log only, since anyone may read a job's error."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, USER_ERRORS) and first:
        return first
    log.error("job failed", exc_info=e)
    return f"{type(e).__name__}: {first} (details in the worker's log)"


def dispatch_or_park(ctx: JobContext, job_id: str) -> None:
    """Send a requeued job to the runner. If the queue cannot be reached, park the job as running
    without a heartbeat: it reads as stalled, and the stale-job sweep retries (a queued job with no
    queue message would wait forever)."""
    try:
        ctx.dispatch(job_id)
        with ctx.db.session() as s:
            mark_published(s, job_id)
    except Exception as e:
        log.warning("job %s: could not requeue (%s); the stale-job sweep will retry", job_id, e)
        with ctx.db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.queued)
                .values(
                    status=JobStatus.running, heartbeat_at=None, message="waiting for the job queue to resume"
                )
            )


def requeue(ctx: JobContext, attempt: Attempt) -> None:
    """The process is shutting down mid-job: back to the queue, to resume on the next worker."""
    with ctx.db.session() as s:
        s.execute(
            update(Job)
            .where(attempt._mine())
            .values(
                status=JobStatus.queued,
                claim=None,
                stage="interrupted",
                message="worker shut down; queued to resume",
            )
        )
    dispatch_or_park(ctx, attempt.job_id)


def mark_published(s: Session, job_id: str) -> None:
    """The job's message was handed to the queue (see republish_queued)."""
    s.execute(update(Job).where(Job.id == job_id).values(published_at=now()))


def republish_queued(ctx: JobContext) -> list[str]:
    """Publish again the queued jobs whose message may be lost (Redis restarted without persistence,
    or the API died between committing the row and publishing): queued, not claimed, and published
    (or, never published, created) more than republish_after_seconds ago. Harmless if the message
    was not lost: a job runs once however many messages name it (the claim)."""
    old = now() - timedelta(seconds=ctx.settings.republish_after_seconds)
    waiting = and_(
        Job.status == JobStatus.queued,
        Job.claim.is_(None),
        Job.cancel_requested.is_(False),
        func.coalesce(Job.published_at, Job.created_at) < old,
    )
    with ctx.db.session() as s:
        job_ids = s.scalars(select(Job.id).where(waiting).order_by(Job.created_at)).all()
    for job_id in job_ids:
        log.warning("job %s: queued since before %s with no worker claim; publishing again", job_id, old)
        ctx.dispatch(job_id)  # a broker error propagates: the next sweep tries again
        with ctx.db.session() as s:
            mark_published(s, job_id)
    return list(job_ids)


def recover_stale(ctx: JobContext) -> list[str]:
    """Requeue running jobs whose worker stopped heartbeating or whose process is gone (it died);
    returns their ids."""
    stale = now() - timedelta(seconds=ctx.settings.stale_after_seconds)
    requeued = []
    with ctx.db.session() as s:
        for job in s.scalars(select(Job).where(Job.status == JobStatus.running)).all():
            beat = job.heartbeat_at
            if beat is not None and beat >= stale and not worker_gone(job.worker):
                continue
            unchanged = Job.heartbeat_at.is_(None) if beat is None else Job.heartbeat_at == beat
            dead = and_(Job.id == job.id, Job.status == JobStatus.running, unchanged)
            if job.cancel_requested:
                values = {"status": JobStatus.cancelled, "finished_at": now(), "stage": "cancelled"}
                values["message"] = "cancelled (its worker was lost)"
            else:
                since = f"since {job.heartbeat_at:%H:%M:%S} UTC" if job.heartbeat_at else "at all"
                values = {"status": JobStatus.queued, "claim": None, "stage": "requeued"}
                values["message"] = f"worker {job.worker} lost (no heartbeat {since}); queued to resume"
            if s.execute(update(Job).where(dead).values(**values)).rowcount:
                if values["status"] == JobStatus.queued:
                    requeued.append(job.id)
                else:
                    registry.kind(job.kind).cleanup(ctx, s, job.id)
    for job_id in requeued:
        log.warning("job %s: worker lost; requeued", job_id)
        dispatch_or_park(ctx, job_id)
    return requeued
