"""Jobs over HTTP with the in-process runner on SQLite: auth, validation and caps, progress (polling and
SSE), cancel, resume after a restart, recovery of a job whose worker died, rate limit."""

import json
from datetime import UTC, datetime, timedelta

from backend_support import train_step
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from backend.auth import hash_key
from backend.db import Database
from backend.models import ApiKey, Job, Model
from backend.service_cli import apikey_app, db_app

# A few steps of the `test` preset; checkpoints often so a resume has something to resume from.
TINY = {
    "preset": "test",
    "steps": 8,
    "train": {"eval_every": 4, "checkpoint_every": 3, "max_corpus_bytes": 200_000},
}


def long_train(steps=2000):
    return {**TINY, "steps": steps}


def test_auth_validation_and_caps(make_api, database_url):
    api = make_api(max_train_steps=500, database_url=database_url)
    c = api.client
    assert api.post_job("train", TINY, key=None).status_code == 401
    r = api.post_job("train", TINY, key="sce_wrong")
    assert r.status_code == 401 and "invalid" in r.json()["detail"]

    def rejected(kind, params, status=422):
        r = api.post_job(kind, params)
        assert r.status_code == status, r.text
        return r.json()["detail"]

    assert "CIRCUITS_MAX_TRAIN_STEPS" in rejected("train", {"preset": "test", "steps": 501})
    assert "CIRCUITS_MAX_MODEL_PARAMS" in rejected("train", {"preset": "test", "model": {"d_model": 4096}})
    assert "params.train.lr" in rejected("train", {"preset": "test", "train": {"lr": -1}})
    assert "params.model.d_head" in rejected("train", {"preset": "test", "model": {"d_head": "x"}})
    assert "steps" in rejected("train", {"steps": "many"})
    assert "colour" in rejected("train", {"colour": "red"})  # unknown fields are named, not ignored
    assert "preset" in rejected("train", {"preset": "huge"})
    assert "corpus" in rejected("train", {"corpus": "../../etc"})
    assert "model 99 does not exist" in rejected("prune", {"model_id": 99, "task": "single_double_quote"})
    assert "model_id" in rejected("profile", {})
    assert "unknown task" in rejected("prune", {"model_id": 1, "task": "no_such_task"})
    for select_pairs in (-1, 5000, "many"):
        quote = {"model_id": 1, "task": "single_double_quote", "select_pairs": select_pairs}
        assert "select_pairs" in rejected("prune", quote)
    assert "does not match any of the expected tags" in rejected("nonsense", {})
    r = c.post("/api/v1/jobs", content=b"{not json", headers={"x-api-key": api.key})
    assert r.status_code == 422
    r = c.post("/api/v1/jobs", content=b"x" * 2_000_000, headers={"x-api-key": api.key})
    assert r.status_code == 413
    assert c.get("/api/v1/jobs/" + "f" * 32).status_code == 404
    assert c.get("/api/v1/jobs/" + "f" * 500).status_code == 404
    assert c.get("/api/v1/jobs/%00").status_code == 404
    assert c.get("/api/v1/jobs/%00/events").status_code == 404
    assert "CIRCUITS_MAX_BATCH_TOKENS" in rejected(
        "train", {"preset": "test", "train": {"batch_size": 60_000}}
    )
    assert "less than or equal" in rejected("profile", {"model_id": 10**30})
    assert c.get("/api/v1/jobs?status=exploded").status_code == 422
    assert c.get("/api/v1/jobs?limit=0").status_code == 422
    assert c.get("/api/v1/jobs").json() == {"items": [], "total": 0, "limit": 50, "offset": 0}
    # nothing was queued by any rejected request
    db = Database(api.settings)
    with db.session() as s:
        assert s.query(Job).count() == 0
    db.dispose()


def test_train_job_progress_sse_and_model_row(make_api):
    api = make_api()
    job_id = api.submit("train", {**TINY, "name": "tiny"})
    events = []
    with api.client.stream("GET", f"/api/v1/jobs/{job_id}/events?interval=0.2") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[6:])))
    assert events[-1][0] == "end" and events[-1][1]["status"] == "succeeded"
    progress = [e["progress"] for kind, e in events if kind == "progress" and e["status"] == "running"]
    assert len(progress) >= 3 and progress == sorted(progress) and all(0 <= p <= 1 for p in progress)
    assert any(e["stage"] == "train" for _, e in events)
    job = api.job(job_id)
    assert job["progress"] == 1.0 and job["attempts"] == 1 and job["error"] is None
    model_id = job["result"]["model_id"]
    db = Database(api.settings)
    with db.session() as s:
        model = s.get(Model, model_id)
        assert model.name == "tiny" and model.status == "ready" and model.kind == "sparse"
        assert [m["step"] for m in model.metrics] == list(range(1, 9)) and model.summary["steps"] == 8
        assert "val_loss" in model.metrics[3] and model.summary["val_loss"] == model.metrics[-1]["val_loss"]
        assert model.config["train"]["steps"] == 8 and model.n_params > 0
        assert (api.settings.artifact(model.artifact_path) / "model.safetensors").is_file()
    db.dispose()
    listed = api.client.get("/api/v1/jobs?status=succeeded&kind=train").json()
    assert [j["id"] for j in listed["items"]] == [job_id] and listed["total"] == 1
    assert api.client.get("/api/v1/jobs?status=running").json()["total"] == 0
    assert api.post_job("train", {**TINY, "name": "tiny"}).status_code == 409  # the name is taken


def test_cancel_queued_and_running_jobs(make_api):
    api = make_api(inprocess_workers=1)
    running = api.submit("train", long_train())
    queued = api.submit("train", long_train())
    r = api.client.post(f"/api/v1/jobs/{queued}/cancel", headers={"x-api-key": api.key})
    assert r.status_code == 202 and r.json()["status"] == "cancelled"  # no worker held it
    assert api.client.post(f"/api/v1/jobs/{queued}/cancel").status_code == 401
    api.wait(running, lambda j: j["stage"] == "train")
    r = api.client.post(f"/api/v1/jobs/{running}/cancel", headers={"x-api-key": api.key})
    assert r.status_code == 202 and r.json()["cancel_requested"]
    job = api.wait(running, timeout=60)
    assert job["status"] == "cancelled" and train_step(job) < 2000
    r = api.client.post(f"/api/v1/jobs/{running}/cancel", headers={"x-api-key": api.key})
    assert r.status_code == 409 and "already cancelled" in r.json()["detail"]
    assert api.job(queued)["attempts"] == 0  # never started
    db = Database(api.settings)
    with db.session() as s:
        assert job["result"] == {}  # a cancelled training leaves no model
        assert s.scalar(select(func.count()).select_from(Model).where(Model.job_id == running)) == 0
    db.dispose()


def test_interrupted_job_resumes_from_checkpoint_after_restart(make_api):
    api = make_api()
    job_id = api.submit("train", {**TINY, "steps": 60})
    api.wait(job_id, lambda j: train_step(j) >= 4)  # past the checkpoint at step 3
    api.close()  # the server shuts down mid-training
    db = Database(api.settings)
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job.status == "queued" and job.stage == "interrupted"  # honest: waiting to resume
    db.dispose()
    api2 = make_api()  # same data dir: the new process picks the job up again
    job = api2.wait(job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert job["result"]["resumed_from_step"] >= 3


def test_job_of_a_dead_worker_is_requeued_and_finishes(make_api, monkeypatch):
    """A running job whose worker stopped heartbeating (it died) is reported as stalled, then requeued
    by the sweep and run again; a job whose worker died too often fails with a clear error."""
    import threading

    from backend.jobs import service

    sweep_allowed, sweep = threading.Event(), service.recover_stale
    monkeypatch.setattr(service, "recover_stale", lambda ctx: sweep_allowed.wait() and sweep(ctx))
    api = make_api(inprocess_workers=1, sweep_seconds=0.5)  # its sweeps wait until the job was seen
    db = Database(api.settings)
    stale = datetime.now(UTC) - timedelta(minutes=5)
    with db.session() as s:
        for job_id, attempts in (("d" * 32, 1), ("e" * 32, 3)):
            s.add(
                Job(id=job_id, kind="train", params={**TINY, "name": None, "dense": False, "corpus": None,
                    "model": {}}, status="running", attempts=attempts, heartbeat_at=stale, worker="gone:1")
            )  # fmt: skip
    try:
        first = api.job("d" * 32)  # before the sweep: running, but flagged as stalled
        assert first["status"] == "running" and first["stalled"] and first["attempts"] == 1
    finally:
        sweep_allowed.set()
    job = api.wait("d" * 32)
    assert job["status"] == "succeeded" and job["attempts"] == 2 and not job["stalled"]
    failed = api.wait("e" * 32)
    assert failed["status"] == "failed" and "gave up after 3 attempts" in failed["error"]
    db.dispose()


def test_rate_limit_per_key(make_api):
    api = make_api(job_rate_limit=2, inprocess_workers=1)
    first = api.submit("train", long_train())
    second = api.submit("train", long_train())
    r = api.post_job("train", long_train())
    assert r.status_code == 429 and "CIRCUITS_JOB_RATE_LIMIT" in r.json()["detail"]
    assert int(r.headers["retry-after"]) > 0
    for job_id in (second, first):
        api.client.post(f"/api/v1/jobs/{job_id}/cancel", headers={"x-api-key": api.key})
    assert api.wait(first, timeout=60)["status"] == "cancelled"


def test_cli_apikey_and_db_upgrade(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITS_DATA_DIR", str(tmp_path / "d"))
    cli = CliRunner()
    r = cli.invoke(db_app, ["upgrade"])
    assert r.exit_code == 0, r.output
    r = cli.invoke(apikey_app, ["create", "--name", "alice"])
    assert r.exit_code == 0, r.output
    key = r.stdout.strip()
    assert key.startswith("sce_") and len(key) > 40
    from backend.settings import Settings

    db = Database(Settings())
    with db.session() as s:
        rows = s.query(ApiKey).all()
        assert [(k.name, k.key_hash) for k in rows] == [("alice", hash_key(key))]  # only the hash is stored
        s.execute(update(ApiKey).values(name="alice"))
    db.dispose()
    assert "alice" in cli.invoke(apikey_app, ["list"]).stdout
    r = cli.invoke(apikey_app, ["revoke", key[:10]])
    assert r.exit_code == 0 and "revoked" in r.stdout
    assert "revoked" in cli.invoke(apikey_app, ["list"]).stdout


def test_train_profile_prune_jobs_store_compact_rows(make_api):
    import numpy as np
    from safetensors.torch import load_file
    from sqlalchemy import func, select

    from backend.models import ActivationExample, Circuit, CorpusDocument, NodeStat
    from worker.engine.sites import parse_node

    api = make_api()
    model_id = api.wait(api.submit("train", {**TINY, "steps": 20}))["result"]["model_id"]
    job = api.wait(api.submit("profile", {"model_id": model_id, "tokens": 8192, "context": 4}))
    assert job["status"] == "succeeded", job["error"]
    folder = api.settings.artifact(f"models/{model_id}")
    means = load_file(str(folder / "means.safetensors"))
    db = Database(api.settings)
    with db.session() as s:
        stats = {n.name: n for n in s.scalars(select(NodeStat).where(NodeStat.model_id == model_id))}
        assert len(stats) == sum(len(v) for v in means.values()) == job["result"]["nodes"]
        node = stats["0.mlp.post_act[5]"]
        assert node.site == "0.mlp.post_act" and node.layer == 0 and node.index == 5
        assert abs(node.mean - float(means["0.mlp.post_act"][5])) < 1e-6 and 0 <= node.frequency <= 1
        assert set(node.quantiles) >= {"0.5", "0.99"} and "top_0.1" in node.thresholds
        examples = s.scalars(select(ActivationExample).where(ActivationExample.model_id == model_id)).all()
        assert len(examples) == job["result"]["examples"] > len(stats)
        assert {e.bin for e in examples} >= {"top_0.1", "top_1", "top_10", "top_50", "bottom_0.1"}
        ex = max((e for e in examples if e.bin == "top_0.1"), key=lambda e: e.activation)
        tokens = np.frombuffer(ex.token_ids, dtype="<i4")
        values = np.frombuffer(ex.values, dtype="<f2")
        assert len(tokens) == len(values) <= 9 and 0 <= ex.center < len(tokens)
        assert abs(float(values[ex.center]) - ex.activation) <= 1e-2 * max(1.0, abs(ex.activation))
        doc = s.get(CorpusDocument, ex.document_id)
        assert 0 <= ex.offset < ex.end <= len(doc.text)  # the window's text, stored once
        assert s.scalar(select(func.count()).select_from(CorpusDocument)) == job["result"]["documents"]

    prune = {"model_id": model_id, "task": "single_double_quote", "steps": 4, "runs": 1, "eval_pairs": 32}
    prune.update(batch_pairs=16, curve_points=3, curve_pairs=32)
    job = api.wait(api.submit("prune", prune))
    assert job["status"] == "succeeded", job["error"]
    with db.session() as s:
        circuit = s.get(Circuit, job["result"]["circuit_id"])
        assert circuit.model_id == model_id and circuit.task.name == "single_double_quote"
        assert circuit.n_nodes == len(circuit.nodes) > 0 and circuit.n_edges == len(circuit.edges)
        assert all(n.name in stats and parse_node(n.name) == (n.site, n.index) for n in circuit.nodes)
        assert set(circuit.losses) >= {"full", "circuit", "ablated"} and len(circuit.curve) >= 2
        assert circuit.params["steps"] == 4 and circuit.job_id == job["id"]
    db.dispose()


def test_redelivered_or_duplicate_messages_are_no_ops(make_api):
    """A job's row is claimed atomically: a second delivery of a finished, cancelled or running job
    does nothing (Redis redelivers unacked messages; the stale-job sweep may send another)."""
    from backend_support import FAST

    from backend.jobs.lifecycle import JobContext, run_job
    from backend.settings import Settings

    api = make_api()
    job_id = api.submit("train", TINY)
    done = api.wait(job_id)
    other = JobContext(
        Settings(data_dir=api.settings.data_dir, **FAST), Database(api.settings), lambda _: None
    )
    assert run_job(job_id, other) is None
    assert api.job(job_id) == done
    db = Database(api.settings)
    with db.session() as s:  # a job running elsewhere (fresh heartbeat) is not taken over
        s.add(Job(id="c" * 32, kind="train", params=done["params"], status="running", attempts=1,
                  heartbeat_at=datetime.now(UTC), claim="x" * 32))  # fmt: skip
    assert run_job("c" * 32, other) is None
    with db.session() as s:
        job = s.get(Job, "c" * 32)
        assert (job.status, job.attempts, job.claim) == ("running", 1, "x" * 32)
    db.dispose()
    other.db.dispose()


def test_serve_migrates_and_answers(tmp_path):
    """`serve` with the embedded defaults: creates the SQLite schema, serves the API, stops on SIGTERM."""
    import os
    import subprocess
    import sys
    import time

    import httpx
    from backend_support import ROOT, free_port

    port = free_port()
    env = {**os.environ, "CIRCUITS_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    code = "from backend.service_cli import serve; import typer; typer.run(serve)"
    proc = subprocess.Popen([sys.executable, "-c", code, "--port", str(port)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.2)
        r = httpx.get(f"http://127.0.0.1:{port}/api/v1/jobs")
        assert r.status_code == 200 and r.json()["total"] == 0
        assert (tmp_path / "data" / "circuits.db").is_file()
        assert "/api/v1/jobs" in httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["paths"]
    finally:
        proc.terminate()
        proc.wait(30)
    assert "Application shutdown complete" in proc.stdout.read().decode()  # graceful (lifespan ran)


def test_reads_can_require_a_key(make_api):
    api = make_api(reads_require_key=True)
    assert api.client.get("/api/v1/jobs").status_code == 401
    assert api.client.get("/api/v1/jobs", headers={"x-api-key": api.key}).status_code == 200
    assert api.client.get("/api/v1/health").status_code == 200  # liveness stays open
    schemes = api.client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "Create one with `circuits apikey create`.",
    }


def test_sweep_without_a_reachable_queue_leaves_the_job_visibly_stalled(make_api):
    from backend_support import FAST

    from backend.jobs.lifecycle import JobContext, recover_stale
    from backend.settings import Settings

    api = make_api(sweep_seconds=3600)  # only this test's sweep runs

    def broken_queue(job_id):
        raise ConnectionError("broker down")

    settings = Settings(data_dir=api.settings.data_dir, **FAST)
    ctx = JobContext(settings, Database(settings), broken_queue)
    old = datetime.now(UTC) - timedelta(minutes=5)
    with ctx.db.session() as s:
        s.add(Job(id="f" * 32, kind="profile", params={"model_id": 1}, status="running", heartbeat_at=old))
    assert recover_stale(ctx) == ["f" * 32]
    job = api.job("f" * 32)
    assert job["status"] == "running" and job["stalled"] and job["heartbeat_at"] is None
    assert "waiting for the job queue" in job["message"]
    ctx.db.dispose()
