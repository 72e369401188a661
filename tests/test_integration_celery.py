"""Real Redis, real PostgreSQL, a real Celery worker process: train -> profile -> prune over HTTP on
the `test` preset, with the worker killed (-9) in the middle of training; then Redis stopped."""

import time
from pathlib import Path

import pytest
from backend_support import (
    FAST,
    Api,
    CeleryWorker,
    RedisServer,
    create_postgres_database,
    drop_postgres_database,
    train_step,
)
from safetensors import safe_open
from sqlalchemy import func, select

from backend.db import Database
from backend.models import ActivationExample, Circuit, Job, Model, NodeStat
from backend.settings import Settings
from worker.engine.checkpoints import CHECKPOINT

STATES = ("queued", "running", "succeeded", "failed", "cancelled")


@pytest.fixture
def stack(request, tmp_path):
    """Each test's own Redis, PostgreSQL database and API (a test may stop its Redis); settings beyond
    FAST come from an indirect parameter."""
    tmp = tmp_path
    redis = RedisServer()
    url, name = create_postgres_database()
    # Redis would redeliver the killed worker's unacked message only after the visibility timeout (an
    # hour): recovery has to come from the workers' stale-job sweep.
    extra = getattr(request, "param", {})
    settings = Settings(data_dir=tmp / "data", database_url=url, broker_url=redis.url, **(FAST | extra))
    api = Api(settings)
    workers = []

    def start_worker() -> CeleryWorker:
        w = CeleryWorker(settings, tmp / "worker.log")
        workers.append(w)
        return w

    yield api, redis, start_worker, tmp / "worker.log"
    api.close()
    for w in workers:
        w.stop()
    redis.stop()
    drop_postgres_database(name)


def worker_log(path) -> str:
    return path.read_text()[-4000:] if path.exists() else ""


def test_train_profile_prune_with_a_worker_killed_mid_training(stack):
    api, _, start_worker, log = stack
    worker = start_worker()
    params = {
        "preset": "test",
        "steps": 80,
        "name": "celery-test",
        "train": {"checkpoint_every": 10, "eval_every": 40, "max_corpus_bytes": 300_000},
    }
    job_id = api.submit("train", params)
    seen = []
    try:
        api.wait(
            job_id, lambda j: train_step(j) >= 14 or j["status"] not in STATES[:2], timeout=120, seen=seen
        )
    except AssertionError:
        raise AssertionError(worker_log(log)) from None
    assert seen[-1]["status"] == "running", seen[-1]
    worker.kill9()
    # The step the restarted worker must resume from is the killed one's last checkpoint on disk (the
    # reported step lags the worker's own, so it is no bound: the worker may save a checkpoint past it).
    (checkpoint,) = Path(api.settings.data_dir).rglob(CHECKPOINT)
    with safe_open(checkpoint, "pt") as f:
        saved_at = int(f.metadata()["step"])

    # Nobody is running it now: the job must not claim success or failure, and soon says it stalled.
    dead = api.wait(job_id, lambda j: j["stalled"], timeout=30, seen=seen)
    assert dead["status"] == "running" and dead["attempts"] == 1

    start_worker()
    done = api.wait(job_id, timeout=180, seen=seen)
    assert done["status"] == "succeeded", (done, worker_log(log))
    assert done["attempts"] == 2 and done["progress"] == 1.0
    assert 10 <= saved_at == done["result"]["resumed_from_step"]  # the last checkpoint, not step 0
    statuses = [j["status"] for j in seen]
    assert set(statuses) <= {"queued", "running", "succeeded"}
    assert "succeeded" not in statuses[: statuses.index("succeeded")]  # never claimed success early
    model_id = done["result"]["model_id"]

    profile = api.wait(
        api.submit("profile", {"model_id": model_id, "tokens": 8192, "context": 4}), timeout=180
    )
    assert profile["status"] == "succeeded", (profile, worker_log(log))
    prune = {"model_id": model_id, "task": "single_double_quote", "steps": 4, "runs": 1, "eval_pairs": 32}
    prune.update(batch_pairs=16, curve_points=3, curve_pairs=32)
    pruned = api.wait(api.submit("prune", prune), timeout=240)
    assert pruned["status"] == "succeeded", (pruned, worker_log(log))

    db = Database(api.settings)
    with db.session() as s:
        model = s.get(Model, model_id)
        assert model.status == "ready" and model.profiled and model.name == "celery-test"
        assert [m["step"] for m in model.metrics] == list(range(1, 81))  # resumed run: no gap, no repeat
        n_stats = s.scalar(select(func.count()).select_from(NodeStat).where(NodeStat.model_id == model_id))
        assert n_stats == profile["result"]["nodes"] > 0
        n_examples = s.scalar(
            select(func.count()).select_from(ActivationExample).where(ActivationExample.model_id == model_id)
        )
        assert n_examples == profile["result"]["examples"] > 0
        circuit = s.get(Circuit, pruned["result"]["circuit_id"])
        assert circuit.model_id == model_id and circuit.n_nodes == len(circuit.nodes) > 0
    db.dispose()


LOST_MESSAGE = {"republish_after_seconds": 3.0, "stale_after_seconds": 120.0}  # no stale-job recovery here


@pytest.mark.parametrize("stack", [LOST_MESSAGE], indirect=True)
def test_a_queued_job_whose_message_was_lost_is_republished_and_runs(stack):
    api, redis, start_worker, log = stack
    job_id = api.submit("train", {"preset": "test", "steps": 4, "train": {"max_corpus_bytes": 100_000}})
    first_published = published_at(api, job_id)
    assert int(redis.command("LLEN", "circuits")[1:].split()[0]) == 1  # its message waits in the queue
    assert redis.command("FLUSHALL").startswith(b"+OK")  # as a Redis restarted without persistence
    assert api.job(job_id)["status"] == "queued"
    start_worker().wait_ready(600)  # it finds no message; only the sweeper's republish brings the job
    try:
        done = api.wait(job_id, timeout=300)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{worker_log(log)}") from None
    assert done["status"] == "succeeded" and done["attempts"] == 1, (done, worker_log(log))
    assert (published_at(api, job_id) - first_published).total_seconds() >= 3.0  # republish_after_seconds


def published_at(api, job_id: str):
    db = Database(api.settings)
    with db.session() as s:
        when = s.get(Job, job_id).published_at
    db.dispose()
    assert when is not None
    return when


def test_redis_down_reads_work_and_submission_is_503(stack):
    api, redis, _, _ = stack
    api.submit("train", {"preset": "test", "steps": 5})  # queued (no worker runs): something to read
    jobs = api.client.get("/api/v1/jobs").json()
    assert jobs["total"] == 1
    redis.stop()
    assert api.client.get("/api/v1/health").status_code == 200
    r = api.client.get("/api/v1/jobs")
    assert r.status_code == 200 and r.json()["total"] == jobs["total"]
    for job in jobs["items"]:
        assert api.client.get(f"/api/v1/jobs/{job['id']}").status_code == 200
    t = time.monotonic()
    r = api.post_job("train", {"preset": "test", "steps": 5})
    assert time.monotonic() - t < 15
    assert r.status_code == 503, r.text
    detail = r.json()["detail"]
    assert "job queue unavailable" in detail and redis.url in detail and "reads still work" in detail
    assert api.client.get("/api/v1/jobs").json()["total"] == jobs["total"]  # nothing half-queued
