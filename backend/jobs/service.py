"""The one way to submit and inspect jobs. With CIRCUITS_BROKER_URL set, jobs go to Celery workers
(backend/jobs/queue.py); without it, a thread pool in this process runs the same job functions."""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..auth import check_job_rate
from ..db import Database
from ..models import TERMINAL, ApiKey, Job, JobStatus
from ..schemas import JobRead
from ..settings import Settings
from . import registry
from .checks import Conflict
from .lifecycle import JobContext, mark_published, recover_stale, run_job, worker_gone

log = logging.getLogger("circuits.jobs")


class BrokerUnavailable(RuntimeError):
    pass


class NotYours(PermissionError):
    """The job belongs to another API key (403)."""


class InProcessRunner:
    """Threads of the API process run jobs; queued/running jobs of a previous process are resumed."""

    def __init__(self, settings: Settings, db: Database):
        self.ctx = JobContext(settings, db, self.dispatch)
        self.pool: ThreadPoolExecutor | None = None
        self.sweeper: threading.Thread | None = None

    def dispatch(self, job_id: str) -> None:
        if self.pool is not None and not self.ctx.shutdown.is_set():
            self.pool.submit(self._run, job_id)

    def _run(self, job_id: str) -> None:
        try:
            run_job(job_id, self.ctx)
        except Exception:  # the job row says what happened; keep the pool alive
            log.exception("job %s crashed its runner", job_id)

    def start(self) -> None:
        self.ctx.shutdown.clear()
        self.pool = ThreadPoolExecutor(self.ctx.settings.inprocess_workers, thread_name_prefix="job")
        with self.ctx.db.session() as s:
            queued = s.scalars(
                select(Job.id).where(Job.status == JobStatus.queued).order_by(Job.created_at)
            ).all()
        for job_id in queued:  # the previous process's in-memory queue is gone
            self.dispatch(job_id)
        self.sweeper = threading.Thread(target=self._sweep, name="job-sweeper", daemon=True)
        self.sweeper.start()

    def _sweep(self) -> None:
        while True:
            try:
                recover_stale(self.ctx)
            except Exception as e:
                log.warning("stale-job sweep failed: %s", e)
            if self.ctx.shutdown.wait(self.ctx.settings.sweep_seconds):
                return

    def stop(self, timeout: float = 30.0) -> None:
        """Running jobs stop at their next progress report and go back to the queue."""
        self.ctx.shutdown.set()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            for t in list(getattr(self.pool, "_threads", ())):
                t.join(timeout)
            self.pool = None


class JobService:
    def __init__(self, settings: Settings, db: Database):
        self.settings, self.db = settings, db
        if settings.broker_url:
            from .queue import CeleryDispatcher

            self.runner = CeleryDispatcher(settings)
        else:
            self.runner = InProcessRunner(settings, db)

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()

    def submit(self, session: Session, kind: str, params, key: ApiKey | None) -> Job:
        """Check, then count the key's recent jobs and insert this one in one locked transaction;
        publish after the commit (published_at marks a message sent; the sweeper republishes)."""
        registry.kind(kind).check(session, self.settings, params)  # caps and references
        session.commit()  # end the checks' read transaction: the rate check starts a locked one
        if key is not None:
            check_job_rate(session, key, self.settings)
        job = Job(
            id=uuid.uuid4().hex,
            kind=kind,
            params=params.model_dump(mode="json"),
            status=JobStatus.queued,
            stage="queued",
            message="waiting for a worker",
            api_key_id=key.id if key else None,
        )
        session.add(job)
        session.commit()
        try:
            self.runner.dispatch(job.id)
        except BrokerUnavailable:
            session.delete(job)  # never accepted: leave no queued job that nothing will run
            session.commit()
            raise
        mark_published(session, job.id)
        session.commit()
        return job

    def cancel(self, session: Session, job: Job, key: ApiKey) -> Job:
        """Queued: cancelled at once. Running: flagged; its worker stops at the next progress report.
        Only the key that submitted a job may cancel it."""
        if job.api_key_id != key.id:
            raise NotYours(f"job {job.id} was submitted with another API key; only that key can cancel it")
        if job.status in TERMINAL:
            raise Conflict(f"job {job.id} already {job.status}; nothing to cancel")
        queued = (Job.id == job.id) & (Job.status == JobStatus.queued)
        done = session.execute(
            update(Job)
            .where(queued)
            .values(
                cancel_requested=True,
                status=JobStatus.cancelled,
                stage="cancelled",
                message="cancelled before it started",
                finished_at=datetime.now(UTC),
            )
        ).rowcount
        if not done:
            session.execute(
                update(Job)
                .where(Job.id == job.id, Job.status.not_in(TERMINAL))
                .values(
                    cancel_requested=True, message="cancel requested; stopping at the next progress report"
                )
            )
        session.commit()
        session.refresh(job)
        return job

    def read(self, job: Job) -> JobRead:
        out = JobRead.model_validate(job)
        if job.status == JobStatus.running:
            beat = job.heartbeat_at
            limit = timedelta(seconds=self.settings.stale_after_seconds)
            out.stalled = beat is None or datetime.now(UTC) - beat > limit or worker_gone(job.worker)
        return out
