"""train: a model from a preset (sparse, or the dense baseline), with ModelConfig / TrainConfig
overrides; resumes from its last checkpoint after a lost worker."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from worker.engine.budget import count_params
from worker.engine.config import PRESETS, ModelConfig, TrainConfig

from ...models import Model, ModelKind
from ...schemas import Strict
from ...settings import Settings
from ..checks import engine_config, name_free, train_caps
from ..params import PlainName, device_field, overrides_of, set_fields
from ..registry import JobKind
from ..training import model_failed, train_model

ModelOverrides = overrides_of(ModelConfig, "ModelOverrides")
TrainOverrides = overrides_of(TrainConfig, "TrainOverrides", exclude=("corpus",))


class TrainParams(Strict):
    """Train a model from a preset; `model` and `train` override fields of its ModelConfig/TrainConfig."""

    name: PlainName | None = Field(None, description="unique model name (default: derived from the job id)")
    preset: Literal[tuple(PRESETS)] = "small"
    dense: bool = Field(
        False, description="the dense baseline: the same architecture without weight sparsity"
    )
    steps: int | None = Field(
        None, ge=1, le=10_000_000, description="optimizer steps (default: the preset's)"
    )
    corpus: PlainName | None = Field(
        None, description="a folder name under CIRCUITS_DATA_DIR/corpora (default: the stdlib)"
    )
    model: ModelOverrides = Field(default_factory=ModelOverrides, description="ModelConfig overrides")
    train: TrainOverrides = Field(default_factory=TrainOverrides, description="TrainConfig overrides")
    device: str | None = device_field()

    @field_validator("train", mode="before")
    @classmethod
    def _no_corpus_path(cls, v):
        if isinstance(v, dict) and "corpus" in v:
            raise ValueError("set the corpus with the top-level `corpus` field (a folder under data_dir)")
        return v


def run_config(params: TrainParams, settings: Settings):
    """The RunConfig the job trains (also built at submission to check the caps)."""
    from worker.engine.config import RunConfig, preset

    run = preset(params.preset, dense=params.dense, steps=params.steps)
    train_updates = set_fields(params.train)
    if params.corpus is not None:
        train_updates["corpus"] = str(settings.data_dir / "corpora" / params.corpus)
    if train_updates.get("max_corpus_bytes") is None and run.train.max_corpus_bytes is None:
        train_updates["max_corpus_bytes"] = settings.max_corpus_bytes
    return RunConfig(
        model=engine_config(ModelConfig, {**run.model.model_dump(), **set_fields(params.model)}, "model"),
        train=engine_config(TrainConfig, {**run.train.model_dump(), **train_updates}, "train"),
    )


def check(session, settings: Settings, params: TrainParams) -> None:
    train_caps(settings, run_config(params, settings))
    if params.corpus is not None and not (settings.data_dir / "corpora" / params.corpus).is_dir():
        raise ValueError(f"params.corpus: no folder {params.corpus!r} under {settings.data_dir / 'corpora'}")
    name_free(session, params.name)


def run(ctx, job, params: TrainParams, attempt) -> None:
    from worker.engine.train import train

    def new_model() -> Model:
        run = run_config(params, ctx.settings)
        return Model(
            name=params.name or f"{params.preset}-{'dense' if params.dense else 'sparse'}-{job.id[:8]}",
            kind=ModelKind.dense if run.train.dense else ModelKind.sparse,
            config=run.model_dump(mode="json"),
            n_params=count_params(run.model),
        )

    train_model(ctx, job, attempt, params.device, new_model, train)


KIND = JobKind("train", TrainParams, run, check=check, cleanup=model_failed, resumes=True)
