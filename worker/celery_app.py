"""The Celery app: one task, a thin wrapper around worker.jobs.run_job.

Messages are acknowledged only after the job function returns (acks_late) and requeued if the pool
process dies (reject_on_worker_lost). If the whole worker is killed, Redis redelivers its unacked
message after the visibility timeout; independently, every worker sweeps the jobs table for running
jobs whose heartbeat stopped and requeues them, so recovery does not wait for that timeout. The job
row's atomic claim makes duplicate deliveries harmless.

Run with `circuits worker` (or `celery -A worker.celery_app worker --pool solo`).
"""

from __future__ import annotations

import logging
import threading

from celery import Celery, signals

from backend.settings import Settings, get_settings

RUN_JOB = "circuits.run_job"
log = logging.getLogger("circuits.worker")


def make_celery(settings: Settings) -> Celery:
    app = Celery("circuits", broker=settings.broker_url, set_as_current=False)
    timeout = settings.broker_timeout_seconds
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,  # a long job must not hold other jobs' messages
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in the jobs table
        task_default_queue="circuits",
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=timeout,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds,
            "socket_connect_timeout": timeout,
            "socket_timeout": max(timeout, 5.0),
            "max_retries": 1,
        },
        # A lost broker connection does not stop running jobs: they keep writing to the database and a
        # redelivered message is a no-op (the job row's claim).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def _context():
    """One database and job context per worker process."""
    global _ctx
    if _ctx is None:
        from backend.db import Database
        from worker.jobs import JobContext

        settings = get_settings()
        _ctx = JobContext(settings, Database(settings), dispatch=lambda job_id: run_job.delay(job_id))
    return _ctx


_ctx = None
app = make_celery(get_settings())


@app.task(
    name=RUN_JOB,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(ConnectionError,),  # database or broker blips before the job row could be written
    retry_backoff=True,
    max_retries=3,
)
def run_job(self, job_id: str) -> str | None:
    from sqlalchemy.exc import OperationalError

    from worker.jobs import run_job as run

    try:
        return run(job_id, _context())
    except OperationalError as e:  # the database is unreachable: try again later (bounded)
        raise self.retry(exc=e, countdown=5, max_retries=get_settings().job_max_attempts) from e


def _sweep_forever(stop: threading.Event) -> None:
    from worker.jobs import recover_stale

    ctx = _context()
    while True:
        try:
            recover_stale(ctx)
        except Exception as e:
            log.warning("stale-job sweep failed: %s", e)
        if stop.wait(ctx.settings.sweep_seconds):
            return


_stop_sweeper = threading.Event()


@signals.worker_ready.connect
def _start_sweeper(**_) -> None:
    threading.Thread(target=_sweep_forever, args=(_stop_sweeper,), name="job-sweeper", daemon=True).start()


@signals.worker_shutting_down.connect
def _interrupt_jobs(**_) -> None:
    """Warm shutdown: a running job stops at its next progress report and is requeued to resume."""
    _stop_sweeper.set()
    if _ctx is not None:
        _ctx.shutdown.set()
