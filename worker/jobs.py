"""Job bodies and their lifecycle, shared by the Celery worker and the in-process runner.

run_job(job_id, ctx) is the whole contract: it claims the job row atomically (so a redelivered message
or a second worker never runs a job twice), keeps a heartbeat while the body runs, writes progress,
and commits the results together with the final status. A job whose worker died has a stale heartbeat;
recover_stale() puts it back in the queue and the next attempt resumes (training from its checkpoint).
Job code never knows which runner called it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from backend.db import Database
from backend.models import (
    ActivationExample,
    Circuit,
    CircuitEdge,
    CircuitNode,
    CorpusDocument,
    Job,
    JobStatus,
    Model,
    ModelKind,
    ModelStatus,
    NodeStat,
    Task,
    Transcoder,
)
from backend.schemas import (
    PARAMS_BY_KIND,
    BridgeParams,
    ProfileParams,
    PruneParams,
    TrainParams,
    TranscoderParams,
)
from backend.settings import Settings

log = logging.getLogger("circuits.jobs")
METRICS_POINTS = 1000  # training curve points kept in the Model row (eval records always kept)


class JobCancelled(Exception):
    pass


class JobInterrupted(Exception):
    """The process is shutting down: put the job back in the queue."""


class JobLost(Exception):
    """Another attempt owns the job now (we were presumed dead): stop without writing anything."""


def now() -> datetime:
    return datetime.now(UTC)


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean bad input or state, reported as the job's error without a traceback."""
    from worker.engine.checkpoints import CheckpointError
    from worker.engine.tasks import TaskError
    from worker.engine.train import TrainError

    return (ValueError, ValidationError, CheckpointError, TaskError, TrainError, FileNotFoundError)


@dataclass
class JobContext:
    """What a job needs from its runner: settings, database, and how to queue a job again."""

    settings: Settings
    db: Database
    dispatch: Callable[[str], None]
    shutdown: threading.Event = field(default_factory=threading.Event)
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


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
            self.touch(progress=min(max(fraction, 0.0), 1.0), stage=stage[:64], message=message)
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


def job_device(settings: Settings) -> str:
    """CIRCUITS_DEVICE for training and profiling ("auto": a GPU if there is one). Pruning runs on CPU."""
    if settings.device != "auto":
        return settings.device
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
    if job.attempts > ctx.settings.job_max_attempts:
        with ctx.db.session() as s:
            Attempt(ctx, job_id, token).finish(
                s,
                JobStatus.failed,
                stage="failed",
                error=f"gave up after {job.attempts - 1} attempts whose worker was lost",
                message="worker lost too often",
            )
            unfinished(s, job.kind, job_id)
        return JobStatus.failed
    limit_torch_threads(ctx.settings)
    body = BODIES[job.kind]
    params = PARAMS_BY_KIND[job.kind].model_validate(job.params)
    with Attempt(ctx, job_id, token) as attempt:
        try:
            try:
                body(ctx, job, params, attempt)
                return JobStatus.succeeded
            except JobCancelled:
                with ctx.db.session() as s:
                    attempt.finish(s, JobStatus.cancelled, stage="cancelled", message="cancelled on request")
                    unfinished(s, job.kind, job_id)
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
                    unfinished(s, job.kind, job_id)
                return JobStatus.failed
        except JobLost:
            log.warning("job %s: claim lost (presumed dead); stopped without writing results", job_id)
            return None


def describe_failure(e: Exception) -> str:
    """Bad input: its one-line message. Anything else: type, message and a short traceback (logged)."""
    if isinstance(e, user_errors()) and str(e).strip():
        return str(e).strip().splitlines()[0]
    log.error("job failed", exc_info=e)
    return f"{type(e).__name__}: {e}\n{''.join(traceback.format_exception(e, limit=8))}"


def dispatch_or_park(ctx: JobContext, job_id: str) -> None:
    """Send a requeued job to the runner. If the queue cannot be reached, park the job as running
    without a heartbeat: it reads as stalled, and the stale-job sweep retries (a queued job with no
    queue message would wait forever)."""
    try:
        ctx.dispatch(job_id)
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


def recover_stale(ctx: JobContext) -> list[str]:
    """Requeue running jobs whose worker stopped heartbeating (it died); returns their ids."""
    stale = now() - timedelta(seconds=ctx.settings.stale_after_seconds)
    dead = and_(Job.status == JobStatus.running, or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale))
    requeued = []
    with ctx.db.session() as s:
        for job in s.scalars(select(Job).where(dead)).all():
            if job.cancel_requested:
                values = {"status": JobStatus.cancelled, "finished_at": now(), "stage": "cancelled"}
                values["message"] = "cancelled (its worker was lost)"
            else:
                since = f"since {job.heartbeat_at:%H:%M:%S} UTC" if job.heartbeat_at else "at all"
                values = {"status": JobStatus.queued, "claim": None, "stage": "requeued"}
                values["message"] = f"worker {job.worker} lost (no heartbeat {since}); queued to resume"
            if s.execute(update(Job).where(Job.id == job.id, dead).values(**values)).rowcount:
                if values["status"] == JobStatus.queued:
                    requeued.append(job.id)
                else:
                    unfinished(s, job.kind, job.id)
    for job_id in requeued:
        log.warning("job %s: worker lost; requeued", job_id)
        dispatch_or_park(ctx, job_id)
    return requeued


# ---------------------------------------------------------------- train


def _thin(records: list[dict], points: int = METRICS_POINTS) -> list[dict]:
    """At most `points` records, evenly spaced, always keeping evaluation records and the last one."""
    if len(records) <= points:
        return records
    stride = -(-len(records) // points)
    return [r for i, r in enumerate(records) if i % stride == 0 or "val_loss" in r or i == len(records) - 1]


def _read_metrics(folder: Path) -> list[dict]:
    import json

    from worker.engine.checkpoints import METRICS

    path = folder / METRICS
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def _summary(metrics: list[dict]) -> dict:
    summary = {}
    for rec in metrics:
        for key in ("loss", "val_loss", "train_eval_loss", "l0", "dead_neurons", "density", "tokens_per_s"):
            if key in rec:
                summary[key] = rec[key]
    summary["steps"] = metrics[-1]["step"] if metrics else 0
    return summary


def build_run_config(params: TrainParams, settings: Settings):
    """The RunConfig a train job will use (also used at submission to check the caps)."""
    from worker.engine.config import ModelConfig, RunConfig, TrainConfig, preset

    run = preset(params.preset, dense=params.dense, steps=params.steps)
    train_updates = dict(params.train)
    if params.corpus is not None:
        train_updates["corpus"] = str(settings.data_dir / "corpora" / params.corpus)
    if train_updates.get("max_corpus_bytes") is None and run.train.max_corpus_bytes is None:
        train_updates["max_corpus_bytes"] = settings.max_corpus_bytes
    parts = {}
    for section, cls, base, updates in (
        ("model", ModelConfig, run.model, params.model),
        ("train", TrainConfig, run.train, train_updates),
    ):
        try:
            parts[section] = cls.model_validate({**base.model_dump(), **updates})
        except ValidationError as e:  # name the offending field as the request spells it
            err = e.errors()[0]
            where = ".".join(map(str, ("params", section, *err["loc"])))
            raise ValueError(f"{where}: {err['msg']}") from None
    return RunConfig(**parts)


def count_params(model_config) -> int:
    import torch

    from worker.engine.model import SparseGPT

    with torch.device("meta"):
        return sum(p.numel() for p in SparseGPT(model_config).parameters())


def _train_progress(attempt: Attempt) -> Callable[[dict], None]:
    def report(rec: dict) -> None:
        stage, step, total = rec["stage"], rec.get("step", 0), rec.get("total", 1)
        if stage == "train" and "loss" in rec:
            message = f"step {step}/{total} loss {rec['loss']:.3f}"
            if "val_loss" in rec:
                message += f" val {rec['val_loss']:.3f}"
            attempt.progress(0.02 + 0.97 * step / total, "train", message, force=step == total)
        else:
            attempt.progress(0.02 * (stage != "corpus") if stage != "done" else 0.99, stage, f"{stage}...")

    return report


def train_body(ctx: JobContext, job: Job, params: TrainParams, attempt: Attempt) -> None:
    from worker.engine.train import train

    def new_model() -> Model:
        run = build_run_config(params, ctx.settings)
        return Model(
            name=params.name or f"{params.preset}-{'dense' if params.dense else 'sparse'}-{job.id[:8]}",
            kind=ModelKind.dense if run.train.dense else ModelKind.sparse,
            config=run.model_dump(mode="json"),
            n_params=count_params(run.model),
        )

    train_model(ctx, job, attempt, new_model, train)


def train_model(
    ctx: JobContext,
    job: Job,
    attempt: Attempt,
    new_model: Callable[[], Model],
    fit: Callable[..., Path],
    extra_summary: Callable[[Path], dict] = lambda folder: {},
) -> None:
    """The body of every job that trains a model folder (train, bridge): the Model row is made once
    (`new_model`), an attempt after a lost worker resumes from the folder's checkpoint, and the row turns
    ready with the metrics once `fit(run, folder, resume=, on_progress=, device=)` finished."""
    from worker.engine.checkpoints import CHECKPOINT, WEIGHTS
    from worker.engine.config import RunConfig

    settings = ctx.settings
    with ctx.db.session() as s:
        model = s.get(Model, job.result.get("model_id", 0)) if job.result.get("model_id") else None
        if model is None:
            model = new_model()
            model.status, model.artifact_path, model.job_id = ModelStatus.training, "", job.id
            s.add(model)
            s.flush()
            model.artifact_path = f"models/{model.id}"
            s.execute(update(Job).where(Job.id == job.id).values(result={"model_id": model.id}))
        model_id, run_json = model.id, model.config

    run = RunConfig.model_validate(run_json)
    folder = settings.artifact(f"models/{model_id}")
    resume_from = None
    if (folder / WEIGHTS).exists():
        pass  # finished before the previous attempt died: only registration is left
    else:
        if (folder / CHECKPOINT).exists():
            from safetensors import safe_open

            with safe_open(str(folder / CHECKPOINT), framework="pt") as f:
                resume_from = int(f.metadata()["step"])
            attempt.progress(0.0, "resume", f"resuming from the checkpoint at step {resume_from}", force=True)
        elif folder.exists():
            shutil.rmtree(folder)  # died before the first checkpoint: start over
        folder.parent.mkdir(parents=True, exist_ok=True)
        fit(
            run,
            folder,
            resume=resume_from is not None,
            on_progress=_train_progress(attempt),
            device=job_device(settings),
        )
    attempt.check()
    metrics = _read_metrics(folder)
    result = {"model_id": model_id}
    if resume_from is not None:
        result["resumed_from_step"] = resume_from
    summary = {**_summary(metrics), **extra_summary(folder)}
    with ctx.db.session() as s:
        s.execute(
            update(Model)
            .where(Model.id == model_id)
            .values(status=ModelStatus.ready, metrics=_thin(metrics), summary=summary)
        )
        attempt.finish(
            s, JobStatus.succeeded, stage="done", message=f"trained model {model_id}", result=result
        )


def with_train_overrides(run, overrides: dict):
    """The run with TrainConfig fields replaced; a bad value is named as the request spells it."""
    from worker.engine.config import TrainConfig

    try:
        run.train = TrainConfig.model_validate({**run.train.model_dump(), **overrides})
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"{'.'.join(map(str, ('params', 'train', *err['loc'])))}: {err['msg']}") from None
    return run


def bridge_run_config(params: BridgeParams, dense_config: dict):
    """The sparse model's RunConfig of a bridge job, without the bridge section (for the caps)."""
    from worker.engine.bridges import sparse_run_for
    from worker.engine.config import RunConfig

    run = sparse_run_for(RunConfig.model_validate(dense_config), params.preset, params.steps)
    return with_train_overrides(run, params.train)


def bridge_body(ctx: JobContext, job: Job, params: BridgeParams, attempt: Attempt) -> None:
    """Train a sparse model with bridges to a dense model; the new Model row is flagged by the bridge
    section of its config, and its summary holds the per-location report and the dense model's id."""
    from worker.engine.bridges import bridged_run, final_report, train_bridged

    _, dense_folder = ready_model(ctx, params.dense_model_id)

    def new_model() -> Model:
        run = bridged_run(dense_folder, params.preset, params.steps, **params.bridge_options())
        run = with_train_overrides(run, params.train)
        return Model(
            name=params.name or f"{params.preset}-bridged-{job.id[:8]}",
            kind=ModelKind.sparse,
            config=run.model_dump(mode="json"),
            n_params=count_params(run.model),
        )

    def fit(run, folder, **kwargs) -> Path:
        return train_bridged(run, folder, dense_folder=dense_folder, **kwargs)

    def extra_summary(folder: Path) -> dict:
        return {"bridge": final_report(folder), "dense_model_id": params.dense_model_id}

    train_model(ctx, job, attempt, new_model, fit, extra_summary)


def unfinished(s: Session, kind: str, job_id: str) -> None:
    """A job ended without success: a model it was training will never be ready."""
    if kind in ("train", "bridge"):
        s.execute(
            update(Model)
            .where(Model.job_id == job_id, Model.status == ModelStatus.training)
            .values(status=ModelStatus.failed)
        )


# ---------------------------------------------------------------- profile


def ready_model(ctx: JobContext, model_id: int):
    """(Model row, its folder) for a trained model, or a clear error."""
    with ctx.db.session() as s:
        model = s.get(Model, model_id)
        if model is None:
            raise ValueError(f"model {model_id} does not exist")
        if model.status != ModelStatus.ready:
            raise ValueError(f"model {model_id} is {model.status}, not ready")
        return model, ctx.settings.artifact(model.artifact_path)


def profile_body(ctx: JobContext, job: Job, params: ProfileParams, attempt: Attempt) -> None:
    from safetensors.torch import save_file

    from worker.engine.ablation import MEANS
    from worker.engine.activations import ProfileConfig, profile_model
    from worker.engine.checkpoints import load_model
    from worker.engine.data import load_corpus, split_corpus

    model, folder = ready_model(ctx, params.model_id)
    attempt.progress(0.0, "load", "loading the model and corpus", force=True)
    net, tok, run = load_model(folder, job_device(ctx.settings))
    docs, _ = split_corpus(load_corpus(run.train.corpus, run.train.max_corpus_bytes), run.train.val_percent)
    cfg = ProfileConfig(
        tokens=params.tokens, context=params.context, examples=params.examples_per_bin, seed=params.seed
    )
    profile = profile_model(net, tok, docs, cfg, lambda f, m: attempt.progress(0.02 + 0.8 * f, "profile", m))
    attempt.progress(0.82, "store", "writing node statistics and examples", force=True)
    # The means feed mean ablation (prune jobs, live ablation): cached beside the weights.
    tmp = folder / (MEANS + ".tmp")
    save_file({k: v.contiguous() for k, v in profile.means.items()}, str(tmp))
    tmp.replace(folder / MEANS)
    corpus = run.train.corpus or "stdlib"
    with ctx.db.session() as s:
        # No progress writes inside this transaction: on SQLite they would wait for its own write lock.
        counts = write_profile(s, model.id, profile, corpus, lambda f: attempt.check())
        s.execute(update(Model).where(Model.id == model.id).values(profiled=True))
        attempt.finish(
            s,
            JobStatus.succeeded,
            stage="done",
            message=f"profiled {counts['nodes']} nodes over {profile.n_tokens} tokens",
            result={"model_id": model.id, "tokens": profile.n_tokens, **counts},
        )


def _finite(x: float) -> float | None:
    """JSON (and PostgreSQL) has no NaN or infinity: store None."""
    return x if math.isfinite(x) else None


def bin_label(side: str, fraction: float) -> str:
    """`top_0.1`, `top_1`, `top_10`, `top_50`, `bottom_...`: the bin as a percentage."""
    return f"{side}_{fraction * 100:g}"


def delete_node_rows(s: Session, model_id: int, sites: list[str]) -> None:
    """A model's node statistics and activation examples at these sites."""
    s.execute(
        delete(ActivationExample).where(
            ActivationExample.model_id == model_id, ActivationExample.site.in_(sites)
        )
    )
    s.execute(delete(NodeStat).where(NodeStat.model_id == model_id, NodeStat.site.in_(sites)))


def write_profile(s: Session, model_id: int, profile, corpus: str, progress=lambda f: None) -> dict:
    """Replace a model's node statistics and examples at the profiled sites (other sites, e.g. the
    transcoder features of a model profiled separately, keep theirs). Example windows are token ids
    (int32) and the node's activations (float16) as bytes; the corpus text is stored once per document
    and referenced by character offsets."""
    import numpy as np

    from worker.engine.activations import BIN_FRACTIONS, QUANTILE_LEVELS, SIDES
    from worker.engine.sites import parse_node, site_layer

    sites = list(profile.sites)
    delete_node_rows(s, model_id, sites)
    docs = profile.windows.docs
    doc_ids: dict[int, int] = {}

    def document_id(i: int) -> int:
        if i not in doc_ids:
            text = docs[i].text
            digest = hashlib.sha256(text.encode()).hexdigest()
            found = s.scalar(select(CorpusDocument.id).where(CorpusDocument.sha256 == digest))
            if found is None:
                row = CorpusDocument(corpus=corpus[:512], path=docs[i].path[:512], sha256=digest, text=text)
                s.add(row)
                s.flush()
                found = row.id
            doc_ids[i] = found
        return doc_ids[i]

    levels = [f"{q:g}" for q in QUANTILE_LEVELS]
    labels = [(side, [bin_label(side, f) for f in BIN_FRACTIONS]) for side in SIDES]
    stats, examples, total = [], [], sum(len(p.mean) for p in profile.sites.values())
    for i, node in enumerate(profile.nodes()):
        site, index = parse_node(node.node)
        thresholds = {}
        for (_, names), values in zip(labels, (node.top_thresholds, node.bottom_thresholds), strict=True):
            thresholds.update({n: _finite(v) for n, v in zip(names, values, strict=True)})
        stats.append(
            {
                "model_id": model_id,
                "name": node.node,
                "site": site,
                "layer": site_layer(site),
                "index": index,
                "mean": node.mean,
                "frequency": node.frequency,
                "quantiles": {lv: _finite(v) for lv, v in zip(levels, node.quantiles, strict=True)},
                "thresholds": thresholds,
            }
        )
        for ex in node.examples:
            examples.append(
                {
                    "model_id": model_id,
                    "node": node.node,
                    "site": site,
                    "bin": bin_label(ex.side, ex.fraction),
                    "rank": ex.slot,
                    "activation": ex.value,
                    "center": ex.center,
                    "token_ids": np.asarray(ex.tokens, dtype="<i4").tobytes(),
                    "values": np.asarray(ex.values, dtype="<f2").tobytes(),
                    "document_id": document_id(ex.doc),
                    "offset": ex.char_start,
                    "end": ex.char_end,
                }
            )
        if len(examples) >= 20_000 or i + 1 == total:
            s.execute(insert(NodeStat), stats)
            if examples:
                s.execute(insert(ActivationExample), examples)
            stats, examples = [], []
            progress((i + 1) / total)
    return {
        "nodes": total,
        "examples": s.scalar(
            select(func.count())
            .select_from(ActivationExample)
            .where(ActivationExample.model_id == model_id, ActivationExample.site.in_(sites))
        ),
        "documents": len(doc_ids),
    }


# ---------------------------------------------------------------- prune


def task_row(s: Session, name: str) -> Task:
    """The tasks-table row of a task: custom tasks are created through the API; a built-in task's row
    is made from the engine registry the first time a job uses it."""
    from worker.engine.tasks import REGISTRY, TaskError

    row = s.scalar(select(Task).where(Task.name == name))
    if row is None and name in REGISTRY:
        spec = REGISTRY[name]
        row = Task(
            name=name,
            builtin=True,
            completion_a=spec.completion_a,
            completion_b=spec.completion_b,
            description=spec.description,
        )
        s.add(row)
        s.flush()
    if row is None:
        raise TaskError(f"unknown task {name!r}; known: {', '.join(sorted(REGISTRY))} and custom tasks")
    return row


def task_data(name: str, spec: dict, builtin: bool, tok):
    """Tokenise a task for a model: built-in tasks mine the corpus, custom ones use their pairs."""
    from worker.engine.tasks import build_custom_task, build_task, get_task, parse_custom_task

    if builtin:
        return build_task(get_task(name), tok)
    return build_custom_task(parse_custom_task(spec), tok)[0]


def prune_config(params: PruneParams):
    from worker.engine.prune import PruneConfig

    fields = params.model_dump(exclude={"model_id", "task", "validate_circuit"}, exclude_none=True)
    return PruneConfig(**fields)


def prune_body(ctx: JobContext, job: Job, params: PruneParams, attempt: Attempt) -> None:
    from worker.engine.ablation import load_or_compute_means
    from worker.engine.checkpoints import load_model
    from worker.engine.prune import find_circuit, validate

    model, folder = ready_model(ctx, params.model_id)
    cfg = prune_config(params)
    with ctx.db.session() as s:
        task = task_row(s, params.task)
        task_id, builtin, spec = task.id, task.builtin, task.spec
    attempt.progress(0.0, "load", "loading the model and task", force=True)
    net, tok, run = load_model(folder)
    data = task_data(params.task, spec, builtin, tok)
    attempt.progress(0.02, "means", "mean activations", force=True)
    means = load_or_compute_means(folder, net, tok, run)
    span = 0.75 if params.validate_circuit else 0.95
    circuit = find_circuit(
        net, data, means, cfg, str(model.id), lambda f, m: attempt.progress(0.05 + span * f, "prune", m)
    )
    if params.validate_circuit:
        attempt.progress(0.8, "validate", "controls: random circuit, shuffled labels", force=True)
        circuit.validation = validate(net, data, means, circuit, cfg)
    attempt.progress(0.98, "store", "writing the circuit", force=True)
    with ctx.db.session() as s:
        circuit_id = write_circuit(s, model.id, task_id, circuit, cfg, job.id)
        attempt.finish(
            s,
            JobStatus.succeeded,
            stage="done",
            message=f"circuit {circuit_id}: {len(circuit.nodes)} nodes, {len(circuit.edges)} edges",
            result={"model_id": model.id, "circuit_id": circuit_id},
        )


def write_circuit(
    s: Session, model_id: int, task_id: int, circuit, cfg, job_id: str, transcoder_id: int | None = None
) -> int:
    row = Circuit(
        transcoder_id=transcoder_id,
        model_id=model_id,
        task_id=task_id,
        target_loss=circuit.target_loss,
        n_nodes=len(circuit.nodes),
        n_edges=len(circuit.edges),
        losses=circuit.losses,
        calibration=circuit.calibration,
        curve=circuit.curve,
        runs=circuit.runs,
        validation=circuit.validation,
        params=cfg.model_dump(mode="json"),
        job_id=job_id,
    )
    s.add(row)
    s.flush()
    if circuit.nodes:
        s.execute(
            insert(CircuitNode),
            [
                {
                    "circuit_id": row.id,
                    "name": n.name,
                    "site": n.site,
                    "layer": n.layer,
                    "index": n.index,
                    "tau": n.tau,
                }
                for n in circuit.nodes
            ],
        )
    if circuit.edges:
        s.execute(
            insert(CircuitEdge),
            [
                {
                    "circuit_id": row.id,
                    "src": e.src,
                    "dst": e.dst,
                    "weight": e.weight,
                    "kind": e.kind,
                    "activation": e.activation,
                    "weight_product": e.weight_product,
                }
                for e in circuit.edges
            ],
        )
    return row.id


# ---------------------------------------------------------------- transcoder


def transcoder_config(params: TranscoderParams):
    from worker.engine.transcoders import TranscoderConfig

    fields = params.model_dump(
        include={"l1", "steps", "batch_size", "expansion", "sae", "selected", "eval_batches", "seed"},
        exclude_none=True,
    )
    return TranscoderConfig(**fields)


def transcoder_body(ctx: JobContext, job: Job, params: TranscoderParams, attempt: Attempt) -> None:
    """Train the sweep into transcoders/{job id}, profile the selected transcoders' features (nodes
    `{l}.mlp.transcoder[j]` of the model), build a circuit per task, then register it all in one
    transaction. An attempt after a lost worker starts over (the sweep takes minutes)."""
    from worker.engine.transcoders import remove_folder

    model, dense_folder = ready_model(ctx, params.model_id)
    relative = f"transcoders/{job.id}"
    folder = ctx.settings.artifact(relative)
    remove_folder(folder)
    try:
        _train_profile_and_prune(ctx, job, params, attempt, model.id, dense_folder, relative)
    except BaseException:
        remove_folder(folder)  # nothing refers to it yet
        raise


def _train_profile_and_prune(ctx, job, params, attempt, model_id: int, dense_folder: Path, relative: str):
    from worker.engine.activations import ProfileConfig
    from worker.engine.checkpoints import load_model
    from worker.engine.sites import feature_site
    from worker.engine.transcoders import (
        CircuitConfig,
        profile_features,
        train_transcoders,
        transcoder_circuit,
    )

    attempt.progress(0.0, "load", "loading the model", force=True)
    net, tok, run = load_model(dense_folder)
    with_profile, n_tasks = params.profile_tokens > 0, len(params.tasks)
    span = 0.7 if (with_profile or n_tasks) else 0.97
    tr = train_transcoders(
        net,
        tok,
        run,
        transcoder_config(params),
        dense_folder,
        ctx.settings.artifact(relative),
        lambda f, m: attempt.progress(0.01 + span * f, "train", m),
    )
    profile = None
    if with_profile:
        pcfg = ProfileConfig(tokens=params.profile_tokens, seed=params.seed)
        profile = profile_features(
            net, tok, run, tr.selected, pcfg, lambda f, m: attempt.progress(0.72 + 0.1 * f, "profile", m)
        )
    with ctx.db.session() as s:
        tasks = [(name, *_task_fields(task_row(s, name))) for name in params.tasks]
    ccfg = CircuitConfig(tolerance=params.tolerance)
    circuits = []
    for k, (name, task_id, builtin, spec) in enumerate(tasks):
        data = task_data(name, spec, builtin, tok)

        def report(f: float, m: str, k=k, name=name) -> None:
            attempt.progress(0.83 + 0.15 * (k + f) / n_tasks, f"circuit {name}", m)

        circuits.append((task_id, transcoder_circuit(tr, net, data, ccfg, str(model_id), report)))
    attempt.progress(0.98, "store", "writing the sweep, features and circuits", force=True)
    with ctx.db.session() as s:
        if params.replace:  # the old features' rows go too: unprofiled new features have none
            s.execute(delete(Transcoder).where(Transcoder.model_id == model_id))
            delete_node_rows(s, model_id, [feature_site(i) for i in range(net.cfg.n_layer)])
        row = Transcoder(
            model_id=model_id,
            config=tr.run.model_dump(mode="json"),
            sweep=tr.sweep,
            width=tr.run.width,
            artifact_path=relative,
            job_id=job.id,
        )
        s.add(row)
        s.flush()
        counts = {}
        if profile is not None:
            counts = write_profile(
                s, model_id, profile, run.train.corpus or "stdlib", lambda f: attempt.check()
            )
        circuit_ids = [
            write_circuit(s, model_id, task_id, c, ccfg, job.id, transcoder_id=row.id)
            for task_id, c in circuits
        ]
        matched = tr.sweep["matched"]
        attempt.finish(
            s,
            JobStatus.succeeded,
            stage="done",
            message=(
                f"transcoders {row.id}: transcoder <= SAE at matched L0 in "
                f"{matched['transcoder_better_settings']} of {len(matched['settings'])} settings; "
                f"{len(circuit_ids)} circuits"
            ),
            result={"model_id": model_id, "transcoder_id": row.id, "circuit_ids": circuit_ids, **counts},
        )


def _task_fields(row: Task) -> tuple[int, bool, dict]:
    return row.id, row.builtin, row.spec


BODIES = {
    "train": train_body,
    "profile": profile_body,
    "prune": prune_body,
    "bridge": bridge_body,
    "transcoder": transcoder_body,
}
