"""Holding up under load and bad input (issue 14): interactive forward passes bounded (own threads,
503 when full, a work cap, a rate limit for anonymous callers) while reads go on; the job rate limit
atomic; caps as one budget over the full config; every number finite and bounded; only a job's own key
cancels it; jobs of a dead process recovered at once; a cancelled train leaves no model; job errors
without tracebacks; no orphaned corpus documents; the API's 405s its own."""

import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from backend_support import register_model
from sqlalchemy import func, select, update

from backend.auth import create_api_key
from backend.db import Database
from backend.interactive import TokenBuckets
from backend.jobs.lifecycle import describe_failure
from backend.models import ActivationExample, CorpusDocument, Job, Model

API = "/api/v1"
TINY = {"preset": "test", "steps": 8, "train": {"eval_every": 4, "checkpoint_every": 3}}


def long_train(steps=2000):
    return {**TINY, "steps": steps}


# ---------------------------------------------------------------- interactive forward passes


def test_interactive_requests_are_bounded_and_reads_do_not_wait(api_backend):
    c, app = api_backend.client, api_backend.client.app
    work, settings = app.state.interactive, app.state.settings
    ablate = f"{API}/circuits/{api_backend.circuit_id}/ablate"
    assert c.post(ablate, json={"pairs": 8}).status_code == 200  # warm
    slots = settings.interactive_workers + settings.interactive_queue
    gate = threading.Event()
    for _ in range(slots):  # every interactive thread busy, every waiting place taken
        assert work.slots.acquire(blocking=False)
    busy = [work.pool.submit(gate.wait) for _ in range(settings.interactive_workers)]
    try:
        t0 = time.perf_counter()
        r = c.post(ablate, json={"pairs": 8})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "CIRCUITS_INTERACTIVE_WORKERS" in r.json()["detail"]
        r = c.post(
            f"{API}/models/{api_backend.model_id}/playground",
            json={"prompt": "x = 1", "nodes": ["0.mlp.post_act[1]"]},
        )
        assert r.status_code == 503
        r = c.get(f"{API}/tasks/single_double_quote/samples?model_id={api_backend.model_id}")
        assert r.status_code == 503
        assert time.perf_counter() - t0 < 5
        t0 = time.perf_counter()  # reads are served while every interactive thread is blocked
        assert c.get(f"{API}/models").status_code == 200
        assert c.get(f"{API}/circuits/{api_backend.circuit_id}").status_code == 200
        assert time.perf_counter() - t0 < 5
    finally:
        gate.set()
        for f in busy:
            f.result(10)
        for _ in range(slots):
            work.slots.release()
    assert c.post(ablate, json={"pairs": 8}).status_code == 200


def test_anonymous_callers_are_rate_limited_and_work_is_capped(api_backend):
    c, app = api_backend.client, api_backend.client.app
    work, settings = app.state.interactive, app.state.settings
    playground = f"{API}/models/{api_backend.model_id}/playground"
    body = {"prompt": "x = 'a'", "nodes": ["0.mlp.post_act[1]"]}
    key = {"x-api-key": api_backend.key}
    buckets, work.buckets = work.buckets, TokenBuckets(rate=0.05, burst=2)
    try:
        assert [c.post(playground, json=body).status_code for _ in range(2)] == [200, 200]
        r = c.post(playground, json=body)
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 20, r.text
        assert "without an x-api-key" in r.json()["detail"]
        assert c.post(playground, json=body, headers=key).status_code == 200  # keys are not limited
        r = c.post(playground, json=body, headers={"x-api-key": "sce_wrong"})
        assert r.status_code == 401
    finally:
        work.buckets = buckets
    limit, settings.interactive_max_tokens = settings.interactive_max_tokens, 1000
    try:  # 2 passes x 2 prompts x 64 pairs x n_ctx 64 = 16,384 tokens
        r = c.post(f"{API}/circuits/{api_backend.circuit_id}/ablate", json={"pairs": 64}, headers=key)
        assert r.status_code == 422 and "16,384 exceeds the limit 1,000" in r.json()["detail"], r.text
        assert "CIRCUITS_INTERACTIVE_MAX_TOKENS" in r.json()["detail"]
    finally:
        settings.interactive_max_tokens = limit


def test_token_bucket_refills_at_its_rate():
    b = TokenBuckets(rate=10.0, burst=3)
    assert [b.take("a") for _ in range(3)] == [0, 0, 0]
    wait = b.take("a")
    assert 0 < wait <= 0.1
    assert b.take("b") == 0  # per client
    time.sleep(0.25)
    assert b.take("a") == 0


# ---------------------------------------------------------------- jobs: rate limit, caps, numbers


def test_job_rate_limit_holds_under_concurrent_submissions(make_api, database_url):
    api = make_api(job_rate_limit=3, database_url=database_url)
    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda _: api.post_job("train", long_train()).status_code, range(20)))
    assert sorted(codes) == [202] * 3 + [429] * 17, codes
    db = Database(api.settings)
    with db.session() as s:
        job_ids = s.scalars(select(Job.id)).all()
    db.dispose()
    assert len(job_ids) == 3
    for job_id in job_ids:
        api.client.post(f"{API}/jobs/{job_id}/cancel", headers={"x-api-key": api.key})


def test_caps_are_one_budget_over_the_full_config(make_api, dense_test_model):
    api = make_api(max_corpus_bytes=100_000, max_job_flops=1e13)

    def rejected(kind, params):
        r = api.post_job(kind, params)
        assert r.status_code == 422, r.text
        return r.json()["detail"]

    small_corpus = {"max_corpus_bytes": 50_000}
    detail = rejected("train", {"preset": "test", "train": {"max_corpus_bytes": None}})
    assert "CIRCUITS_MAX_CORPUS_BYTES" in detail
    # Each cap alone passes (batch_size * n_ctx = 262,144, ~5 M parameters); attention over 256 heads
    # of 2048 x 2048 positions for 128 sequences does not fit in memory.
    huge = {"n_ctx": 2048, "d_model": 256, "d_head": 1, "n_layer": 4}
    detail = rejected(
        "train", {"preset": "test", "model": huge, "train": {"batch_size": 128, **small_corpus}}
    )
    assert "estimated peak memory" in detail and "CIRCUITS_MAX_JOB_MEMORY_BYTES" in detail, detail
    detail = rejected("train", {"preset": "test", "steps": 20_000, "train": small_corpus})
    assert "estimated compute 1.6" in detail and "CIRCUITS_MAX_JOB_FLOPS" in detail, detail
    # A bridge trains on its dense model's data: a dense model trained on the whole corpus is refused.
    dense_id = register_model(api.settings, dense_test_model, "dense-whole-corpus")
    db = Database(api.settings)
    with db.session() as s:
        row = s.get(Model, dense_id)
        config = {**row.config, "train": {**row.config["train"], "max_corpus_bytes": None}}
        s.execute(update(Model).where(Model.id == dense_id).values(config=config))
    detail = rejected("bridge", {"dense_model_id": dense_id, "preset": "test", "steps": 4})
    assert "CIRCUITS_MAX_CORPUS_BYTES" in detail
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
    db.dispose()


@pytest.mark.parametrize(
    "kind, raw, field",
    [
        ("prune", '"k_coef": Infinity', "k_coef"),
        ("prune", '"lr": 1e308', "lr"),
        ("train", '"train": {"beta1": NaN}', "beta1"),
        ("train", '"train": {"seed": 1e29}', "seed"),
        ("train", '"model": {"mlp_ratio": 100000}', "mlp_ratio"),
        ("profile", '"seed": -1', "seed"),
    ],
)
def test_non_finite_and_unbounded_numbers_are_rejected(make_api, kind, raw, field):
    api = make_api()
    base = '"model_id": 1, "task": "single_double_quote", ' if kind == "prune" else ""
    base = '"model_id": 1, ' if kind == "profile" else base
    body = '{"kind": "' + kind + '", "params": {' + base + raw + "}}"
    r = api.client.post(
        f"{API}/jobs", content=body, headers={"x-api-key": api.key, "content-type": "application/json"}
    )
    assert r.status_code == 422 and field in r.json()["detail"], r.text
    db = Database(api.settings)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
        assert s.scalar(select(func.count()).select_from(Model)) == 0
    db.dispose()


def numeric_fields(doc: dict, schema: dict, path: str, seen=frozenset()):
    """(path, schema) of every number and integer in a schema, following $refs."""
    if "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        if name not in seen:
            yield from numeric_fields(doc, doc["components"]["schemas"][name], path, seen | {name})
        return
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            yield from numeric_fields(doc, sub, path, seen)
    if schema.get("type") in ("number", "integer"):
        yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from numeric_fields(doc, sub, f"{path}.{name}", seen)
    if "items" in schema:
        yield from numeric_fields(doc, schema["items"], f"{path}[]", seen)


def test_every_number_of_every_request_body_is_bounded(make_api):
    """Also covers fields added later: each needs a minimum and a maximum (and NaN/inf are refused)."""
    doc = make_api().client.get("/openapi.json").json()
    unbounded, bodies = [], 0
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body is None:
                continue
            bodies += 1
            for field, schema in numeric_fields(doc, body, f"{method.upper()} {path}"):
                low = "minimum" in schema or "exclusiveMinimum" in schema
                high = "maximum" in schema or "exclusiveMaximum" in schema
                if not (low and high):
                    unbounded.append(field)
    assert bodies >= 5  # jobs, tasks, playground, ablate, steer
    assert unbounded == []


def test_error_responses_are_documented_as_sent(make_api):
    """Error bodies are JSON on every route (the event stream's 404 too), a body may be refused as not
    JSON (400) or too large (413), and every route reaching the database may answer 503."""
    doc = make_api().client.get("/openapi.json").json()
    events = doc["paths"]["/api/v1/jobs/{job_id}/events"]["get"]["responses"]
    assert list(events["200"]["content"]) == ["text/event-stream"]
    assert list(events["404"]["content"]) == ["application/json"]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            responses = op["responses"]
            if "requestBody" in op:
                assert {"400", "413", "422"} <= set(responses), (method, path)
            assert ("503" in responses) == (path != "/api/v1/health"), (method, path)
            for code, response in responses.items():
                if code >= "400":
                    assert list(response["content"]) == ["application/json"], (method, path, code)


# ---------------------------------------------------------------- jobs: ownership, lifecycle


def test_only_the_submitting_key_cancels_a_job(make_api):
    api = make_api()
    db = Database(api.settings)
    with db.session() as s:
        _, other = create_api_key(s, "someone else")
    db.dispose()
    job_id = api.submit("train", long_train())
    url = f"{API}/jobs/{job_id}/cancel"
    assert api.client.post(url).status_code == 401
    r = api.client.post(url, headers={"x-api-key": other})
    assert r.status_code == 403 and "another API key" in r.json()["detail"]
    assert api.job(job_id)["cancel_requested"] is False
    assert api.client.post(url, headers={"x-api-key": api.key}).status_code == 202


def test_a_cancelled_train_leaves_no_model(make_api):
    api = make_api()
    job_id = api.submit("train", long_train())
    job = api.wait(job_id, lambda j: j["status"] == "running" and j["result"].get("model_id"))
    model_id = job["result"]["model_id"]
    assert api.client.get(f"{API}/models/{model_id}").json()["status"] == "training"
    api.client.post(f"{API}/jobs/{job_id}/cancel", headers={"x-api-key": api.key})
    assert api.wait(job_id)["status"] == "cancelled"
    assert api.client.get(f"{API}/models/{model_id}").status_code == 404
    assert not api.settings.artifact(f"models/{model_id}").exists()


def test_a_failed_jobs_error_has_no_traceback():
    try:
        {}["missing"]
    except KeyError as e:
        error = describe_failure(e)
    assert error.startswith("KeyError: 'missing'")
    assert "Traceback" not in error and "File " not in error and __file__ not in error


def test_jobs_of_a_dead_process_are_stalled_and_recovered_at_once(make_api):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    api = make_api(stale_after_seconds=600)  # only the process check can notice it
    db = Database(api.settings)
    with db.session() as s:  # as a process killed mid-job leaves it: running, a fresh heartbeat
        row = Job(
            id="d" * 32,
            kind="train",
            params={**TINY, "steps": 4},
            status="running",
            stage="train",
            message="step 2/4",
            attempts=1,
            claim="0" * 32,
            worker=f"{socket.gethostname()}:{dead.pid}:deadbeef",
            heartbeat_at=datetime.now(UTC),
        )
        s.add(row)
    db.dispose()
    seen = []
    job = api.wait("d" * 32, seen=seen, timeout=120)
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    first = seen[0]
    assert first["status"] != "running" or first["stalled"] is True, first


def test_repeated_profiles_leave_no_orphaned_documents(make_api, api_world):
    from backend.jobs.store import write_profile
    from worker.engine import activations as act
    from worker.engine.checkpoints import load_model
    from worker.engine.data import load_corpus, split_corpus

    api = make_api()
    model_id = register_model(api.settings, api_world["folder"], "profiled")
    model, tok, run = load_model(api_world["folder"])
    docs, _ = split_corpus(load_corpus(run.train.corpus, run.train.max_corpus_bytes), run.train.val_percent)
    cfg = act.ProfileConfig(tokens=2048, batch_tokens=2048, context=2, sample_positions=512, exact=4, seed=7)
    windows = act.corpus_windows(tok, docs, cfg.tokens // model.cfg.n_ctx, model.cfg.n_ctx, cfg.seed)
    other = act.profile_windows(model, windows, cfg, sites=["0.mlp.post_act"])
    db = Database(api.settings)
    for profile in (api_world["profile"], other, api_world["profile"]):
        with db.session() as s:
            write_profile(s, model_id, profile, "stdlib")
    with db.session() as s:
        used = select(func.count(func.distinct(ActivationExample.document_id)))
        assert s.scalar(select(func.count()).select_from(CorpusDocument)) == s.scalar(used) > 0
    db.dispose()


# ---------------------------------------------------------------- the API's own errors


def test_wrong_methods_on_api_routes_get_the_apis_405(make_api):
    c = make_api().client
    for method in ("PUT", "DELETE", "PATCH"):
        r = c.request(method, f"{API}/jobs")
        assert r.status_code == 405 and "POST" in r.headers["allow"], r.headers  # not the static files'
        assert r.headers["content-type"] == "application/json"
    r = c.request("OPTIONS", f"{API}/circuits/1/ablate")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = c.get(f"{API}/no-such-thing")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"


def test_a_read_that_lost_its_database_connection_is_answered_by_its_retry(tmp_path):
    """The retried read gets the request again (it used to wait forever for a message already read)."""
    import asyncio
    import concurrent.futures

    import httpx
    from sqlalchemy.exc import OperationalError

    from backend.app import create_app
    from backend.settings import Settings

    app, calls = create_app(Settings(data_dir=tmp_path / "data")), []

    @app.get(f"{API}/flaky")
    def flaky() -> dict:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return {"calls": len(calls)}

    async def read():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            return await asyncio.wait_for(client.get(f"{API}/flaky"), timeout=10)

    # Its own thread: a browser test's Playwright may hold this thread's event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        r = pool.submit(asyncio.run, read()).result(timeout=20)
    assert r.status_code == 200 and r.json() == {"calls": 2}
    assert "x-circuits-retryable" not in r.headers
