"""Jobs over Celery: the app's configuration, the one task (a thin wrapper around lifecycle.run_job),
the dispatcher the API sends job ids with, and the worker process's app (worker/celery_app.py).

Messages are acknowledged only after the job function returns (acks_late) and requeued if the pool
process dies (reject_on_worker_lost). If the whole worker is killed, Redis redelivers its unacked
message after the visibility timeout; independently, every worker sweeps the jobs table for running
jobs whose heartbeat stopped and requeues them, so recovery does not wait for that timeout. The job
row's atomic claim makes duplicate deliveries harmless.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery, signals

from ..settings import Settings
from .service import BrokerUnavailable

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


class CeleryDispatcher:
    """Sends job ids to the Celery workers; a broker that cannot be reached is a BrokerUnavailable."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.app = make_celery(settings)

    def dispatch(self, job_id: str) -> None:
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


def worker_app(settings: Settings) -> Celery:
    """The worker process's app: the run-job task, a stale-job sweep once the worker is ready, and on
    warm shutdown running jobs stop at their next progress report and are requeued to resume. One
    database and job context per worker process, made on first use (after a prefork)."""
    from .lifecycle import JobContext, recover_stale, republish_queued, run_job

    app = make_celery(settings)
    context: list[JobContext] = []
    stop_sweeper = threading.Event()

    def ctx() -> JobContext:
        if not context:
            from ..db import Database

            context.append(
                JobContext(settings, Database(settings), dispatch=lambda job_id: task.delay(job_id))
            )
        return context[0]

    @app.task(
        name=RUN_JOB,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        autoretry_for=(ConnectionError,),  # database or broker blips before the job row could be written
        retry_backoff=True,
        max_retries=3,
    )
    def task(self, job_id: str) -> str | None:
        from sqlalchemy.exc import OperationalError

        try:
            return run_job(job_id, ctx())
        except OperationalError as e:  # the database is unreachable: try again later (bounded)
            raise self.retry(exc=e, countdown=5, max_retries=settings.job_max_attempts) from e

    def sweep_forever() -> None:
        while True:
            try:
                recover_stale(ctx())
                republish_queued(ctx())
            except Exception as e:
                log.warning("stale-job sweep failed: %s", e)
            if stop_sweeper.wait(settings.sweep_seconds):
                return

    def start_sweeper(**_) -> None:
        threading.Thread(target=sweep_forever, name="job-sweeper", daemon=True).start()

    def interrupt_jobs(**_) -> None:
        stop_sweeper.set()
        if context:
            context[0].shutdown.set()

    signals.worker_ready.connect(start_sweeper, weak=False)
    signals.worker_shutting_down.connect(interrupt_jobs, weak=False)
    return app
