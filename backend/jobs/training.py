"""What the kinds that train a model folder share (train, bridge): the Model row made once, resuming
from the folder's checkpoint after a lost worker, the metrics curve, and marking the row failed when
the job does not succeed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from ..models import Job, JobStatus, Model, ModelStatus
from .checks import engine_config
from .lifecycle import Attempt, JobContext, job_device

METRICS_POINTS = 1000  # training curve points kept in the Model row (eval records always kept)


def thin(records: list[dict], points: int = METRICS_POINTS) -> list[dict]:
    """At most `points` records, evenly spaced, always keeping evaluation records and the last one."""
    if len(records) <= points:
        return records
    stride = -(-len(records) // points)
    return [r for i, r in enumerate(records) if i % stride == 0 or "val_loss" in r or i == len(records) - 1]


def read_metrics(folder: Path) -> list[dict]:
    from worker.engine.checkpoints import METRICS

    path = folder / METRICS
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def summarize(metrics: list[dict]) -> dict:
    summary = {}
    for rec in metrics:
        for key in ("loss", "val_loss", "train_eval_loss", "l0", "dead_neurons", "density", "tokens_per_s"):
            if key in rec:
                summary[key] = rec[key]
    summary["steps"] = metrics[-1]["step"] if metrics else 0
    return summary


def with_train_overrides(run, overrides: dict):
    """The run with TrainConfig fields replaced; a bad value is named as the request spells it."""
    from worker.engine.config import TrainConfig

    run.train = engine_config(TrainConfig, {**run.train.model_dump(), **overrides}, "train")
    return run


def training_progress(attempt: Attempt):
    """The engine's training progress as the job's: 2 % for the corpus and tokenizer, then the steps."""

    def report(fraction: float, message: str, stage: str, step: int = 0, total: int = 1, **figures) -> None:
        if stage == "train" and "loss" in figures:
            attempt.progress(0.02 + 0.97 * fraction, "train", message, force=step == total)
        else:
            attempt.progress(0.02 * (stage != "corpus") if stage != "done" else 0.99, stage, message)

    return report


def train_model(
    ctx: JobContext,
    job: Job,
    attempt: Attempt,
    device: str | None,
    new_model: Callable[[], Model],
    fit: Callable[..., Path],
    extra_summary: Callable[[Path], dict] = lambda folder: {},
) -> None:
    """The body of every job that trains a model folder: the Model row is made once (`new_model`), an
    attempt after a lost worker resumes from the folder's checkpoint, and the row turns ready with the
    metrics once `fit(run, folder, resume=, on_progress=, device=)` finished."""
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
            on_progress=training_progress(attempt),
            device=job_device(settings, device),
        )
    attempt.check()
    metrics = read_metrics(folder)
    result = {"model_id": model_id}
    if resume_from is not None:
        result["resumed_from_step"] = resume_from
    summary = {**summarize(metrics), **extra_summary(folder)}
    with ctx.db.session() as s:
        s.execute(
            update(Model)
            .where(Model.id == model_id)
            .values(status=ModelStatus.ready, metrics=thin(metrics), summary=summary)
        )
        attempt.finish(
            s, JobStatus.succeeded, stage="done", message=f"trained model {model_id}", result=result
        )


def model_failed(ctx: JobContext, s: Session, job_id: str) -> None:
    """Cleanup of a training job that ended without success: its model will never be ready. A
    cancelled job leaves no model at all (row and folder removed); a failed one a `failed` row."""
    unfinished = and_(Model.job_id == job_id, Model.status == ModelStatus.training)
    if s.scalar(select(Job.status).where(Job.id == job_id)) == JobStatus.cancelled:
        for model in s.scalars(select(Model).where(unfinished)).all():
            if model.artifact_path:  # "models/{id}" (empty only before the row's first flush)
                shutil.rmtree(ctx.settings.artifact(model.artifact_path), ignore_errors=True)
            s.delete(model)
        s.execute(update(Job).where(Job.id == job_id).values(result={}))
        return
    s.execute(update(Model).where(unfinished).values(status=ModelStatus.failed))
