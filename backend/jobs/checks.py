"""Checks the kinds run at submission, before a job is queued: caps (CIRCUITS_MAX_*) and references."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..models import Model, ModelStatus
from ..settings import Settings


class LimitExceeded(ValueError):
    """A job parameter above its cap (422 naming the limit)."""


class Conflict(ValueError):
    """The request contradicts the current state, e.g. cancelling a finished job (409)."""


def cap(value: int | float, limit: int, what: str, setting: str) -> None:
    """`setting` is a Settings field (named as its variable CIRCUITS_...), or "(text)" for a fixed limit."""
    if value > limit:
        where = f"CIRCUITS_{setting.upper()}" if setting[0] != "(" else setting[1:-1]
        raise LimitExceeded(f"{what} {value:,} exceeds the limit {limit:,} ({where})")


def ready_model(session: Session, model_id: int, field: str = "model_id") -> Model:
    model = session.get(Model, model_id)
    if model is None:
        raise ValueError(f"params.{field}: model {model_id} does not exist")
    if model.status != ModelStatus.ready:
        raise ValueError(f"params.{field}: model {model_id} is {model.status}, not ready")
    return model


def name_free(session: Session, name: str | None) -> None:
    if name is not None and session.scalar(select(Model.id).where(Model.name == name)):
        raise Conflict(f"params.name: a model named {name!r} already exists")


def budget_caps(settings: Settings, budget) -> None:
    """The caps every job's estimated cost must meet (worker/engine/budget.py)."""
    cap(budget.params, settings.max_model_params, "model parameters", "max_model_params")
    gib = budget.peak_bytes / 2**30
    if budget.peak_bytes > settings.max_job_memory_bytes:
        raise LimitExceeded(
            f"estimated peak memory {gib:,.1f} GiB exceeds the limit "
            f"{settings.max_job_memory_bytes / 2**30:,.1f} GiB (CIRCUITS_MAX_JOB_MEMORY_BYTES); "
            "lower batch_size, n_ctx, n_layer or the number of heads (d_model / d_head)"
        )
    if budget.flops > settings.max_job_flops:
        raise LimitExceeded(
            f"estimated compute {budget.flops:.2e} FLOP exceeds the limit {settings.max_job_flops:.2e} "
            "(CIRCUITS_MAX_JOB_FLOPS); lower steps, batch_size or the model's size"
        )


def train_caps(settings: Settings, run) -> None:
    """The caps on a training run (train and bridge jobs), on the run after every override (a
    bridge's data settings are its dense model's: a model trained on the whole corpus is refused)."""
    from worker.engine.budget import train_budget

    s = settings
    cap(run.train.steps, s.max_train_steps, "params.steps", "max_train_steps")
    corpus_bytes = run.train.max_corpus_bytes
    if corpus_bytes is None:
        raise LimitExceeded(
            f"train.max_corpus_bytes: the whole corpus (null) is not allowed; at most "
            f"{s.max_corpus_bytes:,} bytes (CIRCUITS_MAX_CORPUS_BYTES)"
        )
    cap(corpus_bytes, s.max_corpus_bytes, "params.train.max_corpus_bytes", "max_corpus_bytes")
    step_tokens = run.train.batch_size * run.model.n_ctx
    cap(step_tokens, s.max_batch_tokens, "batch_size * n_ctx", "max_batch_tokens")
    cap(run.train.eval_batches, 64, "params.train.eval_batches", "(fixed limit)")
    budget_caps(s, train_budget(run))


def engine_config(cls: type[BaseModel], values: dict, section: str = ""):
    """An engine config built from job parameters; a bad value is named as the request spells it."""
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, ("params", *filter(None, [section]), *err["loc"])))
        raise ValueError(f"{where}: {err['msg']}") from None
