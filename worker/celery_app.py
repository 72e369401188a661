"""The Celery worker's entry point, a thin wrapper over the job registry (backend/jobs/queue.py holds
the task, the sweep and the shutdown handling). Run with `circuits worker` (or
`celery -A worker.celery_app worker --pool solo`)."""

from backend.jobs.queue import worker_app
from backend.settings import get_settings

app = worker_app(get_settings())
