"""The one way to submit and inspect jobs. With CIRCUITS_BROKER_URL set, jobs go to Celery workers;
without it, a thread pool in this process runs the same job functions (worker/jobs.py)."""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from worker.jobs import (
    JobContext,
    bridge_run_config,
    build_run_config,
    count_params,
    prune_config,
    recover_stale,
    run_job,
    task_row,
    transcoder_config,
)

from .db import Database
from .models import TERMINAL, ApiKey, Job, JobStatus, Model, ModelStatus, Transcoder
from .schemas import BridgeParams, JobRead, ProfileParams, PruneParams, TrainParams, TranscoderParams
from .settings import Settings

log = logging.getLogger("circuits.jobs")


class BrokerUnavailable(RuntimeError):
    pass


class LimitExceeded(ValueError):
    """A job parameter above its cap (422 naming the limit)."""


class Conflict(ValueError):
    """The request contradicts the current state, e.g. cancelling a finished job (409)."""


def _cap(value: int | float, limit: int, what: str, setting: str) -> None:
    if value > limit:
        where = f"CIRCUITS_{setting.upper()}" if setting[0] != "(" else setting[1:-1]
        raise LimitExceeded(f"{what} {value:,} exceeds the limit {limit:,} ({where})")


def _ready_model(session: Session, model_id: int, field: str = "model_id") -> Model:
    model = session.get(Model, model_id)
    if model is None:
        raise ValueError(f"params.{field}: model {model_id} does not exist")
    if model.status != ModelStatus.ready:
        raise ValueError(f"params.{field}: model {model_id} is {model.status}, not ready")
    return model


def _check_train_caps(settings: Settings, run) -> None:
    s = settings
    _cap(run.train.steps, s.max_train_steps, "params.steps", "max_train_steps")
    _cap(count_params(run.model), s.max_model_params, "model parameters", "max_model_params")
    corpus_bytes = run.train.max_corpus_bytes
    if corpus_bytes is not None:
        _cap(corpus_bytes, s.max_corpus_bytes, "params.train.max_corpus_bytes", "max_corpus_bytes")
    step_tokens = run.train.batch_size * run.model.n_ctx
    _cap(step_tokens, s.max_batch_tokens, "batch_size * n_ctx", "max_batch_tokens")
    _cap(run.train.eval_batches, 64, "params.train.eval_batches", "(fixed limit)")


def _check_name_free(session: Session, name: str | None) -> None:
    if name is not None and session.scalar(select(Model.id).where(Model.name == name)):
        raise Conflict(f"params.name: a model named {name!r} already exists")


def check_params(session: Session, settings: Settings, params) -> None:
    """Caps and references of job parameters, checked before a job is queued."""
    s = settings
    if isinstance(params, TrainParams):
        _check_train_caps(s, build_run_config(params, s))
        if params.corpus is not None and not (s.data_dir / "corpora" / params.corpus).is_dir():
            raise ValueError(f"params.corpus: no folder {params.corpus!r} under {s.data_dir / 'corpora'}")
        _check_name_free(session, params.name)
    elif isinstance(params, BridgeParams):
        dense = _ready_model(session, params.dense_model_id, "dense_model_id")
        _check_train_caps(s, bridge_run_config(params, dense.config))
        _check_name_free(session, params.name)
    elif isinstance(params, ProfileParams):
        _cap(params.tokens, s.max_profile_tokens, "params.tokens", "max_profile_tokens")
        _ready_model(session, params.model_id)
    elif isinstance(params, PruneParams):
        cfg = prune_config(params)  # PruneConfig's own validation and defaults
        _cap(cfg.steps, s.max_prune_steps, "params.steps", "max_prune_steps")
        _cap(cfg.runs, s.max_prune_runs, "params.runs", "max_prune_runs")
        task_row(session, params.task)  # TaskError (422) naming the known tasks
        _ready_model(session, params.model_id)
    elif isinstance(params, TranscoderParams):
        _check_transcoder(session, s, params)


def _check_transcoder(session: Session, s: Settings, params: TranscoderParams) -> None:
    try:
        cfg = transcoder_config(params)  # TranscoderConfig's own validation and defaults
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"params.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    cfg.selected_index()  # a ValueError naming `selected`
    _cap(cfg.steps, s.max_transcoder_steps, "params.steps", "max_transcoder_steps")
    _cap(params.profile_tokens, s.max_profile_tokens, "params.profile_tokens", "max_profile_tokens")
    model = _ready_model(session, params.model_id)
    step_tokens = cfg.batch_size * model.config["model"]["n_ctx"]
    _cap(step_tokens, s.max_batch_tokens, "batch_size * n_ctx", "max_batch_tokens")
    for name in params.tasks:
        task_row(session, name)  # TaskError (422) naming the known tasks
    existing = session.scalar(select(Transcoder.id).where(Transcoder.model_id == model.id).limit(1))
    if existing is not None and not params.replace:
        raise Conflict(
            f"model {model.id} already has transcoders ({existing}); set params.replace to replace them"
        )


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


class CeleryDispatcher:
    """Sends job ids to the Celery workers; a broker that cannot be reached is a BrokerUnavailable."""

    def __init__(self, settings: Settings):
        from worker.celery_app import make_celery

        self.settings = settings
        self.app = make_celery(settings)

    def dispatch(self, job_id: str) -> None:
        from worker.celery_app import RUN_JOB

        try:
            self.app.send_task(RUN_JOB, args=[job_id], retry=True, retry_policy={"max_retries": 1})
        except Exception as e:  # kombu OperationalError, redis ConnectionError, socket errors...
            raise BrokerUnavailable(
                f"job queue unavailable: cannot reach the broker at {self.settings.broker_url} ({e}); "
                "reads still work, retry the submission later"
            ) from e

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.app.close()


class JobService:
    def __init__(self, settings: Settings, db: Database):
        self.settings, self.db = settings, db
        self.runner = CeleryDispatcher(settings) if settings.broker_url else InProcessRunner(settings, db)

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()

    def submit(self, session: Session, kind: str, params, key: ApiKey | None) -> Job:
        check_params(session, self.settings, params)
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
        return job

    def cancel(self, session: Session, job: Job) -> Job:
        """Queued: cancelled at once. Running: flagged; its worker stops at the next progress report."""
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
            out.stalled = beat is None or datetime.now(UTC) - beat > limit
        return out
