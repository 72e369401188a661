"""bridge: a sparse model trained jointly with bridges to a trained, frozen dense model (the preset
gives the sparse model's width and recipe, the dense model its vocabulary, context, layers and corpus);
resumes from its last checkpoint after a lost worker."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from worker.engine.budget import count_params
from worker.engine.config import PRESETS, BridgeConfig, TrainConfig

from ...models import Model, ModelKind
from ...schemas import Strict
from ...settings import Settings
from ..checks import name_free, ready_model, train_caps
from ..params import DenseModelId, PlainName, device_field, from_engine, overrides_of, set_fields
from ..registry import JobKind
from ..store import model_folder
from ..training import model_failed, train_model, with_train_overrides

DENSE_DATA = ("corpus", "max_corpus_bytes", "val_percent", "steps")  # the dense model's, or top-level
TrainOverrides = overrides_of(TrainConfig, "BridgeTrainOverrides", exclude=DENSE_DATA)
BRIDGE_OPTIONS = ("hybrid_sites_per_step", "hybrid_batch_frac", "kl_coef", "nmse_coef")


class BridgeParams(Strict):
    """Train a sparse model jointly with bridges to a trained (frozen) dense model: the preset gives the
    sparse model's width and recipe, the dense model its vocabulary, context, layers and corpus."""

    dense_model_id: DenseModelId = Field(description="the trained dense model to bridge to")
    name: PlainName | None = Field(
        None, description="unique name of the new model (default: from the job id)"
    )
    preset: Literal[tuple(PRESETS)] = "small"
    steps: int | None = Field(
        None, ge=1, le=10_000_000, description="optimizer steps (default: the preset's)"
    )
    hybrid_sites_per_step: int = from_engine(
        BridgeConfig, "hybrid_sites_per_step", le=64, description="locations per step and direction (0 = all)"
    )
    hybrid_batch_frac: float = from_engine(
        BridgeConfig, "hybrid_batch_frac", description="share of the batch in hybrids"
    )
    kl_coef: float = from_engine(BridgeConfig, "kl_coef", le=100)
    nmse_coef: float = from_engine(BridgeConfig, "nmse_coef", le=100)
    train: TrainOverrides = Field(
        default_factory=TrainOverrides,
        description="TrainConfig overrides (the data settings are the dense model's)",
    )
    device: str | None = device_field()

    @field_validator("train", mode="before")
    @classmethod
    def _same_data(cls, v):
        fixed = sorted(set(DENSE_DATA) & set(v)) if isinstance(v, dict) else []
        if fixed:
            raise ValueError(
                f"{', '.join(fixed)}: the data settings come from the dense model; steps is top-level"
            )
        return v


def sparse_run(params: BridgeParams, dense_config: dict):
    """The sparse model's RunConfig, without the bridge section (for the caps)."""
    from worker.engine.bridges import sparse_run_for
    from worker.engine.config import RunConfig

    run = sparse_run_for(RunConfig.model_validate(dense_config), params.preset, params.steps)
    return with_train_overrides(run, set_fields(params.train))


def check(session, settings: Settings, params: BridgeParams) -> None:
    dense = ready_model(session, params.dense_model_id, "dense_model_id")
    train_caps(settings, sparse_run(params, dense.config))
    name_free(session, params.name)


def run(ctx, job, params: BridgeParams, attempt) -> None:
    """The new Model row is flagged by the bridge section of its config; its summary holds the
    per-location report and the dense model's id."""
    from worker.engine.bridges import bridged_run, final_report, train_bridged

    _, dense_folder = model_folder(ctx, params.dense_model_id)

    def new_model() -> Model:
        options = params.model_dump(include=set(BRIDGE_OPTIONS))
        run = bridged_run(dense_folder, params.preset, params.steps, **options)
        run = with_train_overrides(run, set_fields(params.train))
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

    train_model(ctx, job, attempt, params.device, new_model, fit, extra_summary)


KIND = JobKind("bridge", BridgeParams, run, check=check, cleanup=model_failed, resumes=True)
